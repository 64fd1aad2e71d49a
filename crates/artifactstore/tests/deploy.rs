//! OPERATOR.md's "Moving a store" steps, followed as written: an embedded
//! store with packages, a hold and a collected package is moved to
//! PostgreSQL + S3 with `migrate-store`, then served from there by two
//! nodes. Needs the scale-out servers (`.ci/services`).

mod common;

use std::path::Path;
use std::process::Output;

use artifactstore_client::Client;
use artifactstore_store::testing;
use common::{ServerProcess, binary};

fn run(args: &[&str], dir: &Path) -> Output {
    binary().args(args).current_dir(dir).output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn tree(dir: &Path, seed: u8) {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(dir.join("report.xml"), format!("<report seed='{seed}'/>")).unwrap();
    std::fs::write(
        dir.join("logs/big.bin"),
        artifactstore_store::conformance::pattern(6 << 20 | 99, seed),
    )
    .unwrap();
}

fn same_tree(a: &Path, b: &Path) {
    for rel in ["report.xml", "logs/big.bin"] {
        assert!(
            std::fs::read(a.join(rel)).unwrap() == std::fs::read(b.join(rel)).unwrap(),
            "{rel} differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_moves_to_postgres_and_s3() {
    let Some(pg) = testing::fresh_postgres_database().await else {
        return;
    };
    let s3 = testing::s3_settings().expect("S3 is configured with PostgreSQL");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();

    // The embedded store, in use: two packages, a hold, one package
    // collected after it expired.
    let old_cfg = work.join("old.toml");
    std::fs::write(
        &old_cfg,
        "data_dir = \"old-data\"\n[retention.classes.brief]\ndefault = \"1s\"\n\
         [retention.classes.release]\ndefault = \"3y\"\n[gc]\ngrace = \"0s\"\n",
    )
    .unwrap();
    let old_cfg_arg = old_cfg.to_str().unwrap();
    let old = ServerProcess::start_config(work, &["--config", old_cfg_arg]);
    let push = |name: &str, class: &str, dir: &str| {
        let out = ok(run(
            &[
                "push", dir, "--name", name, "--class", class, "--server", &old.base,
            ],
            work,
        ));
        out.trim().to_owned()
    };
    tree(&work.join("a"), 1);
    tree(&work.join("b"), 2);
    let kept = push("team/app", "release", "a");
    let gone = push("team/tmp", "brief", "b");
    let client = Client::new(&old.base);
    client.apply_hold(&kept, "audit 2026-11").await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    drop(old);
    ok(run(&["retention", "sweep", "--config", old_cfg_arg], work));
    ok(run(&["gc", "--config", old_cfg_arg], work));
    let old_events = {
        let old = ServerProcess::start_config(work, &["--config", old_cfg_arg]);
        let events = ok(run(&["events", "--server", &old.base], work));
        drop(old);
        events
    };

    // The target: the config of OPERATOR.md's deployment section.
    let new_cfg = work.join("new.toml");
    std::fs::write(
        &new_cfg,
        format!(
            "data_dir = \"node-data\"\n\
             [metadata]\nurl = \"{pg}\"\n\
             [blobs]\nbackend = \"s3\"\n\
             [blobs.s3]\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\nregion = \"{region}\"\n\
             access_key_id = \"{key}\"\nsecret_access_key = \"{secret}\"\nprefix = \"{prefix}\"\n\
             [retention.classes.brief]\ndefault = \"1s\"\n\
             [retention.classes.release]\ndefault = \"3y\"\n",
            endpoint = s3.endpoint.as_deref().unwrap(),
            bucket = s3.bucket,
            region = s3.region,
            key = s3.access_key_id.as_deref().unwrap(),
            secret = s3.secret_access_key.as_deref().unwrap(),
            prefix = s3.prefix,
        ),
    )
    .unwrap();
    let new_cfg_arg = new_cfg.to_str().unwrap();

    // The move, then the same command again: nothing left to copy.
    let first = ok(run(
        &[
            "migrate-store",
            "--config",
            old_cfg_arg,
            "--to-config",
            new_cfg_arg,
        ],
        work,
    ));
    assert!(first.contains("after seq 0"), "{first}");
    assert!(first.contains("target verified"), "{first}");
    let again = ok(run(
        &[
            "migrate-store",
            "--config",
            old_cfg_arg,
            "--to-config",
            new_cfg_arg,
        ],
        work,
    ));
    assert!(again.starts_with("copied 0 events"), "{again}");

    // A store that is not this one's prefix is refused.
    let other_cfg = work.join("other.toml");
    std::fs::write(&other_cfg, "data_dir = \"other-data\"\n").unwrap();
    let other = ServerProcess::start_config(work, &["--config", other_cfg.to_str().unwrap()]);
    tree(&work.join("c"), 3);
    ok(run(
        &[
            "push",
            "c",
            "--name",
            "x/y",
            "--class",
            "scratch",
            "--server",
            &other.base,
        ],
        work,
    ));
    drop(other);
    let refused = run(
        &[
            "migrate-store",
            "--config",
            other_cfg.to_str().unwrap(),
            "--to-config",
            new_cfg_arg,
        ],
        work,
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not a prefix"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Served by two nodes: the same log, the same packages and retention.
    let n1 = ServerProcess::start_config(work, &["--config", new_cfg_arg]);
    let n2 = ServerProcess::start_config(work, &["--config", new_cfg_arg, "--data-dir", "node-2"]);
    assert_eq!(ok(run(&["events", "--server", &n2.base], work)), old_events);
    ok(run(&["pull", &kept, "pulled", "--server", &n1.base], work));
    same_tree(&work.join("a"), &work.join("pulled"));
    let shown = ok(run(&["show", &kept, "--server", &n2.base], work));
    assert!(shown.contains("audit 2026-11"), "{shown}");
    let gone_shown = Client::new(&n1.base).package(&gone).await.unwrap();
    assert!(!gone_shown["deleted"].is_null(), "{gone_shown}");
    drop((n1, n2));
    let verified = ok(run(&["verify", "--deep", "--config", new_cfg_arg], work));
    assert!(verified.contains("ok"), "{verified}");
}
