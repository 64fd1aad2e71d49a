//! Retrieval tiering through the binary: `serve` moves packages to the cold
//! tier on its own interval, `tier run` does it on demand, and reads do not
//! change.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use artifactstore_client::Client;
use common::{ServerProcess, binary};

const CONFIG: &str = r#"
[retention.classes.build]
default = "90d"
cold_after = "1s"
[retention.classes.keep]
permanent = true
[tiering]
cold = "fs"
interval = "1s"
"#;

fn run(args: &[&str], dir: &Path) -> Output {
    binary().args(args).current_dir(dir).output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn tree(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("a.txt"), "cold soon").unwrap();
    std::fs::write(
        dir.join("b.bin"),
        artifactstore_store::conformance::pattern(2 << 20, 4),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_tier_run_move_packages_to_the_cold_tier() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    std::fs::write(work.join("a.toml"), CONFIG).unwrap();
    tree(&work.join("t"));

    // serve moves a due package on its own.
    let server = ServerProcess::start_config(work, &["--config", "a.toml", "--data-dir", "data-a"]);
    let push = |class: &str, server: &ServerProcess| {
        ok(run(
            &[
                "push",
                "t",
                "--name",
                "x/y",
                "--class",
                class,
                "--server",
                &server.base,
            ],
            work,
        ))
        .trim()
        .to_owned()
    };

    let client = Client::new(&server.base);
    let id = push("build", &server);
    let kept = push("keep", &server);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.package(&id).await.unwrap()["tier"] != "cold" {
        assert!(Instant::now() < deadline, "serve did not move the package");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.package(&kept).await.unwrap()["tier"], "hot");
    ok(run(&["pull", &id, "back", "--server", &server.base], work));
    for f in ["a.txt", "b.bin"] {
        assert!(
            std::fs::read(work.join("t").join(f)).unwrap()
                == std::fs::read(work.join("back").join(f)).unwrap()
        );
    }
    let history = ok(run(&["events", "--server", &server.base], work));
    assert!(history.contains("v1.package.tier_changed"), "{history}");
    drop(server);

    // tier run, on a store whose server does not move packages itself.
    let quiet = r#"
[retention.classes.build]
default = "90d"
cold_after = "1s"
[tiering]
cold = "fs"
interval = "1h"
"#;
    std::fs::write(work.join("b.toml"), quiet).unwrap();
    let b = ServerProcess::start_config(work, &["--config", "b.toml", "--data-dir", "data-b"]);
    let id_b = push("build", &b);
    drop(b);
    std::thread::sleep(Duration::from_millis(1100));
    let moved = ok(run(
        &["tier", "run", "--config", "b.toml", "--data-dir", "data-b"],
        work,
    ));
    assert!(
        moved.starts_with("moved 1 packages to the cold tier"),
        "{moved}"
    );
    assert!(moved.contains(&id_b), "{moved}");
    let again = ok(run(
        &["tier", "run", "--config", "b.toml", "--data-dir", "data-b"],
        work,
    ));
    assert!(again.starts_with("moved 0 packages"), "{again}");
    let verified = ok(run(
        &[
            "verify",
            "--deep",
            "--config",
            "b.toml",
            "--data-dir",
            "data-b",
        ],
        work,
    ));
    assert!(verified.contains("ok"), "{verified}");

    // Without a cold tier, tier run says so and fails.
    let none = run(&["tier", "run", "--data-dir", "data-c"], work);
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no cold tier"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
}
