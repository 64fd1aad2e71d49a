//! The TOML config file (DESIGN.md §6; every key is documented in
//! OPERATOR.md). Unknown keys are errors; command-line flags override the
//! file; the file overrides the defaults.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use artifactstore_core::retention::{ClassRule, shipped_classes};
use artifactstore_server::auth::{Auth, Scope, TokenEntry};
use artifactstore_store::blob::s3::{MIN_PART_SIZE, S3Settings};
use artifactstore_store::{Backends, BlobsConfig, GcSettings, Limits};
use serde::Deserialize;

pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub(crate) const DEFAULT_DATA_DIR: &str = "./artifactstore-data";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    metadata: MetadataSection,
    #[serde(default)]
    blobs: BlobsSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    retention: RetentionSection,
    #[serde(default)]
    gc: GcSection,
    #[serde(default)]
    tiering: TieringSection,
    #[serde(default)]
    tokens: Vec<TokenSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcSection {
    /// How often `serve` collects.
    interval: Option<String>,
    /// How long an unreferenced blob is kept after it was stored.
    grace: Option<String>,
    /// How long an upload session may stay open.
    upload_expiry: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TieringSection {
    /// The cold tier's backend: "fs" (under `<data_dir>/cold`) or "s3".
    cold: Option<String>,
    /// With `cold = "s3"`.
    s3: Option<S3Section>,
    /// How often `serve` moves packages that are due.
    interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSection {
    subject: String,
    scopes: Vec<String>,
    /// Hex SHA-256 of the token text.
    sha256: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionSection {
    /// How often `serve` sweeps for packages that became eligible.
    sweep_interval: Option<String>,
    /// When present, replaces the shipped classes entirely.
    classes: Option<BTreeMap<String, ClassSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassSection {
    default: Option<String>,
    #[serde(default)]
    permanent: bool,
    /// Age at which a package of this class moves to the cold tier.
    cold_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataSection {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobsSection {
    backend: Option<String>,
    s3: Option<S3Section>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct S3Section {
    /// Omit for AWS.
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    /// Else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    /// Keys start with this.
    prefix: Option<String>,
    /// Bytes per multipart part (at least 5 MiB).
    part_size: Option<ByteSize>,
    /// When set, whole downloads redirect to a link signed for this long.
    presign_downloads: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_blob_size: Option<ByteSize>,
}

/// A size given as a number of bytes or as text with a unit (`"64 GiB"`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "toml::Value")]
struct ByteSize(u64);

impl TryFrom<toml::Value> for ByteSize {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, Self::Error> {
        match v {
            toml::Value::Integer(n) if n >= 0 => Ok(ByteSize(n as u64)),
            toml::Value::String(s) => parse_size(&s).map(ByteSize),
            other => Err(format!(
                "expected a size like 1048576 or \"64 GiB\", got {other}"
            )),
        }
    }
}

/// Parses `123`, `10 KiB`, `64GiB`, `500MB`, … (binary and decimal units).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Flags that override the file.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    pub(crate) config: Option<PathBuf>,
    pub(crate) listen: Option<String>,
    pub(crate) data_dir: Option<PathBuf>,
}

/// The effective settings of a store process.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    /// Where the metadata and the bytes live.
    pub(crate) backends: Backends,
    /// See [`StoreOptions::presign_downloads`](artifactstore_store::StoreOptions).
    pub(crate) presign_downloads: Option<Duration>,
    /// Per class, the age at which packages move to the cold tier.
    pub(crate) cold_after: BTreeMap<String, Duration>,
    pub(crate) tier_interval: Duration,
    pub(crate) limits: Limits,
    pub(crate) classes: BTreeMap<String, ClassRule>,
    pub(crate) auth: Auth,
    pub(crate) sweep_interval: Duration,
    pub(crate) gc_interval: Duration,
    pub(crate) gc: GcSettings,
}

/// The default of `[tiering] interval`.
const DEFAULT_TIER_INTERVAL: Duration = Duration::from_secs(3600);

/// The default of `[gc] interval`.
const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(6 * 3600);

/// A humantime duration, zero allowed (`0s`, `24h`).
fn period(key: &str, text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text).map_err(|e| anyhow::anyhow!("{key} {text:?}: {e}"))
}

/// The default of `[retention] sweep_interval`.
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// A humantime duration of at least one second (`30s`, `15m`, `1h`).
fn interval(key: &str, text: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(text).map_err(|e| anyhow::anyhow!("{key} {text:?}: {e}"))?;
    if d < Duration::from_secs(1) {
        bail!("{key} {text:?}: must be at least 1s");
    }
    Ok(d)
}

impl Settings {
    pub(crate) fn load(o: &Overrides) -> anyhow::Result<Settings> {
        let file = match &o.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen_text = o
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text
            .parse()
            .with_context(|| format!("listen address {listen_text:?} is not host:port"))?;
        let (blobs, presign_downloads) = blobs_config(file.blobs)?;
        if let Some(url) = &file.metadata.url
            && !artifactstore_store::meta::is_supported_url(url)
        {
            bail!("metadata url {url:?} is not supported (supported: sqlite://…, postgres://…)");
        }
        let mut limits = Limits::default();
        if let Some(ByteSize(n)) = file.limits.max_blob_size {
            limits.max_blob_size = n;
        }
        let mut cold_after = BTreeMap::new();
        let classes = match file.retention.classes {
            None => shipped_classes(),
            Some(defined) => defined
                .into_iter()
                .map(|(name, c)| {
                    let rule = ClassRule::from_config(c.default.as_deref(), c.permanent)
                        .with_context(|| format!("retention class {name:?}"))?;
                    if let Some(age) = &c.cold_after {
                        let key = format!("[retention.classes.{name}] cold_after");
                        cold_after.insert(name.clone(), period(&key, age)?);
                    }
                    Ok((name, rule))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let cold = match file.tiering.cold.as_deref() {
            None => {
                if file.tiering.s3.is_some() {
                    bail!("[tiering.s3] is set but [tiering] cold is not \"s3\"");
                }
                None
            }
            Some("fs") => Some(BlobsConfig::Fs),
            Some("s3") => {
                let s3 = file.tiering.s3.ok_or_else(|| {
                    anyhow::anyhow!("[tiering] cold = \"s3\" needs a [tiering.s3] section")
                })?;
                let (settings, presign) = s3_settings("[tiering.s3]", s3)?;
                if presign.is_some() {
                    bail!(
                        "[tiering.s3] presign_downloads: set it in [blobs.s3]; it applies to both tiers"
                    );
                }
                Some(BlobsConfig::S3(settings))
            }
            Some(other) => {
                bail!("[tiering] cold {other:?} is not available (supported: \"fs\", \"s3\")")
            }
        };
        if cold.is_none()
            && let Some(class) = cold_after.keys().next()
        {
            bail!("retention class {class:?} has cold_after, but [tiering] names no cold tier");
        }
        let tier_interval = match &file.tiering.interval {
            Some(text) => interval("[tiering] interval", text)?,
            None => DEFAULT_TIER_INTERVAL,
        };
        if classes.is_empty() {
            bail!("[retention.classes] defines no class; remove it to use the shipped ones");
        }
        let auth = if file.tokens.is_empty() {
            Auth::Open
        } else {
            let entries = file
                .tokens
                .into_iter()
                .map(|t| {
                    let scopes = t
                        .scopes
                        .iter()
                        .map(|s| s.parse::<Scope>())
                        .collect::<Result<BTreeSet<_>, _>>()
                        .map_err(|e| anyhow::anyhow!("token of {:?}: {e}", t.subject))?;
                    let sha256 = artifactstore_core::digest::parse_hex32(&t.sha256)
                        .map_err(|e| anyhow::anyhow!("token of {:?}: sha256: {e}", t.subject))?;
                    Ok(TokenEntry {
                        subject: t.subject,
                        scopes,
                        sha256,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Auth::tokens(entries).map_err(|e| anyhow::anyhow!("[[tokens]]: {e}"))?
        };
        let sweep_interval = match &file.retention.sweep_interval {
            Some(text) => interval("[retention] sweep_interval", text)?,
            None => DEFAULT_SWEEP_INTERVAL,
        };
        let gc_interval = match &file.gc.interval {
            Some(text) => interval("[gc] interval", text)?,
            None => DEFAULT_GC_INTERVAL,
        };
        let mut gc = GcSettings::default();
        if let Some(text) = &file.gc.grace {
            gc.grace = period("[gc] grace", text)?;
        }
        if let Some(text) = &file.gc.upload_expiry {
            gc.upload_expiry = period("[gc] upload_expiry", text)?;
        }
        Ok(Settings {
            gc_interval,
            gc,
            sweep_interval,
            auth,
            classes,
            listen,
            backends: Backends {
                data_dir: o
                    .data_dir
                    .clone()
                    .or(file.data_dir)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
                metadata_url: file.metadata.url,
                blobs,
                cold,
            },
            presign_downloads,
            cold_after,
            tier_interval,
            limits,
        })
    }
}

impl Settings {
    /// Where the store is, for messages (no credentials).
    pub(crate) fn describe_store(&self) -> String {
        let b = &self.backends;
        let meta = match &b.metadata_url {
            None => format!("{}", b.data_dir.join("meta.sqlite").display()),
            // A postgres url may carry a password: show only its host part.
            Some(url) => match url.split_once('@') {
                Some((scheme_user, rest)) => {
                    let scheme = scheme_user.split("://").next().unwrap_or("postgres");
                    format!("{scheme}://…@{rest}")
                }
                None => url.clone(),
            },
        };
        let blobs = match &b.blobs {
            BlobsConfig::Fs => format!("{}", b.data_dir.display()),
            BlobsConfig::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
        };
        format!("metadata {meta}, blobs {blobs}")
    }
}

/// `[blobs]`: the backend, and how downloads are served from it.
fn blobs_config(section: BlobsSection) -> anyhow::Result<(BlobsConfig, Option<Duration>)> {
    match section.backend.as_deref() {
        None | Some("fs") => {
            if section.s3.is_some() {
                bail!("[blobs.s3] is set but [blobs] backend is not \"s3\"");
            }
            Ok((BlobsConfig::Fs, None))
        }
        Some("s3") => {
            let s3 = section.s3.ok_or_else(|| {
                anyhow::anyhow!("[blobs] backend = \"s3\" needs a [blobs.s3] section")
            })?;
            let (settings, presign) = s3_settings("[blobs.s3]", s3)?;
            Ok((BlobsConfig::S3(settings), presign))
        }
        Some(other) => bail!("blob backend {other:?} is not available (supported: \"fs\", \"s3\")"),
    }
}

/// An S3 section (`[blobs.s3]`, `[tiering.s3]`, named `key` in messages):
/// the bucket's settings, and the presigned-download period if set.
fn s3_settings(key: &str, s3: S3Section) -> anyhow::Result<(S3Settings, Option<Duration>)> {
    let bucket = s3
        .bucket
        .ok_or_else(|| anyhow::anyhow!("{key} bucket is required"))?;
    let part_size = s3
        .part_size
        .map_or(S3Settings::DEFAULT_PART_SIZE, |ByteSize(n)| n);
    if part_size < MIN_PART_SIZE {
        bail!("{key} part_size must be at least 5 MiB (S3's smallest part)");
    }
    let presign = s3
        .presign_downloads
        .as_deref()
        .map(|t| interval(&format!("{key} presign_downloads"), t))
        .transpose()?;
    let settings = S3Settings {
        endpoint: s3.endpoint,
        bucket,
        region: s3.region.unwrap_or_else(|| "us-east-1".to_owned()),
        access_key_id: s3.access_key_id,
        secret_access_key: s3.secret_access_key,
        prefix: s3.prefix.unwrap_or_default(),
        part_size,
    };
    Ok((settings, presign))
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        // toml's message spans several lines with a source excerpt; keep the
        // first line so the CLI error stays one line.
        let msg = e.message().to_owned();
        let at = e
            .span()
            .map(|s| line_of(&text, s.start))
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default();
        anyhow::anyhow!("config {}{at}: {msg}", path.display())
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, o: Overrides) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml_text).unwrap();
        Settings::load(&Overrides {
            config: Some(path),
            ..o
        })
    }

    #[test]
    fn defaults() {
        let s = Settings::load(&Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.backends.data_dir, PathBuf::from("./artifactstore-data"));
        assert_eq!(s.backends.metadata_url, None);
        assert_eq!(s.limits.max_blob_size, 64 << 30);
        assert_eq!(s.classes, shipped_classes());
        assert!(s.auth.is_open());
        assert_eq!(s.sweep_interval, Duration::from_secs(3600));
        assert_eq!(s.gc_interval, Duration::from_secs(6 * 3600));
        assert_eq!(s.gc, GcSettings::default());
        let s = load(
            "[gc]\ninterval = \"10m\"\ngrace = \"0s\"\nupload_expiry = \"2h\"\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.gc_interval, Duration::from_secs(600));
        assert_eq!(s.gc.grace, Duration::ZERO);
        assert_eq!(s.gc.upload_expiry, Duration::from_secs(7200));
        let s = load(
            "[retention]\nsweep_interval = \"30s\"\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.sweep_interval, Duration::from_secs(30));
        assert!(
            load(
                "[retention]\nsweep_interval = \"10ms\"\n",
                Overrides::default()
            )
            .is_err()
        );
    }

    #[test]
    fn tokens() {
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let text = format!(
            "[[tokens]]\nsubject = \"ci-bot\"\nscopes = [\"read\", \"write\"]\nsha256 = \"{hash}\"\n"
        );
        let s = load(&text, Overrides::default()).unwrap();
        assert!(!s.auth.is_open());
        let twice = format!("{text}{text}");
        let err = format!("{:#}", load(&twice, Overrides::default()).unwrap_err());
        assert!(err.contains("same sha256"), "{err}");
    }

    #[test]
    fn defined_classes_replace_the_shipped_set() {
        let text = "[retention.classes.ci-scratch]\ndefault = \"2s\"\n[retention.classes.forever]\npermanent = true\n";
        let s = load(text, Overrides::default()).unwrap();
        assert_eq!(
            s.classes,
            BTreeMap::from([
                ("ci-scratch".to_owned(), ClassRule::Period { seconds: 2 }),
                ("forever".to_owned(), ClassRule::Permanent),
            ])
        );
    }

    #[test]
    fn file_then_flags() {
        let text = "listen = \"127.0.0.1:9000\"\ndata_dir = \"/srv/a\"\n[limits]\nmax_blob_size = \"10 MiB\"\n[blobs]\nbackend = \"fs\"\n";
        let s = load(text, Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(s.backends.data_dir, PathBuf::from("/srv/a"));
        assert_eq!(s.limits.max_blob_size, 10 << 20);
        let s = load(
            text,
            Overrides {
                listen: Some("127.0.0.1:1".into()),
                data_dir: Some("/x".into()),
                config: None,
            },
        )
        .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:1");
        assert_eq!(s.backends.data_dir, PathBuf::from("/x"));
    }

    #[test]
    fn the_scale_out_pair() {
        let text = "[metadata]\nurl = \"postgres://as:secret@db.internal/artifacts\"\n\
                    [blobs]\nbackend = \"s3\"\n[blobs.s3]\nendpoint = \"http://minio:9000\"\n\
                    bucket = \"evidence\"\nprefix = \"prod\"\npart_size = \"32 MiB\"\n\
                    presign_downloads = \"5m\"\n";
        let s = load(text, Overrides::default()).unwrap();
        let BlobsConfig::S3(s3) = &s.backends.blobs else {
            panic!("expected S3, got {:?}", s.backends.blobs);
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str(), s3.region.as_str()),
            ("evidence", "prod", "us-east-1")
        );
        assert_eq!(s3.part_size, 32 << 20);
        assert_eq!(s.presign_downloads, Some(Duration::from_secs(300)));
        let shown = s.describe_store();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.contains("db.internal") && shown.contains("s3://evidence/prod"),
            "{shown}"
        );
    }

    #[test]
    fn a_cold_tier() {
        let text = "[retention.classes.build]\ndefault = \"90d\"\ncold_after = \"30d\"\n\
                    [retention.classes.keep]\npermanent = true\n\
                    [tiering]\ncold = \"s3\"\ninterval = \"10m\"\n\
                    [tiering.s3]\nbucket = \"archive\"\nregion = \"eu-west-1\"\n";
        let s = load(text, Overrides::default()).unwrap();
        let Some(BlobsConfig::S3(cold)) = &s.backends.cold else {
            panic!("expected an S3 cold tier, got {:?}", s.backends.cold);
        };
        assert_eq!(
            (cold.bucket.as_str(), cold.region.as_str()),
            ("archive", "eu-west-1")
        );
        assert_eq!(
            s.cold_after.get("build"),
            Some(&Duration::from_secs(30 * 86_400))
        );
        assert_eq!(s.cold_after.get("keep"), None);
        assert_eq!(s.tier_interval, Duration::from_secs(600));
        let plain = load("", Overrides::default()).unwrap();
        assert_eq!(plain.backends.cold, None);
    }

    #[test]
    fn refusals_are_one_line() {
        for (text, needle) in [
            ("colour = \"blue\"\n", "unknown field `colour`"),
            ("[limits]\nmax_size = 1\n", "unknown field `max_size`"),
            (
                "[limits]\nmax_blob_size = \"3 parsecs\"\n",
                "unknown size unit",
            ),
            ("listen = \"nowhere\"\n", "not host:port"),
            ("[blobs]\nbackend = \"tape\"\n", "not available"),
            ("[gc]\ninterval = \"0s\"\n", "at least 1s"),
            ("[gc]\ngrace = \"a day\"\n", "[gc] grace"),
            ("[gc]\nkeep = \"1d\"\n", "unknown field `keep`"),
            ("[metadata]\nurl = \"mysql://x\"\n", "not supported"),
            ("[blobs]\nbackend = \"s3\"\n", "needs a [blobs.s3] section"),
            (
                "[blobs]\nbackend = \"s3\"\n[blobs.s3]\nregion = \"eu-west-1\"\n",
                "bucket is required",
            ),
            (
                "[blobs]\nbackend = \"s3\"\n[blobs.s3]\nbucket = \"b\"\npart_size = \"1 MiB\"\n",
                "at least 5 MiB",
            ),
            ("[blobs.s3]\nbucket = \"b\"\n", "backend is not \"s3\""),
            (
                "[retention.classes.x]\ndefault = \"1d\"\ncold_after = \"1h\"\n",
                "names no cold tier",
            ),
            ("[tiering]\ncold = \"tape\"\n", "not available"),
            ("[tiering]\ncold = \"s3\"\n", "needs a [tiering.s3] section"),
            (
                "[tiering]\ncold = \"fs\"\ninterval = \"0s\"\n",
                "at least 1s",
            ),
            (
                "[retention.classes.x]\ndefault = \"1d\"\ncold_after = \"soon\"\n[tiering]\ncold = \"fs\"\n",
                "cold_after \"soon\"",
            ),
            (
                "[blobs]\nbackend = \"s3\"\n[blobs.s3]\nbucket = \"b\"\nsecret = \"x\"\n",
                "unknown field `secret`",
            ),
            ("listen = [", "line 1"),
            (
                "[[tokens]]\nsubject = \"ci\"\nscopes = [\"push\"]\nsha256 = \"00\"\n",
                "unknown scope \"push\"",
            ),
            (
                "[[tokens]]\nsubject = \"ci\"\nscopes = [\"read\"]\nsha256 = \"00\"\n",
                "sha256: digest hex must be 64",
            ),
            (
                "[[tokens]]\nsubject = \"ci\"\nscopes = []\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
                "no scopes",
            ),
            (
                "[[tokens]]\nsubject = \"ci\"\nscopes = [\"read\"]\n",
                "missing field `sha256`",
            ),
            (
                "[retention.classes.x]\ndefault = \"soon\"\n",
                "retention class \"x\": invalid duration",
            ),
            (
                "[retention.classes.x]\ndefault = \"1d\"\npermanent = true\n",
                "not both",
            ),
            (
                "[retention.classes.x]\nkeep = \"1d\"\n",
                "unknown field `keep`",
            ),
        ] {
            let err = format!("{:#}", load(text, Overrides::default()).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("64GiB"), Ok(64 << 30));
        assert_eq!(parse_size("5 MB"), Ok(5_000_000));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999 TiB").is_err());
    }
}
