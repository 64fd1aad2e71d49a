//! The benchmark harness: each scenario sets artifactstore against a
//! baseline measured in the same run on the same bytes (the machine's limit
//! for the same work, or the CNCF Distribution registry), and prints one
//! table row: the figure, the baseline, their ratio, the target and the
//! server's peak RSS. Ratios, not absolute times, are what compare across
//! runs: the machines are shared and noisy.
//!
//! Numbers gate nothing here: the harness fails only when a scenario cannot
//! run or gives a wrong answer (a byte count, a digest, a count of marked
//! packages). Whether a target is met is printed, for a person to read.

mod data;
mod http;
mod large;
mod metadata;
mod proc;
mod report;
mod small;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use report::Table;

#[derive(Debug, Parser)]
#[command(about = "artifactstore side by side with the machine's limit and with a registry")]
struct Args {
    /// `quick` (under 5 minutes, smaller inputs) or `full` (the sizes the
    /// targets in BENCHMARKS.md are set for).
    #[arg(long, default_value = "quick")]
    mode: Mode,
    /// The release `artifactstore` binary to measure.
    #[arg(long, default_value = "target/release/artifactstore")]
    bin: PathBuf,
    /// The registry binary (Debian's `docker-registry`).
    #[arg(long, default_value = "/usr/bin/docker-registry")]
    registry: PathBuf,
    /// Where the inputs and every store are made (on the disk under test;
    /// removed afterwards). Default: a new directory under `target/`.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// PostgreSQL for the package-creation row (a server url, in which
    /// the harness creates a fresh database); default
    /// `ARTIFACTSTORE_TEST_POSTGRES`, as `.ci/services` exports it.
    #[arg(long, env = "ARTIFACTSTORE_TEST_POSTGRES")]
    postgres: Option<String>,
    /// Keep the work directory (its stores, for profiling) instead of
    /// removing it.
    #[arg(long)]
    keep: bool,
    /// Run only these scenario groups (large, small, create, log).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Requests in flight in the package-creation scenario, on both
    /// servers.
    #[arg(long, default_value_t = 8)]
    create_jobs: usize,
    /// `artifactstore push --jobs` in the small-files scenario; the
    /// registry's client and both read-backs keep as many requests in
    /// flight. Default: push's own default.
    #[arg(long, default_value_t = artifactstore_client::UPLOADS_IN_FLIGHT.into())]
    push_jobs: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Quick,
    Full,
}

/// The sizes of one mode's inputs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) blob_mib: u64,
    pub(crate) ranges: usize,
    pub(crate) small_files: usize,
    pub(crate) packages_created: usize,
    /// Packages whose log (two events each) `views rebuild` replays.
    pub(crate) rebuild_packages: usize,
    /// Packages the sweep looks at, 1 % of them expired.
    pub(crate) sweep_packages: usize,
}

impl Mode {
    fn sizes(self) -> Sizes {
        match self {
            Mode::Quick => Sizes {
                blob_mib: 256,
                ranges: 32,
                small_files: 2_000,
                packages_created: 1_000,
                rebuild_packages: 10_000,
                sweep_packages: 20_000,
            },
            Mode::Full => Sizes {
                blob_mib: 1024,
                ranges: 64,
                small_files: 10_000,
                packages_created: 5_000,
                rebuild_packages: 500_000,
                sweep_packages: 1_000_000,
            },
        }
    }
}

/// What every scenario needs.
#[derive(Debug)]
pub(crate) struct Bench {
    pub(crate) bin: PathBuf,
    pub(crate) registry: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) sizes: Sizes,
    pub(crate) postgres: Option<String>,
    pub(crate) client: reqwest::Client,
    /// Requests in flight in the package-creation scenario.
    pub(crate) create_jobs: usize,
    /// Uploads (and reads) in flight in the small-files scenario.
    pub(crate) push_jobs: usize,
}

impl Bench {
    /// A new empty directory under the work directory.
    pub(crate) fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Writes a server config for a store under `dir` and returns its path.
    /// Sweeper, collector and tiering stay out of the way (intervals of a
    /// day) so that only the measured work runs; `bench-short` and
    /// `bench-long` are the classes the scenarios use.
    pub(crate) fn config(&self, dir: &std::path::Path, metadata_url: Option<&str>) -> PathBuf {
        let mut toml = format!("data_dir = \"{}\"\n", dir.join("data").display());
        if let Some(url) = metadata_url {
            toml.push_str(&format!("[metadata]\nurl = \"{url}\"\n"));
        }
        toml.push_str(
            "[retention]\nsweep_interval = \"1d\"\n\
             [retention.classes.bench-short]\ndefault = \"1d\"\n\
             [retention.classes.bench-long]\ndefault = \"3y\"\n\
             [gc]\ninterval = \"1d\"\n",
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, toml).expect("writing a config in the work directory");
        path
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bin = std::fs::canonicalize(&args.bin).with_context(|| {
        format!(
            "{} not found: build it first (cargo build --release -p artifactstore)",
            args.bin.display()
        )
    })?;
    proc::which("openssl", "openssl")?;
    proc::which("dd", "coreutils")?;
    if !args.registry.is_file() {
        anyhow::bail!(
            "{} not found (Debian package docker-registry)",
            args.registry.display()
        );
    }
    let work = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::tempdir_in(dir)?
        }
        None => {
            std::fs::create_dir_all("target")?;
            tempfile::Builder::new()
                .prefix("bench-")
                .tempdir_in("target")?
        }
    };
    let bench = Bench {
        bin,
        registry: args.registry.clone(),
        work: work.path().to_path_buf(),
        sizes: args.mode.sizes(),
        postgres: args.postgres.clone(),
        client: reqwest::Client::builder().tcp_nodelay(true).build()?,
        create_jobs: args.create_jobs.max(1),
        push_jobs: args.push_jobs.max(1),
    };
    let wanted = |group: &str| args.only.is_empty() || args.only.iter().any(|g| g == group);

    println!("{}", report::machine(&bench.work));
    println!("mode: {:?}, {:?}\n", args.mode, bench.sizes);
    let mut table = Table::new();
    if wanted("large") {
        large::run(&bench, &mut table).await?;
    }
    if wanted("small") {
        small::run(&bench, &mut table).await?;
    }
    if wanted("create") {
        metadata::creation_rates(&bench, &mut table).await?;
    }
    if wanted("log") {
        metadata::large_log(&bench, &mut table).await?;
    }
    println!("\n{}", table.markdown());
    if args.keep {
        println!("kept {}", work.keep().display());
    }
    Ok(())
}
