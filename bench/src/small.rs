//! Many small files: a tree of 4 KiB files pushed as one package with
//! `artifactstore push`, pushed again, and read back; the registry fed the
//! same blobs with the same client concurrency.

use std::path::PathBuf;
use std::process::Command;

use anyhow::ensure;
use bytes::Bytes;

use crate::proc::{Registry, Server, peak_rss_kib, reset_peak, run as run_command};
use crate::report::{Figure, Row, Table, Target};
use crate::{Bench, data, http};

const FILE_SIZE: usize = 4096;

pub(crate) async fn run(b: &Bench, table: &mut Table) -> anyhow::Result<()> {
    let n = b.sizes.small_files;
    let dir = b.dir("small")?;
    let tree = dir.join("tree");
    let mut files: Vec<(PathBuf, String)> = Vec::with_capacity(n);
    for i in 0..n {
        let sub = tree.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub)?;
        }
        let bytes = data::bytes(&format!("small {i}"), FILE_SIZE);
        let path = sub.join(format!("f{i:05}.bin"));
        std::fs::write(&path, &bytes)?;
        files.push((path, data::sha256_hex(&bytes)));
    }

    // The tree's own writeback would otherwise compete with the first
    // push's syncs, and only with them: the registry is fed later, when the
    // disk is quiet.
    run_command(&mut Command::new("sync"))?;
    let store = b.dir("small-store")?;
    let server = Server::start(&b.bin, &b.config(&store, None))?;
    let push = |what: &str| -> anyhow::Result<(std::time::Duration, u64)> {
        reset_peak(server.pid())?;
        let done = run_command(
            Command::new(&b.bin)
                .arg("push")
                .arg(&tree)
                .args(["--name", "bench/tree", "--class", "bench-long", "--server"])
                .arg(&server.base)
                .args(["--jobs", &b.push_jobs.to_string()]),
        )?;
        ensure!(
            !done.stdout.trim().is_empty(),
            "the {what} push printed no package id"
        );
        Ok((done.elapsed, peak_rss_kib(server.pid())?))
    };
    let (first, first_peak) = push("first")?;
    let m = http::Metrics::read(&b.client, &server.base).await?;
    let groups = m.value("artifactstore_blob_commit_groups_total")?;
    ensure!(groups > 0.0, "/metrics counted no blob commits");
    println!(
        "  first push: {groups} group commits of {:.1} blobs, {} each",
        m.value("artifactstore_blob_commit_group_blobs_total")? / groups,
        http::ms(
            m.value("artifactstore_blob_commit_group_seconds_total")?,
            groups
        ),
    );
    let (second, second_peak) = push("second")?;

    let registry = Registry::start(&b.registry, &b.dir("small-registry")?).await?;
    let c = &b.client;
    let registry_base = &registry.base;
    let theirs = http::concurrently(
        b.push_jobs,
        files.iter().map(|(path, _)| async move {
            // The client hashes what it sends, as `push` does.
            let bytes = Bytes::from(tokio::fs::read(path).await?);
            let sha = data::sha256_hex(&bytes);
            let len = bytes.len() as u64;
            http::registry_put(c, registry_base, "bench/tree", bytes.into(), len, &sha).await
        }),
    )
    .await?;
    reset_peak(server.pid())?;
    let urls = |prefix: &str| -> Vec<String> {
        files
            .iter()
            .map(|(_, sha)| format!("{prefix}sha256:{sha}"))
            .collect()
    };
    let ours_read = read_back(b, urls(&format!("{}/blobs/", server.base))).await?;
    let read_peak = peak_rss_kib(server.pid())?;
    let theirs_read =
        read_back(b, urls(&format!("{}/v2/bench/tree/blobs/", registry.base))).await?;

    let per_s = |d: std::time::Duration| Figure::rate(n as f64 / d.as_secs_f64(), "blobs/s");
    table.push(Row {
        scenario: format!("small files: push {n} × 4 KiB"),
        ours: per_s(first),
        baseline_name: "registry POST+PUT".into(),
        baseline: per_s(theirs),
        target: Target::Ratio(3.0),
        rss_kib: Some(first_peak),
    });
    table.push(Row {
        scenario: "small files: push again (all stored)".into(),
        ours: Figure::seconds(second.as_secs_f64()),
        baseline_name: "first push".into(),
        baseline: Figure::seconds(first.as_secs_f64()),
        target: Target::Ratio(20.0),
        rss_kib: Some(second_peak),
    });
    table.push(Row {
        scenario: format!("small files: read back {n}, GET"),
        ours: per_s(ours_read),
        baseline_name: "registry".into(),
        baseline: per_s(theirs_read),
        target: Target::None,
        rss_kib: Some(read_peak),
    });
    Ok(())
}

/// GETs every url, as many at a time as the pushes had in flight; the
/// time it took.
async fn read_back(b: &Bench, urls: Vec<String>) -> anyhow::Result<std::time::Duration> {
    http::concurrently(
        b.push_jobs,
        urls.iter()
            .map(|url| http::get_count(&b.client, url, None, FILE_SIZE as u64)),
    )
    .await
}
