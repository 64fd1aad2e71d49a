//! One large blob: ingest against the machine's limit and the registry,
//! download whole and in ranges against the registry.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::proc::{Registry, Server, peak_rss_kib, reset_peak, run as run_command};
use crate::report::{Figure, Row, Table, Target};
use crate::{Bench, data, http};

/// The session scenario's chunk, as the issue pins it.
const SESSION_CHUNK: usize = 16 << 20;
/// Each range read in the ranged-download scenario.
const RANGE_LEN: u64 = 4 << 20;
/// Repeats of each timed step in full mode (medians are reported); quick
/// mode does one.
const FULL_ROUNDS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Median time and largest peak RSS over the rounds.
#[derive(Debug, Default)]
struct Timed {
    times: Vec<Duration>,
    peak_kib: u64,
}

impl Timed {
    fn add(&mut self, d: Duration, peak_kib: u64) {
        self.times.push(d);
        self.peak_kib = self.peak_kib.max(peak_kib);
    }
    fn median(&self) -> Duration {
        median(self.times.clone())
    }
}

pub(crate) async fn run(b: &Bench, table: &mut Table) -> anyhow::Result<()> {
    let dir = b.dir("large")?;
    let size = b.sizes.blob_mib << 20;
    let file = dir.join("blob.bin");
    let sha = data::file(&file, "large", size)?;
    let rounds = if b.sizes.blob_mib >= 1024 {
        FULL_ROUNDS
    } else {
        1
    };
    let c = &b.client;

    let (mut dd, mut openssl) = (Vec::new(), Vec::new());
    let (mut put, mut session, mut theirs) = (Timed::default(), Timed::default(), Timed::default());
    let mut kept = None;
    for round in 0..rounds {
        let (d, o) = machine_limit(&file, &dir, &sha)?;
        dd.push(d);
        openssl.push(o);

        let store = b.dir(&format!("large-put-{round}"))?;
        let server = Server::start(&b.bin, &b.config(&store, None))?;
        reset_peak(server.pid())?;
        let t = Instant::now();
        http::put_file(c, &server.base, &file, &sha).await?;
        put.add(t.elapsed(), peak_rss_kib(server.pid())?);

        let store = b.dir(&format!("large-session-{round}"))?;
        let other = Server::start(&b.bin, &b.config(&store, None))?;
        reset_peak(other.pid())?;
        let t = Instant::now();
        http::session_upload(c, &other.base, &file, &sha, SESSION_CHUNK).await?;
        session.add(t.elapsed(), peak_rss_kib(other.pid())?);
        drop(other);

        let registry = Registry::start(&b.registry, &b.dir(&format!("registry-{round}"))?).await?;
        let t = Instant::now();
        http::registry_put_file(c, &registry.base, "bench/large", &file, &sha).await?;
        theirs.add(t.elapsed(), peak_rss_kib(registry.pid())?);
        kept = Some((server, registry));
    }
    let limit = median(dd.clone()).max(median(openssl.clone()));
    let limit_rate = Figure::rate(mib_per_s(size, limit), "MiB/s");
    let theirs_rate = Figure::rate(mib_per_s(size, theirs.median()), "MiB/s");
    let label = |what: &str| format!("{what}, {} MiB", b.sizes.blob_mib);
    println!(
        "  machine limit: dd conv=fdatasync {:.0} MiB/s, openssl sha256 {:.0} MiB/s; \
         registry peak RSS {} MiB",
        mib_per_s(size, median(dd)),
        mib_per_s(size, median(openssl)),
        theirs.peak_kib / 1024
    );
    for (name, timed) in [("PUT /blobs", &put), ("session, 16 MiB PATCHes", &session)] {
        let ours = Figure::rate(mib_per_s(size, timed.median()), "MiB/s");
        table.push(Row {
            scenario: label(&format!("ingest: {name}")),
            ours: ours.clone(),
            baseline_name: "machine limit".into(),
            baseline: limit_rate.clone(),
            target: Target::Ratio(0.9),
            rss_kib: Some(timed.peak_kib),
        });
        table.push(Row {
            scenario: label(&format!("ingest: {name} vs registry")),
            ours,
            baseline_name: "registry POST+PUT".into(),
            baseline: theirs_rate.clone(),
            target: Target::Ratio(1.0),
            rss_kib: Some(timed.peak_kib),
        });
    }

    let (server, registry) = kept.expect("at least one round");
    downloads(b, table, &server, &registry, &sha, size).await
}

/// The fsynced write and the SHA-256 of the same file: the work an ingest
/// must do, each at the machine's speed.
fn machine_limit(file: &Path, dir: &Path, sha: &str) -> anyhow::Result<(Duration, Duration)> {
    let out = dir.join("dd.out");
    let dd = run_command(
        Command::new("dd")
            .arg(format!("if={}", file.display()))
            .arg(format!("of={}", out.display()))
            .args(["bs=16M", "conv=fdatasync", "status=none"]),
    )?;
    std::fs::remove_file(&out)?;
    let openssl = run_command(Command::new("openssl").args(["dgst", "-sha256"]).arg(file))?;
    ensure!(
        openssl.stdout.contains(sha),
        "openssl printed another digest: {}",
        openssl.stdout
    );
    Ok((dd.elapsed, openssl.elapsed))
}

/// The blob read back whole and as ranges from both servers, alternating
/// so that both see the same machine.
async fn downloads(
    b: &Bench,
    table: &mut Table,
    server: &Server,
    registry: &Registry,
    sha: &str,
    size: u64,
) -> anyhow::Result<()> {
    let c = &b.client;
    let ours_url = format!("{}/blobs/sha256:{sha}", server.base);
    let theirs_url = format!("{}/v2/bench/large/blobs/sha256:{sha}", registry.base);
    let rounds = 3;
    // Range starts from a fixed sequence, the same for both servers.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let ranges: Vec<(u64, u64)> = (0..b.sizes.ranges)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (size - RANGE_LEN), RANGE_LEN)
        })
        .collect();
    let ranged_bytes = RANGE_LEN * ranges.len() as u64;

    let (mut whole, mut whole_theirs) = (Timed::default(), Timed::default());
    let (mut ranged, mut ranged_theirs) = (Timed::default(), Timed::default());
    reset_peak(server.pid())?;
    for _ in 0..rounds {
        let t = Instant::now();
        http::get_count(c, &ours_url, None, size).await?;
        whole.add(t.elapsed(), peak_rss_kib(server.pid())?);
        let t = Instant::now();
        http::get_count(c, &theirs_url, None, size).await?;
        whole_theirs.add(t.elapsed(), 0);

        let t = Instant::now();
        for &r in &ranges {
            http::get_count(c, &ours_url, Some(r), r.1).await?;
        }
        ranged.add(t.elapsed(), peak_rss_kib(server.pid())?);
        let t = Instant::now();
        for &r in &ranges {
            http::get_count(c, &theirs_url, Some(r), r.1).await?;
        }
        ranged_theirs.add(t.elapsed(), 0);
    }
    table.push(Row {
        scenario: format!("download: whole, {} MiB", size >> 20),
        ours: Figure::rate(mib_per_s(size, whole.median()), "MiB/s"),
        baseline_name: "registry".into(),
        baseline: Figure::rate(mib_per_s(size, whole_theirs.median()), "MiB/s"),
        target: Target::Ratio(1.0),
        rss_kib: Some(whole.peak_kib),
    });
    table.push(Row {
        scenario: format!("download: {} ranges of 4 MiB", ranges.len()),
        ours: Figure::rate(mib_per_s(ranged_bytes, ranged.median()), "MiB/s"),
        baseline_name: "registry".into(),
        baseline: Figure::rate(mib_per_s(ranged_bytes, ranged_theirs.median()), "MiB/s"),
        target: Target::Ratio(1.0),
        rss_kib: Some(ranged.peak_kib),
    });
    Ok(())
}
