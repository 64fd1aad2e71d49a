//! The metadata path: package creation over HTTP on SQLite and PostgreSQL
//! (against the registry's manifest `PUT`), then a large log: `views
//! rebuild`, `GET /events` paged through it, and a retention sweep over a
//! million packages of which 1 % have expired.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use artifactstore_core::cbor::{Map, Value};
use artifactstore_core::event::{EventData, EventDraft};
use artifactstore_core::manifest::{FileEntry, Manifest};
use artifactstore_core::{BlobId, Timestamp};
use artifactstore_store::meta::{MetadataStore as _, sql::SqlMetadata};
use artifactstore_store::{Backends, BlobsConfig, Store, StoreOptions};
use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use crate::proc::{Registry, Server, peak_rss_kib, reset_peak, run as run_command};
use crate::report::{Figure, Row, Table, Target};
use crate::{Bench, data, http};

/// Distinct manifests (one small file each) the large log's packages use.
const MANIFESTS: usize = 1000;
/// Packages imported per transaction while building the large log.
const IMPORT_BATCH: usize = 10_000;
const DAY_MICROS: i64 = 86_400_000_000;

/// Package creation on SQLite and (when a server is given) PostgreSQL,
/// against the registry's manifest `PUT`.
pub(crate) async fn creation_rates(b: &Bench, table: &mut Table) -> anyhow::Result<()> {
    let registry = Registry::start(&b.registry, &b.dir("metadata-registry")?).await?;
    let theirs = registry_manifests(b, &registry).await?;
    drop(registry);
    creation(b, table, "SQLite", None, theirs).await?;
    let postgres = match &b.postgres {
        Some(server) => Some(artifactstore_store::testing::create_database(server).await?),
        None => {
            println!("  (no PostgreSQL: set ARTIFACTSTORE_TEST_POSTGRES or --postgres)");
            None
        }
    };
    if let Some(url) = postgres {
        creation(b, table, "PostgreSQL", Some(&url), theirs).await?;
    }
    Ok(())
}

/// A small distinct blob per package.
fn small_blob(i: usize) -> (Bytes, BlobId) {
    let bytes = Bytes::from(data::bytes(&format!("package {i}"), 64));
    let id = BlobId::of(&bytes);
    (bytes, id)
}

/// Packages per second through `POST /packages`, each with its own
/// one-file manifest whose blob was uploaded before the clock starts.
async fn creation(
    b: &Bench,
    table: &mut Table,
    label: &str,
    metadata_url: Option<&str>,
    theirs: Duration,
) -> anyhow::Result<()> {
    let n = b.sizes.packages_created;
    let dir = b.dir(&format!("create-{label}"))?;
    let server = Server::start(&b.bin, &b.config(&dir, metadata_url))?;
    let c = &b.client;
    let base = &server.base;
    let blobs: Vec<(Bytes, BlobId)> = (0..n).map(small_blob).collect();
    http::concurrently(
        b.create_jobs,
        blobs.iter().map(|(bytes, id)| {
            let sha = hex::encode(id.sha256);
            let (body, len) = (bytes.clone().into(), bytes.len() as u64);
            async move { http::put_blob(c, base, body, len, &sha).await }
        }),
    )
    .await?;
    let bodies: Vec<Vec<u8>> = blobs
        .iter()
        .map(|(_, id)| {
            let file = FileEntry {
                path: "report.bin".into(),
                blob: *id,
                media_type: None,
            };
            let manifest = Manifest::new("bench/packages".into(), vec![file], BTreeMap::new())?;
            Ok(Value::Map(
                Map::new()
                    .with("manifest", manifest.to_value())
                    .with("retention_class", Value::text("bench-long")),
            )
            .to_canonical_bytes())
        })
        .collect::<anyhow::Result<_>>()?;

    reset_peak(server.pid())?;
    let ours = http::concurrently(
        b.create_jobs,
        bodies.into_iter().map(|body| async move {
            let request = c
                .post(format!("{base}/packages"))
                .header(CONTENT_TYPE, "application/cbor")
                .body(body);
            http::send(request, &[StatusCode::CREATED], "POST /packages").await?;
            Ok(())
        }),
    )
    .await?;
    let per_s = |d: Duration| Figure::rate(n as f64 / d.as_secs_f64(), "packages/s");
    table.push(Row {
        scenario: format!(
            "package creation, {label}, {n}, {} at a time",
            b.create_jobs
        ),
        ours: per_s(ours),
        baseline_name: "registry manifest PUT".into(),
        baseline: per_s(theirs),
        target: if metadata_url.is_none() {
            Target::Absolute(2000.0)
        } else {
            Target::None
        },
        rss_kib: Some(peak_rss_kib(server.pid())?),
    });
    creation_phases(c, base).await
}

/// Prints where the creations' time went, from the server's `/metrics`
/// (only creations counted there happened on this server).
async fn creation_phases(c: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let m = http::Metrics::read(c, base).await?;
    let created = m.value("artifactstore_packages_created_total")?;
    let groups = m.value("artifactstore_package_commit_groups_total")?;
    ensure!(
        created > 0.0 && groups > 0.0,
        "/metrics counted no creations"
    );
    let phase = |p: &str| {
        m.value(&format!(
            r#"artifactstore_package_creation_seconds_total{{phase="{p}"}}"#
        ))
    };
    println!(
        "  per creation: blobs checked {}, queued and committed {}; \
         {groups} group commits of {:.1} packages, {} each",
        http::ms(phase("check")?, created),
        http::ms(phase("commit")?, created),
        m.value("artifactstore_package_commit_group_packages_total")? / groups,
        http::ms(
            m.value("artifactstore_package_commit_group_seconds_total")?,
            groups
        ),
    );
    Ok(())
}

/// The registry's nearest equivalent of creating a package: an OCI image
/// manifest naming one small layer (and a shared config), `PUT` under its
/// own tag, the layers uploaded first. Returns the time of the manifests.
async fn registry_manifests(b: &Bench, registry: &Registry) -> anyhow::Result<Duration> {
    let n = b.sizes.packages_created;
    let c = &b.client;
    let base = &registry.base;
    let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
    let config_sha = data::sha256_hex(&config);
    http::registry_put(
        c,
        base,
        "bench/packages",
        config.clone().into(),
        config.len() as u64,
        &config_sha,
    )
    .await?;
    let blobs: Vec<(Bytes, BlobId)> = (0..n).map(small_blob).collect();
    http::concurrently(
        b.create_jobs,
        blobs.iter().map(|(bytes, id)| {
            let sha = hex::encode(id.sha256);
            let body = bytes.clone().into();
            async move { http::registry_put(c, base, "bench/packages", body, 64, &sha).await }
        }),
    )
    .await?;
    let manifests: Vec<String> = blobs
        .iter()
        .map(|(_, id)| {
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": format!("sha256:{config_sha}"),
                    "size": config.len(),
                },
                "layers": [{
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{}", hex::encode(id.sha256)),
                    "size": 64,
                }],
            })
            .to_string()
        })
        .collect();
    http::concurrently(
        b.create_jobs,
        manifests.into_iter().enumerate().map(|(i, m)| async move {
            let request = c
                .put(format!("{base}/v2/bench/packages/manifests/t{i}"))
                .header(CONTENT_TYPE, "application/vnd.oci.image.manifest.v1+json")
                .body(m);
            http::send(request, &[StatusCode::CREATED], "registry manifest PUT").await?;
            Ok(())
        }),
    )
    .await
}

fn now() -> Timestamp {
    let micros = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_micros();
    Timestamp::from_unix_micros(micros as i64).expect("a time in range")
}

/// Builds a log of packages fast, then measures `views rebuild`, paging
/// through `GET /events`, and a sweep.
pub(crate) async fn large_log(b: &Bench, table: &mut Table) -> anyhow::Result<()> {
    let dir = b.dir("large-log")?;
    let config = b.config(&dir, None);
    let data_dir = dir.join("data");
    let manifests = stored_manifests(&data_dir).await?;
    let url = format!("sqlite://{}", data_dir.join("meta.sqlite").display());
    let meta = Arc::new(artifactstore_store::meta::open(&url).await?);

    let t = Instant::now();
    import_packages(&meta, &manifests, 0, b.sizes.rebuild_packages, None).await?;
    let (events, _) = meta.head().await?;
    println!(
        "  built a log of {events} events ({} packages) in {:.1} s",
        b.sizes.rebuild_packages,
        t.elapsed().as_secs_f64()
    );

    let rebuild = run_command(
        Command::new(&b.bin)
            .args(["views", "rebuild", "--config"])
            .arg(&config),
    )?;
    let target = 60.0 * events as f64 / 1e6;
    table.push(Row {
        scenario: format!("views rebuild, {events} events"),
        ours: Figure::seconds(rebuild.elapsed.as_secs_f64()),
        baseline_name: "target (60 s per 1M events)".into(),
        baseline: Figure::seconds(target),
        target: Target::Ratio(1.0),
        rss_kib: Some(rebuild.peak_kib),
    });

    // The same pages read in this process through the library, without
    // HTTP or JSON: what paging costs beyond reading the log.
    let t = Instant::now();
    let mut after = 0;
    loop {
        let page = meta
            .events_after(after, artifactstore_store::MAX_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
    }
    let library = t.elapsed();
    ensure!(
        after == events,
        "the library read {after} of {events} events"
    );

    let server = Server::start(&b.bin, &config)?;
    reset_peak(server.pid())?;
    let t = Instant::now();
    let mut after = 0u64;
    loop {
        let r = b
            .client
            .get(format!(
                "{}/events?after={after}&limit={}",
                server.base,
                artifactstore_store::MAX_PAGE
            ))
            .header(ACCEPT, "application/json")
            .send()
            .await?;
        ensure!(r.status().is_success(), "GET /events: {}", r.status());
        let body = r.text().await?;
        let next: u64 = body
            .rsplit_once("\"next_after\":")
            .and_then(|(_, n)| n.trim_end_matches('}').parse().ok())
            .context("a page of /events without next_after")?;
        if next == after {
            break;
        }
        after = next;
    }
    let paging = t.elapsed();
    ensure!(
        after == events,
        "GET /events paged through {after} of {events} events"
    );
    let per_s = |d: Duration| Figure::rate(events as f64 / d.as_secs_f64(), "events/s");
    table.push(Row {
        scenario: format!("GET /events, {events} events in pages of 1000"),
        ours: per_s(paging),
        baseline_name: "same pages via the library".into(),
        baseline: per_s(library),
        target: Target::None,
        rss_kib: Some(peak_rss_kib(server.pid())?),
    });
    drop(server);

    // Only now come the expired packages: a server sweeps when it starts,
    // and the one above must not mark any before the measured sweep.
    let more = b.sizes.sweep_packages - b.sizes.rebuild_packages;
    let expired = b.sizes.sweep_packages / 100;
    let t = Instant::now();
    import_packages(
        &meta,
        &manifests,
        b.sizes.rebuild_packages,
        more,
        Some(more / expired),
    )
    .await?;
    println!(
        "  grew the log to {} packages in {:.1} s",
        b.sizes.sweep_packages,
        t.elapsed().as_secs_f64()
    );
    drop(meta);
    let sweep = run_command(
        Command::new(&b.bin)
            .args(["retention", "sweep", "--config"])
            .arg(&config),
    )?;
    ensure!(
        sweep.stdout.contains(&format!("{expired} ")),
        "the sweep should mark {expired} packages; it said: {}",
        sweep.stdout.trim()
    );
    let target = 5.0 * b.sizes.sweep_packages as f64 / 1e6;
    table.push(Row {
        scenario: format!(
            "retention sweep, {} packages, 1 % expired",
            b.sizes.sweep_packages
        ),
        ours: Figure::seconds(sweep.elapsed.as_secs_f64()),
        baseline_name: "target (5 s per 1M packages)".into(),
        baseline: Figure::seconds(target),
        target: Target::Ratio(1.0),
        rss_kib: Some(sweep.peak_kib),
    });
    Ok(())
}

/// Stores [`MANIFESTS`] one-file manifests, and their files, through the
/// engine; returns them with their digests.
async fn stored_manifests(data_dir: &std::path::Path) -> anyhow::Result<Vec<(Manifest, BlobId)>> {
    let backends = Backends {
        data_dir: data_dir.to_path_buf(),
        metadata_url: None,
        blobs: BlobsConfig::Fs,
        cold: None,
    };
    let store = Store::open(&backends, StoreOptions::default()).await?;
    let put = |bytes: Bytes| {
        let store = &store;
        async move {
            let id = BlobId::of(&bytes);
            let body = futures::stream::once(async move { Ok(bytes) }).boxed();
            store
                .put_blob(&[id.sha256_digest()], None, body, "bench")
                .await?;
            anyhow::Ok(id)
        }
    };
    let mut out = Vec::with_capacity(MANIFESTS);
    for k in 0..MANIFESTS {
        let file = put(Bytes::from(data::bytes(&format!("log file {k}"), 4096))).await?;
        let entry = FileEntry {
            path: format!("build/{k}/report.xml"),
            blob: file,
            media_type: None,
        };
        let manifest = Manifest::new("bench/log".into(), vec![entry], BTreeMap::new())?;
        let id = put(Bytes::from(manifest.to_canonical_bytes())).await?;
        out.push((manifest, id));
    }
    Ok(out)
}

/// Appends `count` packages (numbered from `first`), each a
/// `v1.package.created` and a `v1.retention.default_applied` event, sealed
/// onto the chain and imported with their views, as `migrate-store` does.
/// With `expired_every = Some(k)`, every k-th of them is of `bench-short`
/// and was created two days ago, so it has expired; the rest are of
/// `bench-long` and new.
async fn import_packages(
    meta: &SqlMetadata,
    manifests: &[(Manifest, BlobId)],
    first: usize,
    count: usize,
    expired_every: Option<usize>,
) -> anyhow::Result<()> {
    let now = now();
    let (mut seq, mut prev) = meta.head().await?;
    let mut done = 0;
    while done < count {
        let mut tx = meta.begin().await?;
        let batch = IMPORT_BATCH.min(count - done);
        for i in first + done..first + done + batch {
            let (manifest, manifest_id) = &manifests[i % manifests.len()];
            let expired = expired_every.is_some_and(|k| (i - first).is_multiple_of(k));
            let (class, age, period) = if expired {
                ("bench-short", 2 * DAY_MICROS, DAY_MICROS)
            } else {
                ("bench-long", 3_600_000_000, 3 * 365 * DAY_MICROS)
            };
            let at = Timestamp::from_unix_micros(now.unix_micros() - age + i as i64)
                .context("a time in range")?;
            let expires_at = at.checked_add_micros(period);
            let package = uuid::Uuid::now_v7().hyphenated().to_string();
            let created = EventDraft {
                id: uuid::Uuid::now_v7().hyphenated().to_string(),
                subject: package.clone(),
                actor: "bench".into(),
                at,
                data: EventData::PackageCreated {
                    name: manifest.name().to_owned(),
                    manifest_sha256: manifest_id.sha256,
                    manifest_blake3: manifest_id.blake3,
                    file_count: 1,
                    total_size: manifest.total_size(),
                    retention_class: class.into(),
                },
            };
            let default = EventDraft {
                id: uuid::Uuid::now_v7().hyphenated().to_string(),
                subject: package,
                actor: "bench".into(),
                at,
                data: EventData::RetentionDefaultApplied {
                    class: class.into(),
                    expires_at,
                },
            };
            for (draft, manifest) in [(created, Some(manifest)), (default, None)] {
                seq += 1;
                let event = draft.seal(seq, prev);
                tx.import(&event, manifest).await?;
                prev = *event.hash();
            }
        }
        tx.commit().await?;
        done += batch;
    }
    Ok(())
}
