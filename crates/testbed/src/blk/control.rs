//! The backend's control socket: what a VMM (or the rig) asks the backend
//! process outside vhost-user — its storage state (the equivalent of
//! qemu-storage-daemon's QMP `blockdev-set-active`) and its counters.
//!
//! One command per line, one answer line per command:
//!
//! | command | answer |
//! |---|---|
//! | `inactivate` | `ok` once the image is flushed, writes are refused and its lock is released |
//! | `activate` | `ok` once the image's lock is taken (`error …` if another process holds it) |
//! | `state` | `ok active` or `ok inactive` |
//! | `hold` | `ok`; from now requests wait before their host I/O starts (a stalled disk, for tests) |
//! | `release` | `ok`; held requests go on |
//! | `stats` | `ok popped=N resubmitted=N completed=N cancelled=N discarded=N writes=N reads=N refused=N late_io=N` |
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::blk::control::parse_stats;
//! let s = parse_stats("ok popped=3 resubmitted=1 completed=2 cancelled=0 discarded=0 writes=2 reads=0 refused=0 late_io=0").unwrap();
//! assert_eq!((s.popped, s.resubmitted, s.completed), (3, 1, 2));
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::device::{Device, Stats};
use crate::error::RigError;

/// Serves the control socket at `path` on a thread of its own.
///
/// # Errors
/// The socket cannot be bound.
pub fn serve(path: &Path, dev: Arc<Device>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = crate::dir::bind_private(path)?;
    std::thread::Builder::new().name("blk-control".into()).spawn(move || {
        for s in l.incoming().flatten() {
            let dev = dev.clone();
            let _ = std::thread::Builder::new().name("blk-control-conn".into()).spawn(move || conn(s, &dev));
        }
    })?;
    Ok(())
}

fn conn(s: UnixStream, dev: &Device) {
    let Ok(w) = s.try_clone() else { return };
    let mut w = w;
    for line in BufReader::new(s).lines() {
        let Ok(line) = line else { return };
        let answer = match line.trim() {
            "inactivate" => dev.storage().inactivate().map(|()| "ok".to_string()).unwrap_or_else(|e| format!("error {e}")),
            "activate" => dev.storage().activate().map(|()| "ok".to_string()).unwrap_or_else(|e| format!("error {e}")),
            "hold" => {
                dev.hold(true);
                "ok".to_string()
            }
            "release" => {
                dev.hold(false);
                "ok".to_string()
            }
            "state" => format!("ok {}", if dev.storage().is_active() { "active" } else { "inactive" }),
            "stats" => {
                let s = dev.counters().snapshot();
                format!(
                    "ok popped={} resubmitted={} completed={} cancelled={} discarded={} writes={} reads={} refused={} late_io={}",
                    s.popped, s.resubmitted, s.completed, s.cancelled, s.discarded, s.writes, s.reads, s.refused, s.late_io
                )
            }
            other => format!("error unknown command '{other}'"),
        };
        if writeln!(w, "{answer}").is_err() {
            return;
        }
    }
}

/// Parses a `stats` answer.
pub fn parse_stats(line: &str) -> Option<Stats> {
    let rest = line.strip_prefix("ok ")?;
    let mut s = Stats::default();
    for kv in rest.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "popped" => s.popped = v,
            "resubmitted" => s.resubmitted = v,
            "completed" => s.completed = v,
            "cancelled" => s.cancelled = v,
            "discarded" => s.discarded = v,
            "writes" => s.writes = v,
            "reads" => s.reads = v,
            "refused" => s.refused = v,
            "late_io" => s.late_io = v,
            _ => {}
        }
    }
    Some(s)
}

/// A client of a backend's control socket.
#[derive(Debug, Clone)]
pub struct Control {
    path: PathBuf,
    name: String,
    timeout: Duration,
}

impl Control {
    /// The control socket of the backend `name` at `path` (answers within 10 s).
    pub fn new(name: &str, path: PathBuf) -> Control {
        Control { path, name: name.into(), timeout: Duration::from_secs(10) }
    }

    /// The same, giving up on an answer after `timeout` (a step's deadline: a
    /// stopped backend does not answer).
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover_testbed::blk::Control;
    /// let c = Control::new("blk0", "/nonexistent/ctl.sock".into()).with_timeout(Duration::from_millis(5));
    /// assert!(c.is_active().is_err()); // nobody listens
    /// ```
    pub fn with_timeout(&self, timeout: Duration) -> Control {
        Control { timeout: timeout.max(Duration::from_millis(1)), ..self.clone() }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one command and returns the answer after `ok` (an `error` answer,
    /// or no answer within the timeout, is an error naming the backend).
    ///
    /// # Errors
    /// [`RigError::Process`] with the backend's name and its answer.
    pub fn call(&self, cmd: &str) -> Result<String, RigError> {
        let err = |what: String| RigError::Process { process: format!("{} backend", self.name), what };
        let mut s = UnixStream::connect(&self.path).map_err(|e| err(format!("control socket {}: {e}", self.path.display())))?;
        s.set_read_timeout(Some(self.timeout)).map_err(|e| err(e.to_string()))?;
        s.set_write_timeout(Some(self.timeout)).map_err(|e| err(e.to_string()))?;
        writeln!(s, "{cmd}").map_err(|e| err(format!("{cmd}: {e}")))?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).map_err(|e| err(format!("{cmd}: {e}")))?;
        let line = line.trim();
        match line.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_string()),
            None => Err(err(format!("{cmd}: {line}"))),
        }
    }

    /// Holds host I/O: requests the rings take wait before their I/O starts, as
    /// on a stalled disk (a test's requests are then in flight at the stop).
    ///
    /// # Errors
    /// As [`Control::call`].
    pub fn hold(&self) -> Result<(), RigError> {
        self.call("hold").map(|_| ())
    }

    /// Lets held host I/O go on.
    ///
    /// # Errors
    /// As [`Control::call`].
    pub fn release(&self) -> Result<(), RigError> {
        self.call("release").map(|_| ())
    }

    /// Flushes the image, refuses writes and releases its lock.
    ///
    /// # Errors
    /// As [`Control::call`].
    pub fn inactivate(&self) -> Result<(), RigError> {
        self.call("inactivate").map(|_| ())
    }

    /// Takes the image's lock and accepts writes.
    ///
    /// # Errors
    /// As [`Control::call`]; another process holds the image.
    pub fn activate(&self) -> Result<(), RigError> {
        self.call("activate").map(|_| ())
    }

    /// Whether the image is active.
    ///
    /// # Errors
    /// As [`Control::call`].
    pub fn is_active(&self) -> Result<bool, RigError> {
        Ok(self.call("state")? == "active")
    }

    /// The backend's counters.
    ///
    /// # Errors
    /// As [`Control::call`], or an answer that does not parse.
    pub fn stats(&self) -> Result<Stats, RigError> {
        let a = self.call("stats")?;
        parse_stats(&format!("ok {a}"))
            .ok_or_else(|| RigError::Process { process: format!("{} backend", self.name), what: format!("stats: '{a}'") })
    }
}
