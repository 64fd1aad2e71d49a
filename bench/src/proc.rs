//! The processes a benchmark measures: our server, the registry, and
//! one-shot commands, each with its peak resident set size.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Peak resident set size of a live process so far (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")
}

/// Starts a new peak for `pid`: `VmHWM` falls back to the current RSS, so
/// each scenario's peak is its own, not the largest of the server's life.
pub(crate) fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

/// A child process that is killed (and reaped) when dropped.
#[derive(Debug)]
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `artifactstore serve`, killed on drop.
#[derive(Debug)]
pub(crate) struct Server {
    child: Killed,
    pub(crate) base: String,
}

impl Server {
    /// Starts `BIN serve --config CONFIG --listen 127.0.0.1:0` and waits for
    /// the address it reports. The server logs at its default level (a
    /// line per request), as the registry does at its own; measured, the
    /// lines cost neither scenario anything (BENCHMARKS.md).
    pub(crate) fn start(bin: &Path, config: &Path) -> anyhow::Result<Server> {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(url);
                } else if line.contains("ERROR") {
                    eprintln!("server: {line}");
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => Ok(Server {
                child: Killed(child),
                base,
            }),
            Err(_) => {
                let _ = child.kill();
                bail!("the server did not report its address within 60 s")
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// The CNCF Distribution registry (`docker-registry` from Debian), on
/// loopback with filesystem storage under `root`; killed on drop.
#[derive(Debug)]
pub(crate) struct Registry {
    child: Killed,
    pub(crate) base: String,
}

impl Registry {
    pub(crate) async fn start(bin: &Path, root: &Path) -> anyhow::Result<Registry> {
        let port = free_port()?;
        std::fs::create_dir_all(root)?;
        let config = root.join("config.yml");
        // Debian's shipped storage settings (in-memory descriptor cache),
        // without auth, health checks or upload purging, which would only
        // add noise.
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  cache:\n    blobdescriptor: inmemory\n  \
                 filesystem:\n    rootdirectory: {}\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                root.join("storage").display()
            ),
        )?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let registry = Registry {
            child: Killed(child),
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = client
                .get(format!("{}/v2/", registry.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(registry);
            }
            if Instant::now() > deadline {
                bail!("the registry did not answer /v2/ within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// What a finished command took.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) elapsed: Duration,
    /// The largest `VmHWM` seen while it ran (sampled every 5 ms: a peak
    /// reached in its last few milliseconds can be missed).
    pub(crate) peak_kib: u64,
    pub(crate) stdout: String,
}

/// Runs a command to completion, timing it and sampling its peak RSS.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<Finished> {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(kib) = peak_rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let output = child.wait_with_output()?;
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(Finished {
        elapsed,
        peak_kib: peak.load(Ordering::Relaxed),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    })
}

/// The path of a program on PATH, or an error naming the package.
pub(crate) fn which(program: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not on PATH (Debian package {package})"))
}
