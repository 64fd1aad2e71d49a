//! The pilot scenario of the founding workplan, end to end against the real
//! binary: a guide-board run (examples/guide-board-run) is pushed as
//! `release-evidence`, extended once, held; its expiry passes and it stays
//! ineligible; the hold is released and a sweep marks it eligible. Each
//! step is checked through `GET …/retention` and through the event log.
//! The class is shortened to seconds in the config so the test can wait.

mod common;

use std::path::Path;
use std::process::Output;

use artifactstore_client::Client;
use artifactstore_core::Timestamp;
use common::{ServerProcess, binary, temp_dir};
use serde_json::Value;

fn example() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/guide-board-run"
    ))
}

fn cli(args: &[&str], server: &str, config: &Path, data: &Path) -> String {
    let mut cmd = binary();
    cmd.args(args).env("ARTIFACTSTORE_URL", server);
    // The admin commands work on the store itself, like serve.
    let admin = args.first() == Some(&"gc")
        || (args.first() == Some(&"retention") && args.get(1) == Some(&"sweep"));
    if admin {
        cmd.arg("--config").arg(config).arg("--data-dir").arg(data);
    }
    let out: Output = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The package's retention events as the log shows them.
async fn retention_events(client: &Client, id: &str) -> Vec<String> {
    let mut types = Vec::new();
    let mut after = 0;
    loop {
        let (page, next) = client.events_page(after, 1000).await.unwrap();
        if page.is_empty() {
            return types;
        }
        for e in page {
            if e["subject"] == id && e["type"].as_str().unwrap().starts_with("v1.retention.") {
                types.push(
                    e["type"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("v1.retention.")
                        .to_owned(),
                );
            }
        }
        after = next;
    }
}

#[tokio::test]
async fn a_guide_board_run_through_its_retention_lifecycle() {
    let (tmp, data) = temp_dir();
    let config = tmp.path().join("pilot.toml");
    std::fs::write(
        &config,
        "[retention]\nsweep_interval = \"1h\"\n\
         [retention.classes.release-evidence]\ndefault = \"2s\"\n\
         [retention.classes.permanent-record]\npermanent = true\n",
    )
    .unwrap();
    let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let client = Client::new(&server.base);
    let run = |args: &[&str]| cli(args, &server.base, &config, &data);

    // Ingested as release-evidence.
    let id = run(&[
        "push",
        example().to_str().unwrap(),
        "--name",
        "guide-board/runs",
        "--class",
        "release-evidence",
    ])
    .trim()
    .to_owned();
    let state = client.retention(&id).await.unwrap();
    assert_eq!(state["class"], "release-evidence");
    let default_expiry: Timestamp = state["current_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retention_events(&client, &id).await, ["default_applied"]);
    let shown: Value = serde_json::from_str(&run(&["show", &id])).unwrap();
    assert_eq!(shown["file_count"], 5);

    // Extended once, by two seconds.
    let until = default_expiry
        .checked_add_micros(2_000_000)
        .unwrap()
        .to_string();
    run(&[
        "retention",
        "extend",
        &id,
        "--until",
        &until,
        "--reason",
        "release 4.2 audit window",
    ]);
    assert_eq!(
        client.retention(&id).await.unwrap()["current_expires_at"],
        until.as_str()
    );
    assert_eq!(
        retention_events(&client, &id).await,
        ["default_applied", "extended"]
    );

    // Held.
    let hold = run(&["retention", "hold", &id, "--reason", "held for the quarter"])
        .trim()
        .to_owned();
    let state = client.retention(&id).await.unwrap();
    assert_eq!(state["active_holds"], 1);
    assert_eq!(state["holds"][0]["hold_id"], hold.as_str());
    assert_eq!(
        retention_events(&client, &id).await,
        ["default_applied", "extended", "hold_applied"]
    );

    // The expiry passes; a sweep leaves it ineligible.
    let wait_until: Timestamp = until.parse().unwrap();
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        if now > wait_until.unix_micros() + 200_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(run(&["retention", "sweep"]).starts_with("0 package(s)"));
    assert_eq!(
        client.retention(&id).await.unwrap()["eligible_for_deletion"],
        false
    );
    assert_eq!(
        retention_events(&client, &id).await,
        ["default_applied", "extended", "hold_applied"]
    );

    // Released; the next sweep marks it eligible, once.
    run(&[
        "retention",
        "release",
        &id,
        &hold,
        "--reason",
        "quarter closed",
    ]);
    assert_eq!(client.retention(&id).await.unwrap()["active_holds"], 0);
    assert!(run(&["retention", "sweep"]).starts_with("1 package(s)"));
    assert!(run(&["retention", "sweep"]).starts_with("0 package(s)"));
    let state = client.retention(&id).await.unwrap();
    assert_eq!(state["eligible_for_deletion"], true);
    assert!(state["last_eligibility_seq"].is_u64());
    let trail = [
        "default_applied",
        "extended",
        "hold_applied",
        "hold_released",
        "deletion_eligible",
    ];
    assert_eq!(retention_events(&client, &id).await, trail);

    // The audit surface says the same, and nothing was deleted.
    let history: Vec<Value> = run(&["retention", "history", &id])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = history
        .iter()
        .map(|e| {
            e["type"]
                .as_str()
                .unwrap()
                .trim_start_matches("v1.retention.")
        })
        .collect();
    assert_eq!(types, trail);
    assert_eq!(history[3]["actor"], "anonymous");
    assert_eq!(history[4]["actor"], "sweeper");
    run(&["pull", &id, tmp.path().join("still-here").to_str().unwrap()]);
    assert!(tmp.path().join("still-here/screenshots/board.png").exists());

    // 6. The collector deletes it (issue 5): the record and its trail stay,
    // its files answer 410 (the bytes go once `[gc] grace` has passed).
    let dry = run(&["gc", "--dry-run"]);
    assert!(dry.contains(&format!("would delete package {id}")), "{dry}");
    let real = run(&["gc"]);
    assert!(real.contains(&format!("deleted package {id}")), "{real}");
    let package = client.package(&id).await.unwrap();
    assert_eq!(package["deleted"]["reason"], "retention expired");
    assert_eq!(retention_events(&client, &id).await, trail);
    let gone = binary()
        .args(["pull", &id])
        .arg(tmp.path().join("too-late"))
        .env("ARTIFACTSTORE_URL", &server.base)
        .output()
        .unwrap();
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("package-deleted"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    assert!(!tmp.path().join("too-late").exists());
}
