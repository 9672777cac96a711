//! Helpers shared by the benchmarks: run mode, where summaries go, and a small
//! summary table that each benchmark prints (and saves) at the end of its run, so
//! every ratio it states comes from figures measured side by side in that run.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Whether criterion runs in `--test` mode (each benchmark once, no statistics).
pub fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Whether criterion only lists the benchmarks.
pub fn list_mode() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// The target directory this benchmark was built in: the nearest ancestor of its
/// executable that holds cargo's `CACHEDIR.TAG` (cargo runs a benchmark in its
/// package's directory, `benches/`, so a relative `target` would be the wrong one),
/// else `$CARGO_TARGET_DIR`, else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    let built_in =
        std::env::current_exe().ok().and_then(|exe| exe.ancestors().find(|d| d.join("CACHEDIR.TAG").is_file()).map(PathBuf::from));
    let workspace =
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("target"), |w| w.join("target"));
    built_in.or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from)).unwrap_or_else(workspace)
}

/// `<target dir>/criterion/summary` (beside criterion's own reports), created.
pub fn summary_dir() -> PathBuf {
    let dir = target_dir().join("criterion").join("summary");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Writes `text` to `summary_dir()/name`, unless in `--test` mode (a quick test run
/// must not overwrite the figures of a real run). Returns the path written.
pub fn save(name: &str, text: &str) -> Option<PathBuf> {
    if test_mode() || list_mode() {
        return None;
    }
    let p = summary_dir().join(name);
    match std::fs::write(&p, text) {
        Ok(()) => Some(p),
        Err(e) => {
            eprintln!("could not write {}: {e}", p.display());
            None
        }
    }
}

/// Observations of one (group, function, parameter).
type Row = (String, String, String, Vec<f64>);

/// Measurements collected while criterion runs, keyed by (group, function, parameter).
#[derive(Default)]
pub struct Samples {
    rows: Mutex<Vec<Row>>,
}

impl Samples {
    pub const fn new() -> Self {
        Samples { rows: Mutex::new(Vec::new()) }
    }

    /// Adds one observation (any unit; the caller knows which).
    pub fn add(&self, group: &str, function: &str, param: &str, value: f64) {
        let mut rows = self.rows.lock().unwrap();
        match rows.iter_mut().find(|r| r.0 == group && r.1 == function && r.2 == param) {
            Some(r) => r.3.push(value),
            None => rows.push((group.into(), function.into(), param.into(), vec![value])),
        }
    }

    /// Median of the observations, if any.
    pub fn median(&self, group: &str, function: &str, param: &str) -> Option<f64> {
        let rows = self.rows.lock().unwrap();
        let r = rows.iter().find(|r| r.0 == group && r.1 == function && r.2 == param)?;
        median(&r.3)
    }

    /// Every observation, in the order added.
    pub fn values(&self, group: &str, function: &str, param: &str) -> Vec<f64> {
        let rows = self.rows.lock().unwrap();
        rows.iter().find(|r| r.0 == group && r.1 == function && r.2 == param).map_or(Vec::new(), |r| r.3.clone())
    }

    /// Number of observations.
    pub fn count(&self, group: &str, function: &str, param: &str) -> usize {
        let rows = self.rows.lock().unwrap();
        rows.iter().find(|r| r.0 == group && r.1 == function && r.2 == param).map_or(0, |r| r.3.len())
    }
}

/// Median of `v` (None if empty).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One line describing the machine: core count and CPU model.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

/// A markdown table from a header and rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(s, "|{}", header.iter().map(|_| "---|").collect::<String>());
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}
