//! The topology file format (TOML): what `--topology FILE` reads. Unknown keys
//! are refused; a device entry names its kind and, by kind, its queues or its
//! steps (see `docs/integrating.md` for the format).
//!
//! ```toml
//! name = "my-vm"
//! [[device]]
//! kind = "net"
//! count = 2
//! queue_pairs = 4
//! [[device]]
//! kind = "generic"
//! name = "vfio"
//! [[device.step]]
//! name = "save"
//! side = "source"
//! window = "blackout"
//! affinity = "caller"
//! big_lock = true
//! ```
//!
//! A step of a VMM-defined kind may name the step that undoes it when the
//! switchover rolls back (`undo`), declared with `rollback_only = true` on the
//! same side: a rollback runs the undo steps of the steps that ran, in reverse
//! dependency order (the undo of a later step first), the guest still frozen.
//!
//! | key | where | meaning |
//! |---|---|---|
//! | `undo` | step, optional | the name of a `rollback_only` step of the same side that undoes this one |
//! | `rollback_only` | step, optional | `true`: an undo step, run only by a rollback (source) or the destination's fence; it takes no `window`, `after` or `undo` |
//!
//! ```toml
//! [[device]]
//! kind = "generic"
//! name = "vfio"
//!   [[device.step]]
//!   name = "quiesce"           # stops the device's DMA in the window
//!   side = "source"
//!   window = "blackout"
//!   undo = "unquiesce"
//!   [[device.step]]
//!   name = "unquiesce"         # resumes it if the switchover rolls back
//!   side = "source"
//!   rollback_only = true
//! ```
//!
//! Errors name the device group and the step: an `undo` that names no
//! `rollback_only` step of the same side, a `rollback_only` step with a `window`,
//! `after` or `undo`.
//!
//! # Examples
//!
//! ```
//! use switchover_cli::topology_file::from_toml_str;
//! let t = from_toml_str("[[device]]\nkind = \"blk\"\ncount = 2\nqueues = 4\n", "inline").unwrap();
//! assert_eq!(t.devices().len(), 2);
//! assert!(from_toml_str("[[device]]\nkind = \"blk\"\nqueues = 0\n", "x").is_err());
//! assert!(from_toml_str("[[device]]\nkind = \"blk\"\nqeues = 1\n", "x").is_err());
//! assert!(from_toml_str("[[device]]\nkind = \"net\"\ncount = 4000000000\n", "x").is_err());
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use switchover::ids::{Affinity, Side, Window};
use switchover::topology::{GenericStep, Topology, TopologyError};

/// A topology file that cannot be used.
///
/// ```
/// use switchover_cli::topology_file::{from_toml_file, TopologyFileError};
/// let e = from_toml_file(std::path::Path::new("/nonexistent.toml")).unwrap_err();
/// assert!(matches!(e, TopologyFileError::Read { .. }));
/// assert!(std::error::Error::source(&e).is_some());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyFileError {
    /// The file could not be read.
    #[error("cannot read topology file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("bad topology file {path}: {}", one_line(&source.to_string()))]
    Parse {
        /// The path.
        path: String,
        /// What the parser said, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// The topology it describes is invalid.
    #[error("{path}: {source}")]
    Invalid {
        /// The path.
        path: String,
        /// What is wrong.
        #[source]
        source: TopologyError,
    },
}

/// Parses a topology from TOML text; `origin` names it in errors.
///
/// # Errors
/// [`TopologyFileError::Parse`] for malformed TOML or unknown keys,
/// [`TopologyFileError::Invalid`] for zero queues, unknown kinds and the like.
pub fn from_toml_str(text: &str, origin: &str) -> Result<Topology, TopologyFileError> {
    let file: TomlFile = toml::from_str(text).map_err(|source| TopologyFileError::Parse { path: origin.into(), source })?;
    build(file, origin).map_err(|source| TopologyFileError::Invalid { path: origin.into(), source })
}

/// Reads a topology from a TOML file.
///
/// # Errors
/// [`TopologyFileError::Read`] if the file cannot be read, else as [`from_toml_str`].
pub fn from_toml_file(path: &Path) -> Result<Topology, TopologyFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TopologyFileError::Read { path: shown.clone(), source })?;
    from_toml_str(&text, &shown)
}

fn build(file: TomlFile, origin: &str) -> Result<Topology, TopologyError> {
    let mut b = Topology::builder().name(file.name.as_deref().unwrap_or(origin));
    for (i, d) in file.device.into_iter().enumerate() {
        let group = format!("#{} in {origin}", i + 1);
        let count = d.count.unwrap_or(1);
        match d.kind.as_str() {
            "net" => {
                reject_extra(&group, &d, &["queues", "name", "step"])?;
                b = b.net(count, d.queue_pairs.unwrap_or(1));
            }
            "blk" => {
                reject_extra(&group, &d, &["queue_pairs", "name", "step"])?;
                b = b.blk(count, d.queues.unwrap_or(1));
            }
            "generic" => {
                reject_extra(&group, &d, &["queues", "queue_pairs"])?;
                let name = d.name.clone().ok_or_else(|| TopologyError::Invalid {
                    device: group.clone(),
                    reason: "a generic device needs `name` (its kind name)".into(),
                })?;
                let steps = d.step.iter().map(|s| s.to_step(&group)).collect::<Result<Vec<_>, _>>()?;
                b = b.generic(count, &name, steps);
            }
            other => {
                return Err(TopologyError::Invalid {
                    device: group,
                    reason: format!("unknown kind '{other}' (expected net, blk or generic)"),
                })
            }
        }
    }
    b.build()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    name: Option<String>,
    #[serde(default)]
    device: Vec<TomlDevice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlDevice {
    kind: String,
    count: Option<u32>,
    queues: Option<u32>,
    queue_pairs: Option<u32>,
    name: Option<String>,
    #[serde(default)]
    step: Vec<TomlStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlStep {
    name: String,
    side: String,
    window: Option<String>,
    #[serde(default)]
    after: Vec<String>,
    affinity: Option<String>,
    cost_ms: Option<f64>,
    #[serde(default)]
    big_lock: bool,
    undo: Option<String>,
    #[serde(default)]
    rollback_only: bool,
}

impl TomlStep {
    fn to_step(&self, group: &str) -> Result<GenericStep, TopologyError> {
        let bad = |what: &str, v: &str| TopologyError::Invalid {
            device: group.into(),
            reason: format!("step '{}': unknown {what} '{v}'", self.name),
        };
        let side = match self.side.as_str() {
            "source" => Side::Source,
            "destination" => Side::Destination,
            v => return Err(bad("side", v)),
        };
        let invalid = |reason: String| TopologyError::Invalid { device: group.into(), reason: format!("step '{}': {reason}", self.name) };
        let window = match (self.window.as_deref(), self.rollback_only) {
            (Some(w), true) => return Err(invalid(format!("a rollback_only step runs in the rollback, not in window '{w}'"))),
            (None, true) => Window::Blackout,
            (None, false) => return Err(invalid("missing field `window`".into())),
            (Some("prepare"), false) => Window::Prepare,
            (Some("blackout"), false) => Window::Blackout,
            (Some("cleanup"), false) => Window::Cleanup,
            (Some(v), false) => return Err(bad("window", v)),
        };
        let affinity = match self.affinity.as_deref().unwrap_or("any") {
            "any" => Affinity::Any,
            "caller" => Affinity::Caller,
            v => return Err(bad("affinity", v)),
        };
        let ms = self.cost_ms.unwrap_or(0.0);
        if !(0.0..=600_000.0).contains(&ms) {
            return Err(TopologyError::Invalid {
                device: group.into(),
                reason: format!("step '{}': cost_ms {ms} out of range", self.name),
            });
        }
        let mut s =
            if self.rollback_only { GenericStep::rollback_only(&self.name, side) } else { GenericStep::new(&self.name, side, window) };
        s = s.affinity(affinity).cost(Duration::from_secs_f64(ms / 1000.0));
        s.after = self.after.clone();
        s.big_lock = self.big_lock;
        s.undo = self.undo.clone();
        Ok(s)
    }
}

fn reject_extra(group: &str, d: &TomlDevice, not_for_kind: &[&str]) -> Result<(), TopologyError> {
    let present = [
        ("queues", d.queues.is_some()),
        ("queue_pairs", d.queue_pairs.is_some()),
        ("name", d.name.is_some()),
        ("step", !d.step.is_empty()),
    ];
    for (key, is) in present {
        if is && not_for_kind.contains(&key) {
            return Err(TopologyError::Invalid {
                device: group.into(),
                reason: format!("key '{key}' does not apply to kind '{}'", d.kind),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generic_step_declares_its_big_lock() {
        let text = "[[device]]\nkind = \"generic\"\nname = \"vbd\"\n[[device.step]]\nname = \"publish\"\nside = \"source\"\nwindow = \"blackout\"\naffinity = \"caller\"\nbig_lock = true\n";
        let t = from_toml_str(text, "t").unwrap();
        assert!(t.devices()[0].steps[0].big_lock);
    }

    const VFIO: &str = "[[device]]\nkind = \"generic\"\nname = \"vfio\"\n[[device.step]]\nname = \"quiesce\"\nside = \"source\"\nwindow = \"blackout\"\nundo = \"unquiesce\"\n";

    #[test]
    fn a_step_declares_its_undo_step() {
        let text = format!("{VFIO}[[device.step]]\nname = \"unquiesce\"\nside = \"source\"\nrollback_only = true\ncost_ms = 0.5\n");
        let t = from_toml_str(&text, "t").unwrap();
        let steps = &t.devices()[0].steps;
        assert_eq!(steps[0].undo.as_deref(), Some("unquiesce"));
        assert!(steps[1].rollback_only && steps[1].undo.is_none());
        assert_eq!(steps[1].cost, Duration::from_micros(500));
    }

    #[test]
    fn undo_mistakes_name_the_device_and_the_step() {
        let err = |text: &str| from_toml_str(text, "t").unwrap_err().to_string();
        // No such undo step.
        let e = err(VFIO);
        assert!(e.contains("vfio0") && e.contains("'quiesce'") && e.contains("unquiesce"), "{e}");
        // An undo step of the other side.
        let e = err(&format!("{VFIO}[[device.step]]\nname = \"unquiesce\"\nside = \"destination\"\nrollback_only = true\n"));
        assert!(e.contains("'quiesce'") && e.contains("not an undo step"), "{e}");
        // A step that is not rollback-only.
        let e = err(&format!("{VFIO}[[device.step]]\nname = \"unquiesce\"\nside = \"source\"\nwindow = \"cleanup\"\n"));
        assert!(e.contains("not an undo step"), "{e}");
        // A rollback-only step in a window, waiting, or undone itself.
        let base = "[[device]]\nkind = \"generic\"\nname = \"fs\"\n[[device.step]]\nname = \"pause\"\nside = \"source\"\nwindow = \"blackout\"\n[[device.step]]\nname = \"unpause\"\nside = \"source\"\nrollback_only = true\n";
        let e = err(&format!("{base}window = \"blackout\"\n"));
        assert!(e.contains("'unpause'") && e.contains("rollback_only"), "{e}");
        let e = err(&format!("{base}after = [\"pause\"]\n"));
        assert!(e.contains("'unpause'"), "{e}");
        // A step without a window that is not rollback-only.
        let e = err("[[device]]\nkind = \"generic\"\nname = \"fs\"\n[[device.step]]\nname = \"pause\"\nside = \"source\"\n");
        assert!(e.contains("'pause'") && e.contains("window"), "{e}");
        // An unknown key is still refused.
        let e = err("[[device]]\nkind = \"generic\"\nname = \"fs\"\n[[device.step]]\nname = \"pause\"\nside = \"source\"\nwindow = \"blackout\"\nundoes = \"x\"\n");
        assert!(e.contains("unknown field `undoes`"), "{e}");
    }

    #[test]
    fn a_vm_without_nets_is_a_topology() {
        let t = from_toml_str("[[device]]\nkind = \"net\"\ncount = 0\n[[device]]\nkind = \"blk\"\nqueues = 2\n", "t").unwrap();
        assert_eq!(t.devices().len(), 1);
        assert!(matches!(from_toml_str("[[device]]\nkind = \"net\"\ncount = 0\n", "t"), Err(TopologyFileError::Invalid { .. })));
    }
}
