//! Each own backend's record of when its rings started and stopped, kept by the
//! backend process itself: one line per event (`start RING NS` or `stop RING NS`,
//! `NS` the host's `CLOCK_MONOTONIC` in nanoseconds) appended to a file the rig
//! names. The file outlives the process, so what a killed backend did before it
//! died is still there; the rig reads it afterwards and compares the times with
//! its own (a destination that says it will not run the guest must have no ring
//! live by then).
//!
//! * start: the ring was started (its kick set and the ring set up); from then on
//!   the backend may take requests from it;
//! * stop: `GET_VRING_BASE` stopped it; the backend takes nothing more from it and
//!   nothing it took has an effect to come (recorded before the reply is sent).
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::dir::PrivateDir;
//! use switchover_testbed::ringlog::{live_at, read, RingLog};
//! let dir = PrivateDir::new().unwrap();
//! let path = dir.join("dst-blk0.rings");
//! let log = RingLog::create(&path).unwrap();
//! log.start(0);
//! log.start(1);
//! let mid = switchover_testbed::ringlog::mono_ns();
//! log.stop(0);
//! let events = read(&path);
//! assert_eq!(events.len(), 3);
//! assert_eq!(live_at(&events, mid), vec![0, 1]);
//! assert_eq!(live_at(&events, u64::MAX), vec![1]); // ring 1 never stopped
//! ```

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::Mutex;

/// The host's `CLOCK_MONOTONIC`, in nanoseconds: one clock for every process.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An `Instant` of this process on the host's `CLOCK_MONOTONIC` (nanoseconds),
/// within a few microseconds: both clocks advance together, and their offset is
/// taken once.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchover_testbed::ringlog::{instant_ns, mono_ns};
/// let before = mono_ns();
/// let t = Instant::now();
/// let after = mono_ns();
/// let x = instant_ns(t);
/// assert!(x + 1_000_000 >= before && x <= after + 1_000_000);
/// assert_eq!(instant_ns(t + Duration::from_millis(3)) - x, 3_000_000);
/// ```
pub fn instant_ns(t: Instant) -> u64 {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    let &(i0, m0) = BASE.get_or_init(|| (Instant::now(), mono_ns()));
    if t >= i0 {
        m0 + (t - i0).as_nanos() as u64
    } else {
        m0.saturating_sub((i0 - t).as_nanos() as u64)
    }
}

/// A backend's ring log (the writing end).
#[derive(Debug)]
pub struct RingLog(Mutex<File>);

impl RingLog {
    /// Creates (or appends to) the log at `path`.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn create(path: &Path) -> std::io::Result<RingLog> {
        Ok(RingLog(Mutex::new(File::options().append(true).create(true).open(path)?)))
    }
    fn record(&self, what: &str, ring: u32) {
        let line = format!("{what} {ring} {}\n", mono_ns());
        let _ = self.0.lock().write_all(line.as_bytes());
    }
    /// Ring `ring` started.
    pub fn start(&self, ring: u32) {
        self.record("start", ring);
    }
    /// Ring `ring` stopped.
    pub fn stop(&self, ring: u32) {
        self.record("stop", ring);
    }
}

/// One event of a ring log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingEvent {
    /// The ring.
    pub ring: u32,
    /// Started (`true`) or stopped.
    pub start: bool,
    /// When, on `CLOCK_MONOTONIC` (ns).
    pub at_ns: u64,
}

/// The events of the log at `path`, in the order they were written (none if it
/// does not exist; a torn last line is ignored).
pub fn read(path: &Path) -> Vec<RingEvent> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let start = match it.next()? {
                "start" => true,
                "stop" => false,
                _ => return None,
            };
            Some(RingEvent { ring: it.next()?.parse().ok()?, start, at_ns: it.next()?.parse().ok()? })
        })
        .collect()
}

/// The rings live at `t_ns`: started, and not stopped since, by then.
pub fn live_at(events: &[RingEvent], t_ns: u64) -> Vec<u32> {
    let mut live: Vec<u32> = Vec::new();
    for e in events.iter().filter(|e| e.at_ns <= t_ns) {
        live.retain(|r| *r != e.ring);
        if e.start {
            live.push(e.ring);
        }
    }
    live.sort_unstable();
    live
}
