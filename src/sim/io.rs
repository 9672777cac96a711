//! A ledger of the SIMULATED guest's block requests: each must complete exactly once,
//! on the source (drained) or on the destination (handed over and resubmitted).

use std::collections::HashMap;

use parking_lot::Mutex;

/// Where a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoEnd {
    /// Completed on the source before its ring's base was read.
    Source,
    /// Completed on the destination after being handed over.
    Destination,
    /// Completed on the source after the base was read: the guest (now on the
    /// destination) never sees it.
    Lost,
}

/// Counts of a ledger, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IoSummary {
    /// Requests in flight when the guest stopped.
    pub submitted: u64,
    /// Completed exactly once, where the guest sees it.
    pub completed_once: u64,
    /// Completed more than once.
    pub completed_twice: u64,
    /// Completed where the guest no longer runs.
    pub lost: u64,
    /// Never completed.
    pub never: u64,
    /// Of those completed once, how many were handed over.
    pub handed_over: u64,
}

impl IoSummary {
    /// Whether every request completed exactly once where the guest sees it.
    pub fn exact(&self) -> bool {
        self.completed_once == self.submitted && self.completed_twice == 0 && self.lost == 0 && self.never == 0
    }
}

/// The ledger.
#[derive(Debug, Default)]
pub struct IoLedger {
    ends: Mutex<HashMap<u64, Vec<IoEnd>>>,
}

impl IoLedger {
    /// Records a request in flight.
    pub fn submit(&self, id: u64) {
        self.ends.lock().entry(id).or_default();
    }
    /// Records where a request ended.
    pub fn end(&self, id: u64, at: IoEnd) {
        self.ends.lock().entry(id).or_default().push(at);
    }
    /// Counts, as the guest sees them: on the destination, completions there and on
    /// the source before its base was read count, and later source completions are
    /// lost; back on the source (rollback), only the source's completions count.
    pub fn summary(&self, guest_on_destination: bool) -> IoSummary {
        let ends = self.ends.lock();
        let mut s = IoSummary { submitted: ends.len() as u64, ..IoSummary::default() };
        for v in ends.values() {
            let visible = |e: &&IoEnd| match **e {
                IoEnd::Source => true,
                IoEnd::Destination => guest_on_destination,
                IoEnd::Lost => !guest_on_destination,
            };
            let n = v.iter().filter(visible).count();
            if guest_on_destination && v.contains(&IoEnd::Lost) && n == 0 {
                s.lost += 1;
                continue;
            }
            match n {
                0 => s.never += 1,
                1 => {
                    s.completed_once += 1;
                    if guest_on_destination && v.contains(&IoEnd::Destination) {
                        s.handed_over += 1;
                    }
                }
                _ => s.completed_twice += 1,
            }
        }
        s
    }
}
