//! The `artifactstore` command (DESIGN.md §6). It parses flags and the
//! config file, builds the engine, and hands over to the libraries.

/// `println!` that hands back the write error instead of panicking: a
/// closed pipe is how `… | head` says it has read enough.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod config;
mod remote;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use artifactstore_store::{Store, StoreOptions};
use clap::{Args, Parser, Subcommand};

use crate::config::{Overrides, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "artifactstore",
    version,
    about = "A content-addressed artifact store with a tamper-evident log and retention"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Check the hash chain, that the views equal a replay of the log, and
    /// that every blob's bytes are present. Safe while `serve` runs.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Also rehash every blob and compare both digests.
        #[arg(long)]
        deep: bool,
    },
    /// Collect garbage: delete packages the sweeper marked eligible, then
    /// blobs no live package references once `[gc] grace` has passed, then
    /// expired uploads and what crashes left behind (what `serve` does every
    /// `[gc] interval`). Safe while `serve` runs.
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Report exactly what a run would delete, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy this store (its log, exactly, and every stored blob's bytes)
    /// into the store `--to-config` describes, e.g. from the embedded pair
    /// to PostgreSQL and S3. The target must be empty or an earlier,
    /// interrupted copy of this store, which the run continues. Stop writes
    /// to this store before the last run (OPERATOR.md, "Moving a store").
    MigrateStore {
        #[command(flatten)]
        store: StoreArgs,
        /// The target store's config file.
        #[arg(long, value_name = "FILE")]
        to_config: PathBuf,
    },
    /// Retention: extensions, holds, history, and the eligibility sweep.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Maintain the views derived from the event log.
    Views {
        #[command(subcommand)]
        command: ViewsCommand,
    },
    /// Retrieval tiering: move packages to the cold tier.
    Tier {
        #[command(subcommand)]
        command: TierCommand,
    },
    /// Upload a directory as a package; prints the package id.
    Push {
        #[command(flatten)]
        client: ClientArgs,
        /// The directory to push (its regular files, recursively).
        dir: PathBuf,
        /// Package name (OCI repository-name grammar, e.g. team/app).
        #[arg(long)]
        name: String,
        /// Retention class (see `GET /retention/classes` or OPERATOR.md).
        #[arg(long)]
        class: String,
        /// Files hashed and uploaded at once. The server records uploads
        /// that finish together in one transaction, so for many small
        /// files more in flight means fewer commits (docs/decisions.md).
        #[arg(long, default_value_t = artifactstore_client::UPLOADS_IN_FLIGHT,
              value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
        /// Files larger than this go up in resumable chunks of this size.
        #[arg(long, default_value = "64MiB", value_parser = parse_chunk)]
        chunk_size: u64,
    },
    /// Download a package into a new directory, verifying every file.
    Pull {
        #[command(flatten)]
        client: ClientArgs,
        /// Package id.
        id: String,
        /// Where to put the files; must not exist yet.
        dest: PathBuf,
        /// Files downloaded at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
    },
    /// List packages.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        class: Option<String>,
        /// Only packages that are (true) or are not (false) eligible for deletion.
        #[arg(long)]
        eligible: Option<bool>,
        /// Only packages the collector deleted (true) or live ones (false).
        #[arg(long)]
        deleted: Option<bool>,
    },
    /// Show a package and its retention state.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Print the event log as JSON lines.
    Events {
        #[command(flatten)]
        client: ClientArgs,
        /// Start after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep following new events.
        #[arg(long)]
        follow: bool,
    },
}

/// Which server a client command talks to.
#[derive(Debug, Args)]
struct ClientArgs {
    /// Server URL.
    #[arg(
        long,
        env = "ARTIFACTSTORE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Bearer token.
    #[arg(long, env = "ARTIFACTSTORE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ClientArgs {
    fn client(&self) -> artifactstore_client::Client {
        artifactstore_client::Client::new(&self.server).with_token(self.token.clone())
    }
}

fn parse_chunk(s: &str) -> Result<u64, String> {
    let n = config::parse_size(s)?;
    if n < 1 << 20 {
        return Err("chunk size must be at least 1 MiB".into());
    }
    Ok(n)
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// Mark every package whose expiry has passed and that has no active
    /// hold as eligible for deletion (what `serve` does every
    /// `[retention] sweep_interval`). Works on the store directly.
    Sweep {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Move a package's expiry strictly later.
    Extend {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// The new expiry: RFC 3339 UTC with six fractional digits,
        /// e.g. 2030-01-01T00:00:00.000000Z.
        #[arg(long)]
        until: String,
        #[arg(long)]
        reason: String,
    },
    /// Apply a hold; prints its id.
    Hold {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Release one hold.
    Release {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        hold: String,
        #[arg(long)]
        reason: String,
    },
    /// The package's retention events, as JSON lines.
    History {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum TierCommand {
    /// Move every package older than its class's `cold_after` to the cold
    /// tier, with the blobs no younger package still needs hot (what
    /// `serve` does every `[tiering] interval`). Safe while `serve` runs.
    Run {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ViewsCommand {
    /// Drop the views and derive them again from the log, in one
    /// transaction (writers wait; readers see the old views until it ends).
    Rebuild {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where the store is: shared by `serve` and the admin commands.
#[derive(Debug, Args)]
struct StoreArgs {
    /// TOML config file (see OPERATOR.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory holding metadata and blobs [default: ./artifactstore-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl StoreArgs {
    fn settings(&self, listen: Option<String>) -> anyhow::Result<Settings> {
        Settings::load(&Overrides {
            config: self.config.clone(),
            listen,
            data_dir: self.data_dir.clone(),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ARTIFACTSTORE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("artifactstore: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("artifactstore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether an error comes from writing to a reader that went away.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { store, listen } => serve(store.settings(listen)?)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Verify { store, deep } => verify(&store.settings(None)?, deep).await,
        Command::MigrateStore { store, to_config } => {
            let source = open_store(&store.settings(None)?).await?;
            let target_settings = Settings::load(&Overrides {
                config: Some(to_config),
                ..Overrides::default()
            })?;
            let target = open_store(&target_settings).await?;
            let r = source.copy_into(&target).await?;
            let check = target.verify(false).await?;
            out!(
                "copied {} events (after seq {}) and {} blobs ({} bytes) into {}",
                r.events,
                r.resumed_after,
                r.blobs,
                r.bytes,
                target_settings.describe_store()
            )?;
            if !check.is_ok() {
                for f in &check.findings {
                    out!("target: {f}")?;
                }
                anyhow::bail!("the target does not verify");
            }
            out!(
                "target verified: {} events, {} blobs",
                check.events_checked,
                check.blobs_checked
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc { store, dry_run } => {
            let settings = store.settings(None)?;
            let report = open_store(&settings)
                .await?
                .collect(&settings.gc, dry_run)
                .await?;
            print_gc(&report)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tier {
            command: TierCommand::Run { store },
        } => {
            let settings = store.settings(None)?;
            let r = open_store(&settings).await?.tier_run().await?;
            out!(
                "moved {} packages to the cold tier ({} blobs, {} bytes)",
                r.packages.len(),
                r.blobs,
                r.bytes
            )?;
            for id in &r.packages {
                out!("{id}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Views {
            command: ViewsCommand::Rebuild { store },
        } => {
            let settings = store.settings(None)?;
            let applied = open_store(&settings).await?.rebuild_views().await?;
            out!("views rebuilt from {applied} events")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Retention { command } => {
            use remote::RetentionChange as C;
            let (client, id, change) = match &command {
                RetentionCommand::Sweep { store } => {
                    let report = open_store(&store.settings(None)?).await?.sweep().await?;
                    out!(
                        "{} package(s) became eligible for deletion (evaluated at {})",
                        report.marked,
                        report.evaluated_at
                    )?;
                    return Ok(ExitCode::SUCCESS);
                }
                RetentionCommand::Extend {
                    client,
                    id,
                    until,
                    reason,
                } => (client, id, C::Extend { until, reason }),
                RetentionCommand::Hold { client, id, reason } => (client, id, C::Hold { reason }),
                RetentionCommand::Release {
                    client,
                    id,
                    hold,
                    reason,
                } => (client, id, C::Release { hold, reason }),
                RetentionCommand::History { client, id } => (client, id, C::History),
            };
            remote::retention(&client.client(), id, change).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Push {
            client,
            dir,
            name,
            class,
            jobs,
            chunk_size,
        } => {
            let options = remote::PushOptions {
                name,
                class,
                jobs: usize::from(jobs),
                chunk_size,
            };
            remote::push(&client.client(), &dir, options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pull {
            client,
            id,
            dest,
            jobs,
        } => {
            remote::pull(&client.client(), &id, &dest, usize::from(jobs)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls {
            client,
            name,
            class,
            eligible,
            deleted,
        } => {
            let mut filters = Vec::new();
            filters.extend(name.map(|n| ("name", n)));
            filters.extend(class.map(|c| ("retention_class", c)));
            filters.extend(eligible.map(|e| ("eligible", e.to_string())));
            filters.extend(deleted.map(|d| ("deleted", d.to_string())));
            remote::ls(&client.client(), &filters).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { client, id } => {
            remote::show(&client.client(), &id).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Events {
            client,
            after,
            follow,
        } => {
            remote::events(&client.client(), after, follow).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let options = StoreOptions {
        limits: settings.limits,
        classes: settings.classes.clone(),
        presign_downloads: settings.presign_downloads,
        cold_after: settings.cold_after.clone(),
        ..StoreOptions::default()
    };
    Store::open(&settings.backends, options)
        .await
        .with_context(|| format!("opening the store ({})", settings.describe_store()))
}

async fn verify(settings: &Settings, deep: bool) -> anyhow::Result<ExitCode> {
    let report = open_store(settings).await?.verify(deep).await?;
    let views = report.views_compared_at.map_or(
        "not compared (the log or a manifest is damaged)".to_owned(),
        |seq| format!("compared with a replay up to seq {seq}"),
    );
    out!(
        "events: {} checked; manifests: {} checked; views: {views}; blobs: {} checked{}",
        report.events_checked,
        report.manifests_checked,
        report.blobs_checked,
        if deep {
            format!(", {} bytes rehashed", report.bytes_rehashed)
        } else {
            String::new()
        }
    )?;
    if report.blobs_in_trash > 0 {
        out!(
            "note: {} blob(s) set aside in the trash by a collection not yet committed \
             (running, or interrupted: a read or the next collection puts them back); \
             not rehashed",
            report.blobs_in_trash
        )?;
    }
    for finding in &report.findings {
        out!("FAIL {finding}")?;
    }
    if report.is_ok() {
        out!("ok")?;
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "artifactstore: verify found {} problem(s)",
            report.findings.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

fn print_gc(r: &artifactstore_store::GcReport) -> std::io::Result<()> {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    for p in &r.packages {
        out!(
            "{verb} package {} {} ({} bytes only it referenced)",
            p.id,
            p.name,
            p.bytes_freed
        )?;
    }
    for b in &r.blobs {
        out!("{verb} blob {} ({} bytes)", b.sha256_digest(), b.size)?;
    }
    for s in &r.sessions {
        out!("{verb} expired upload {s}")?;
    }
    out!(
        "{}{} package(s), {} blob(s), {} bytes; {} expired upload(s); leftovers of crashes: \
         {} staging object(s), {} blob file(s) no row names, {} trashed blob(s) put back",
        if r.dry_run {
            "dry run, nothing changed: "
        } else {
            ""
        },
        r.packages.len(),
        r.blobs.len(),
        r.bytes_freed,
        r.sessions.len(),
        r.orphaned_staging,
        r.orphaned_blobs,
        r.restored
    )
}

/// Without tokens every request is anonymous and allowed, so the server
/// must not be reachable from other machines.
fn check_listen(addr: &SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "refusing to listen on {addr}: no tokens are configured, so only loopback addresses are allowed"
        );
    }
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    if settings.auth.is_open() {
        check_listen(&settings.listen)?;
    }
    let store = Arc::new(open_store(&settings).await?);
    // A collection that crashed may have left blobs in the trash whose rows
    // still stand: put them back before serving reads.
    if let Some(n) = store.recover().await.context("recovering the trash")?
        && n > 0
    {
        tracing::warn!(
            restored = n,
            "put back blobs an interrupted collection had trashed"
        );
    }
    tokio::spawn(sweep_loop(store.clone(), settings.sweep_interval));
    tokio::spawn(gc_loop(store.clone(), settings.gc_interval, settings.gc));
    if settings.backends.cold.is_some() {
        tokio::spawn(tier_loop(store.clone(), settings.tier_interval));
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = shutdown_signal()?;
    tracing::info!(store = %settings.describe_store(), "listening on http://{addr}");
    let state = artifactstore_server::AppState::new(store, settings.auth.clone());
    artifactstore_server::serve(listener, state, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The sweeper inside `serve`: once at start, then every `interval`.
/// Several servers on one database may all run it; the engine records each
/// transition once whoever sweeps.
async fn sweep_loop(store: Arc<Store>, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.sweep().await {
            Ok(r) if r.marked > 0 => tracing::info!(marked = r.marked, "retention sweep"),
            Ok(_) => tracing::debug!("retention sweep: nothing became eligible"),
            Err(e) => {
                tracing::warn!(error = %e, "retention sweep failed; retrying at the next interval")
            }
        }
    }
}

/// The collector inside `serve`: once at start, then every `interval`.
/// With several servers on one database, whoever holds the collector lock
/// runs; the others skip that turn.
async fn tier_loop(store: Arc<Store>, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.tier_run().await {
            Ok(r) if r.packages.is_empty() => tracing::debug!("tiering: nothing due"),
            Ok(r) => tracing::info!(
                packages = r.packages.len(),
                blobs = r.blobs,
                bytes = r.bytes,
                "moved packages to the cold tier"
            ),
            Err(artifactstore_store::StoreError::TieringBusy) => {
                tracing::debug!("tiering: another node is moving packages")
            }
            Err(e) => tracing::warn!(error = %e, "tiering failed; retrying at the next interval"),
        }
    }
}

async fn gc_loop(
    store: Arc<Store>,
    interval: std::time::Duration,
    settings: artifactstore_store::GcSettings,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.collect(&settings, false).await {
            Ok(r) => tracing::info!(
                packages = r.packages.len(),
                blobs = r.blobs.len(),
                bytes = r.bytes_freed,
                uploads = r.sessions.len(),
                orphaned_staging = r.orphaned_staging,
                orphaned_blobs = r.orphaned_blobs,
                restored = r.restored,
                "garbage collection"
            ),
            Err(artifactstore_store::StoreError::CollectorBusy) => {
                tracing::debug!("garbage collection: another collector is running")
            }
            Err(e) => {
                tracing::warn!(error = %e, "garbage collection failed; retrying at the next interval")
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives
/// right after the "listening on" line still stops the server gracefully.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing in-flight requests");
    })
}
