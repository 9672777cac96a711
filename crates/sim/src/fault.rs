//! Faults injected into simulated (and, later, real) components on purpose.

use std::fmt;
use std::str::FromStr;

use switchover::step::StepKind;

/// What goes wrong.
///
/// ```
/// use switchover_sim::{Fault, FaultKind};
/// let kinds: Vec<FaultKind> = ["error:get_vring_base:net0", "hang:set_mem_table:blk1", "crash:vring_disable:net2"]
///     .iter()
///     .map(|s| s.parse::<Fault>().unwrap().kind)
///     .collect();
/// assert_eq!(kinds, [FaultKind::Error, FaultKind::Hang, FaultKind::Crash]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The backend answers the request with an error.
    Error,
    /// The backend never answers.
    Hang,
    /// The backend process dies: its channel closes, queued requests are lost.
    Crash,
}

/// A fault: `KIND:STEP:DEVICE[:RING]`, e.g. `crash:get_vring_base:net3`.
///
/// ```
/// use switchover_sim::{Fault, FaultKind};
/// let f: Fault = "crash:get_vring_base:net3".parse().unwrap();
/// assert_eq!(f.kind, FaultKind::Crash);
/// assert_eq!(f.device, "net3");
/// assert!("melt:get_vring_base:net3".parse::<Fault>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What goes wrong.
    pub kind: FaultKind,
    /// At which step kind.
    pub step: StepKind,
    /// On which device (by name).
    pub device: String,
    /// On which ring (`None`: the first ring that performs the step).
    pub ring: Option<u32>,
}

/// A malformed `--inject` value.
///
/// ```
/// use switchover_sim::{Fault, FaultParseError};
/// let e: FaultParseError = "crash:get_vring_base".parse::<Fault>().unwrap_err();
/// assert_eq!(e.input, "crash:get_vring_base");
/// assert_eq!(e.reason, "wrong number of fields");
/// assert!("crash:get_vring_base:net0:x".parse::<Fault>().unwrap_err().reason.contains("bad ring"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad fault '{input}': {reason} (expected KIND:STEP:DEVICE[:RING], KIND one of error, hang, crash)")]
pub struct FaultParseError {
    /// What was given.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

impl FromStr for Fault {
    type Err = FaultParseError;
    fn from_str(s: &str) -> Result<Fault, FaultParseError> {
        let err = |reason: String| FaultParseError { input: s.into(), reason };
        let parts: Vec<&str> = s.split(':').collect();
        if !(3..=4).contains(&parts.len()) {
            return Err(err("wrong number of fields".into()));
        }
        let kind = match parts[0] {
            "error" => FaultKind::Error,
            "hang" => FaultKind::Hang,
            "crash" => FaultKind::Crash,
            k => return Err(err(format!("unknown kind '{k}'"))),
        };
        let step = StepKind::parse(parts[1]).ok_or_else(|| err(format!("unknown step '{}'", parts[1])))?;
        if parts[2].is_empty() {
            return Err(err("empty device".into()));
        }
        let ring = match parts.get(3) {
            Some(r) => Some(r.parse::<u32>().map_err(|_| err(format!("bad ring '{r}'")))?),
            None => None,
        };
        Ok(Fault { kind, step, device: parts[2].into(), ring })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            FaultKind::Error => "error",
            FaultKind::Hang => "hang",
            FaultKind::Crash => "crash",
        };
        write!(f, "{k}:{}:{}", self.step, self.device)?;
        if let Some(r) = self.ring {
            write!(f, ":{r}")?;
        }
        Ok(())
    }
}
