//! The table the harness prints, and the machine it ran on.

use std::fmt::Write as _;

/// Peak RSS every scenario must stay under.
const RSS_LIMIT_KIB: u64 = 100 * 1024;

/// A measured quantity and its unit; `higher_is_better` says which way a
/// ratio points (rates up, durations down).
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) higher_is_better: bool,
}

impl Figure {
    pub(crate) fn rate(value: f64, unit: &'static str) -> Figure {
        Figure {
            value,
            unit,
            higher_is_better: true,
        }
    }

    pub(crate) fn seconds(value: f64) -> Figure {
        Figure {
            value,
            unit: "s",
            higher_is_better: false,
        }
    }

    fn show(&self) -> String {
        let v = self.value;
        let digits = if v >= 100.0 {
            0
        } else if v >= 10.0 {
            1
        } else {
            2
        };
        format!("{v:.digits$} {}", self.unit)
    }
}

/// What a row must reach. The ratio is always "ours against the baseline",
/// above 1 when ours is better.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// Informational row.
    None,
    Ratio(f64),
    /// An absolute floor (rates) or ceiling (durations) on our figure.
    Absolute(f64),
}

#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) ours: Figure,
    pub(crate) baseline_name: String,
    pub(crate) baseline: Figure,
    pub(crate) target: Target,
    pub(crate) rss_kib: Option<u64>,
}

impl Row {
    pub(crate) fn ratio(&self) -> f64 {
        if self.ours.higher_is_better {
            self.ours.value / self.baseline.value
        } else {
            self.baseline.value / self.ours.value
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::None => "–".into(),
            Target::Ratio(r) => format!("ratio ≥ {r}"),
            Target::Absolute(v) if self.ours.higher_is_better => {
                format!("≥ {v} {}", self.ours.unit)
            }
            Target::Absolute(v) => format!("≤ {v} {}", self.ours.unit),
        }
    }

    /// Whether the target and the memory ceiling are met.
    pub(crate) fn met(&self) -> bool {
        let target = match self.target {
            Target::None => true,
            Target::Ratio(r) => self.ratio() >= r,
            Target::Absolute(v) if self.ours.higher_is_better => self.ours.value >= v,
            Target::Absolute(v) => self.ours.value <= v,
        };
        target && self.rss_kib.is_none_or(|k| k <= RSS_LIMIT_KIB)
    }

    fn cells(&self) -> [String; 7] {
        [
            self.scenario.clone(),
            self.ours.show(),
            format!("{}: {}", self.baseline_name, self.baseline.show()),
            format!("{:.2}", self.ratio()),
            self.target_text(),
            self.rss_kib
                .map_or("–".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0)),
            if self.met() { "yes" } else { "NO" }.into(),
        ]
    }
}

const HEADER: [&str; 7] = [
    "scenario",
    "ours",
    "baseline (same run)",
    "ratio",
    "target",
    "server peak RSS",
    "met",
];

#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Row>,
}

impl Table {
    pub(crate) fn new() -> Table {
        Table::default()
    }

    /// Adds a row and prints it at once, so a long run shows progress.
    pub(crate) fn push(&mut self, row: Row) {
        let cells = row.cells();
        println!(
            "{:<44} {:>16}  {:<40} {:>6}  {:<14} {:>8}  {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        );
        self.rows.push(row);
    }

    pub(crate) fn markdown(&self) -> String {
        let mut out = format!("| {} |\n", HEADER.join(" | "));
        out.push_str("|---|---:|---:|---:|---|---:|---|\n");
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.cells().join(" | "));
        }
        out
    }
}

/// Cores, CPU model and the flags that decide hashing speed, kernel, and
/// the filesystem the work directory is on.
pub(crate) fn machine(work: &std::path::Path) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default();
    let has: Vec<&str> = ["sha_ni", "avx2", "avx512f"]
        .into_iter()
        .filter(|f| flags.contains(f))
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let fs = filesystem_of(work).unwrap_or_else(|| "unknown filesystem".into());
    format!(
        "machine: {cores} cores, {model}, flags: {}; kernel {}; work dir on {fs}",
        if has.is_empty() {
            "none of sha_ni/avx2/avx512f".into()
        } else {
            has.join(" ")
        },
        kernel.trim()
    )
}

/// The type of the filesystem holding `path`, from /proc/mounts (the
/// longest mount point that is a prefix of it).
fn filesystem_of(path: &std::path::Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, point, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(point)
                .then(|| (point.len(), format!("{kind} ({dev})")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}
