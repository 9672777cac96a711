//! A ledger of the SIMULATED guest's block requests: each must complete exactly once,
//! on the source (drained) or on the destination (handed over and resubmitted).

use std::collections::HashMap;

use parking_lot::Mutex;
use switchover_baseline::IoSummary;

/// Where a request ended.
///
/// ```
/// use switchover_sim::{IoEnd, IoLedger};
/// let l = IoLedger::default();
/// l.submit(1);
/// l.end(1, IoEnd::Lost); // completed on the source after its base was read
/// let s = l.summary(true);
/// assert_eq!((s.lost, s.completed_once), (1, 0));
/// assert!(!s.exact());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEnd {
    /// Completed on the source before its ring's base was read.
    Source,
    /// Completed on the destination after being handed over.
    Destination,
    /// Completed on the source after the base was read: the guest (now on the
    /// destination) never sees it.
    Lost,
}

/// The ledger.
///
/// ```
/// use switchover_sim::{IoEnd, IoLedger};
/// let l = IoLedger::default();
/// l.submit(1);
/// l.end(1, IoEnd::Destination);
/// // Handed over and resubmitted: it counts if the guest runs on the destination…
/// assert!(l.summary(true).exact());
/// // …and is missing if the guest resumed on the source.
/// assert_eq!(l.summary(false).never, 1);
/// ```
#[derive(Debug, Default)]
pub struct IoLedger {
    ends: Mutex<HashMap<u64, Vec<IoEnd>>>,
}

impl IoLedger {
    /// Records a request in flight.
    ///
    /// ```
    /// use switchover_sim::IoLedger;
    /// let l = IoLedger::default();
    /// l.submit(1);
    /// l.submit(1); // the same request once
    /// assert_eq!(l.summary(false).submitted, 1);
    /// ```
    pub fn submit(&self, id: u64) {
        self.ends.lock().entry(id).or_default();
    }
    /// Records where a request ended.
    ///
    /// ```
    /// use switchover_sim::{IoEnd, IoLedger};
    /// let l = IoLedger::default();
    /// l.submit(1);
    /// l.end(1, IoEnd::Source);
    /// assert_eq!(l.summary(false).completed_once, 1);
    /// ```
    pub fn end(&self, id: u64, at: IoEnd) {
        self.ends.lock().entry(id).or_default().push(at);
    }
    /// Counts, as the guest sees them: on the destination, completions there and on
    /// the source before its base was read count, and later source completions are
    /// lost; back on the source (rollback), only the source's completions count.
    ///
    /// ```
    /// use switchover_sim::{IoEnd, IoLedger};
    /// let l = IoLedger::default();
    /// l.submit(1);
    /// l.end(1, IoEnd::Lost);
    /// // Lost to a guest on the destination, but seen by a guest back on the source.
    /// assert_eq!(l.summary(true).lost, 1);
    /// assert!(l.summary(false).exact());
    /// ```
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
