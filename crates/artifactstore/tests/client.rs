//! The client commands against the real server: push, pull, ls, show,
//! events; their output when piped; their errors; resuming an upload
//! across a server killed mid-push.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::{ServerProcess, binary, temp_dir};

fn run(server: &str, args: &[&str], dir: &Path) -> Output {
    binary()
        .args(args)
        .env("ARTIFACTSTORE_URL", server)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A realistic tree: nested directories, an empty file, a file large enough
/// to go up in several session chunks, duplicate content, a non-ASCII name.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("logs/steps")).unwrap();
    std::fs::write(
        root.join("run.json"),
        b"{\"run\":\"2026-11-28.3\",\"result\":\"pass\"}\n",
    )
    .unwrap();
    std::fs::write(root.join("logs/steps/01-build.log"), b"building...\nok\n").unwrap();
    std::fs::write(root.join("logs/empty.log"), b"").unwrap();
    let big: Vec<u8> = artifactstore_store::conformance::pattern(3 << 20 | 4321, 7);
    std::fs::write(root.join("screenshot.png"), &big).unwrap();
    std::fs::write(root.join("logs/copy-of-screenshot.png"), &big).unwrap();
    std::fs::write(root.join("r\u{e9}sum\u{e9} \u{1f4c4}.txt"), "ünïcödé\n").unwrap();
}

/// Every file under `root`, relative path → bytes.
fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn event_count(server: &str, dir: &Path) -> usize {
    stdout(&run(server, &["events"], dir)).lines().count()
}

#[test]
fn push_then_pull_gives_an_identical_tree() {
    let (tmp, data) = temp_dir();
    let server = ServerProcess::start(&data, &[]);
    let work = tmp.path();
    make_tree(&work.join("run"));

    // Piped: stdout is the id alone, stderr stays empty.
    let out = run(
        &server.base,
        &[
            "push",
            "run",
            "--name",
            "guide-board/runs",
            "--class",
            "release-evidence",
            "--chunk-size",
            "1MiB",
        ],
        work,
    );
    let id = stdout(&out).trim().to_owned();
    assert_eq!(id.len(), 36, "{id:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Pushing the same tree again uploads nothing: only the new package's
    // two events are appended (the manifest blob is already stored too).
    let before = event_count(&server.base, work);
    let again = stdout(&run(
        &server.base,
        &[
            "push",
            "run",
            "--name",
            "guide-board/runs",
            "--class",
            "scratch",
        ],
        work,
    ));
    assert_ne!(again.trim(), id);
    assert_eq!(event_count(&server.base, work), before + 2);

    stdout(&run(&server.base, &["pull", &id, "copy"], work));
    assert_eq!(tree(&work.join("copy")), tree(&work.join("run")));
    let leftovers: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".artifactstore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let listing = stdout(&run(
        &server.base,
        &["ls", "--name", "guide-board/runs"],
        work,
    ));
    assert_eq!(listing.lines().count(), 3, "{listing}");
    assert!(listing.contains(&id) && listing.contains("release-evidence"));
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&run(&server.base, &["show", &id], work))).unwrap();
    assert_eq!(shown["file_count"], 6);
    assert_eq!(shown["retention"]["class"], "release-evidence");
    let events = stdout(&run(&server.base, &["events", "--after", "1"], work));
    assert!(
        events
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    assert!(events.lines().next().unwrap().contains("\"seq\":2"));
}

#[test]
fn pull_is_all_or_nothing_and_verifies_digests() {
    let (tmp, data) = temp_dir();
    let server = ServerProcess::start(&data, &[]);
    let work = tmp.path();
    make_tree(&work.join("run"));
    let id = stdout(&run(
        &server.base,
        &["push", "run", "--name", "a/b", "--class", "scratch"],
        work,
    ))
    .trim()
    .to_owned();

    // An existing destination is refused.
    std::fs::create_dir(work.join("taken")).unwrap();
    let out = run(&server.base, &["pull", &id, "taken"], work);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    // One stored byte flipped behind the server's back: the pull fails,
    // names the file, and leaves nothing behind.
    let blob = artifactstore_core::BlobId::of(b"building...\nok\n");
    let path = data.join(artifactstore_store::blob::fs::FsBlobStore::location_of(
        &blob,
    ));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = run(&server.base, &["pull", &id, "broken"], work);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("logs/steps/01-build.log") && err.contains("do not match"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!work.join("broken").exists());
    let leftovers: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".artifactstore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn client_errors_are_one_line_and_non_zero() {
    let (tmp, data) = temp_dir();
    let server = ServerProcess::start(&data, &[]);
    let work = tmp.path();
    make_tree(&work.join("run"));
    for (args, needle) in [
        (
            vec!["push", "missing-dir", "--name", "a", "--class", "scratch"],
            "missing-dir",
        ),
        (
            vec!["push", "run", "--name", "a", "--class", "eternal"],
            "unknown retention class",
        ),
        (
            vec!["push", "run", "--name", "Not Valid", "--class", "scratch"],
            "invalid package name",
        ),
        (
            vec!["show", "01936f2e-0000-7000-8000-000000000000"],
            "no package",
        ),
        (
            vec!["pull", "01936f2e-0000-7000-8000-000000000000", "x"],
            "no package",
        ),
    ] {
        let out = run(&server.base, &args, work);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    // No server at all.
    let out = run("http://127.0.0.1:9", &["ls"], work);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    assert!(out.stdout.is_empty());
    // A symlink is refused rather than followed.
    std::os::unix::fs::symlink("/etc/hostname", work.join("run/link")).unwrap();
    let out = run(
        &server.base,
        &["push", "run", "--name", "a", "--class", "scratch"],
        work,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlinks are not pushed"));
}

#[test]
fn tokens_come_from_the_environment() {
    let (tmp, data) = temp_dir();
    let config = tmp.path().join("c.toml");
    let hash = {
        use sha2::Digest as _;
        artifactstore_core::Digest::sha256(sha2::Sha256::digest(b"ci-secret").into()).hex()
    };
    std::fs::write(
        &config,
        format!(
            "[[tokens]]\nsubject = \"ci\"\nscopes = [\"read\", \"write\"]\nsha256 = \"{hash}\"\n"
        ),
    )
    .unwrap();
    let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let work = tmp.path();
    make_tree(&work.join("run"));
    let denied = run(
        &server.base,
        &["push", "run", "--name", "a", "--class", "scratch"],
        work,
    );
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let out = binary()
        .args(["push", "run", "--name", "a", "--class", "scratch"])
        .env("ARTIFACTSTORE_URL", &server.base)
        .env("ARTIFACTSTORE_TOKEN", "ci-secret")
        .current_dir(work)
        .output()
        .unwrap();
    let id = stdout(&out).trim().to_owned();
    let shown = binary()
        .args([
            "show",
            &id,
            "--token",
            "ci-secret",
            "--server",
            &server.base,
        ])
        .output()
        .unwrap();
    assert!(stdout(&shown).contains("\"created_by\": \"ci\""));
}

/// The server dies (SIGKILL) while a large file goes up in chunks and comes
/// back on the same address: the push resumes the same session from the
/// offset the server kept, and the result pulls back identical.
#[test]
fn push_resumes_its_upload_across_a_server_restart() {
    let (tmp, data) = temp_dir();
    let work = tmp.path();
    std::fs::create_dir(work.join("big")).unwrap();
    let content = artifactstore_store::conformance::pattern(160 << 20, 3);
    std::fs::write(work.join("big/disk.img"), &content).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let server = ServerProcess::start_on(&data, &addr, &[]);
    let base = server.base.clone();

    let push = binary()
        .args([
            "push",
            "big",
            "--name",
            "images/disk",
            "--class",
            "scratch",
            "--chunk-size",
            "1MiB",
        ])
        .env("ARTIFACTSTORE_URL", &base)
        .current_dir(work)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the session holds some bytes, then kill the server.
    let staged = |dir: &Path| -> u64 {
        std::fs::read_dir(dir.join("staging")).map_or(0, |d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
    };
    let start = std::time::Instant::now();
    while staged(&data) < 16 << 20 {
        assert!(start.elapsed().as_secs() < 60, "upload never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    server.kill9();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let server = ServerProcess::start_on(&data, &addr, &[]);
    let out = push.wait_with_output().unwrap();
    let id = stdout(&out).trim().to_owned();
    let log = server.log().join("\n");
    assert!(
        log.contains("method=HEAD uri=/uploads/"),
        "the client asked the restarted server for its offset"
    );
    assert!(
        !log.contains("method=POST uri=/uploads"),
        "and did not start a new session:\n{log}"
    );

    stdout(&run(&base, &["pull", &id, "back"], work));
    assert!(std::fs::read(work.join("back/disk.img")).unwrap() == content);
}

/// On a terminal push and pull report what they did on stderr; piped, they
/// print only their result (checked in the test above).
#[test]
fn a_terminal_gets_progress_and_a_summary() {
    if !common::require_tool("script") {
        return;
    }
    let (tmp, data) = temp_dir();
    let server = ServerProcess::start(&data, &[]);
    let work = tmp.path();
    make_tree(&work.join("run"));
    let bin = env!("CARGO_BIN_EXE_artifactstore");
    // `script` runs the command on a pseudo-terminal and copies what it
    // wrote there to our stdout.
    let on_tty = |cmd: String| -> String {
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("ARTIFACTSTORE_URL", &server.base)
            .current_dir(work)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = on_tty(format!("{bin} push run --name a/b --class scratch"));
    assert!(shown.contains("6 files, 5 blobs: 5 uploaded"), "{shown}");
    let id = shown
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.len() == 36)
        .expect("the id")
        .to_owned();
    let shown = on_tty(format!("{bin} pull {id} copy"));
    assert!(
        shown.contains("6 files,") && shown.contains("all digests verified"),
        "{shown}"
    );
}

/// `artifactstore events | head -1`: the reader goes away early; the command
/// stops quietly instead of panicking.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    let (tmp, data) = temp_dir();
    let server = ServerProcess::start(&data, &[]);
    let work = tmp.path();
    make_tree(&work.join("run"));
    for _ in 0..3 {
        stdout(&run(
            &server.base,
            &["push", "run", "--name", "a/b", "--class", "scratch"],
            work,
        ));
    }
    let mut child = binary()
        .args(["events"])
        .env("ARTIFACTSTORE_URL", &server.base)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close our end of the pipe.
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains("\"seq\":1"));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{err}");
}
