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
    window: String,
    #[serde(default)]
    after: Vec<String>,
    affinity: Option<String>,
    cost_ms: Option<f64>,
    #[serde(default)]
    big_lock: bool,
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
        let window = match self.window.as_str() {
            "prepare" => Window::Prepare,
            "blackout" => Window::Blackout,
            "cleanup" => Window::Cleanup,
            v => return Err(bad("window", v)),
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
        let mut s = GenericStep::new(&self.name, side, window).affinity(affinity).cost(Duration::from_secs_f64(ms / 1000.0));
        s.after = self.after.clone();
        s.big_lock = self.big_lock;
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

    #[test]
    fn a_vm_without_nets_is_a_topology() {
        let t = from_toml_str("[[device]]\nkind = \"net\"\ncount = 0\n[[device]]\nkind = \"blk\"\nqueues = 2\n", "t").unwrap();
        assert_eq!(t.devices().len(), 1);
        assert!(matches!(from_toml_str("[[device]]\nkind = \"net\"\ncount = 0\n", "t"), Err(TopologyFileError::Invalid { .. })));
    }
}
