//! One side's SIMULATED KVM: ioeventfds and irqfds behind exactly-once transitions.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::clock::sleep_until;
use super::profile::KvmModel;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use switchover::error::StepFailure;
use switchover::ids::DeviceId;
use switchover::notifier::{Notifier, NotifierState, Refused};
use switchover::topology::Topology;

/// What a notifier step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierOutcome {
    /// This step won the transition and issued the ioctl.
    Issued,
    /// Another step had already made (or was making) the change; nothing issued.
    Refused(Refused),
}

struct Ring {
    host: Notifier,
    guest: Notifier,
    host_ioctls: AtomicU32,
    guest_ioctls: AtomicU32,
}

/// A simulated VM's notifiers.
///
/// ```
/// use std::time::Duration;
/// use switchover::notifier::NotifierState;
/// use switchover_sim::{KvmModel, SimVm};
/// use switchover::ids::DeviceId;
/// use switchover::topology::Topology;
/// let vm = SimVm::new(&Topology::preset("small").unwrap(), true, KvmModel::Rfc, Duration::ZERO);
/// vm.change(DeviceId(0), 0, true, false, Duration::ZERO).unwrap();
/// vm.change(DeviceId(0), 0, true, false, Duration::ZERO).unwrap(); // refused: already disabled
/// assert_eq!(vm.ioctls(DeviceId(0), 0, true), 1);
/// assert_eq!(vm.state(DeviceId(0), 0, true), Some(NotifierState::Disabled));
/// ```
pub struct SimVm {
    model: KvmModel,
    grace: Duration,
    rings: Vec<Vec<Ring>>,
    /// The per-VM ioeventfd lock, holding the time of the last register.
    ioeventfd: Mutex<Option<Instant>>,
    txn_open: Mutex<bool>,
    txn_commits: AtomicU64,
    changes_since_begin: AtomicU64,
    changes_committed: AtomicU64,
}

impl std::fmt::Debug for SimVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimVm").field("model", &self.model).finish()
    }
}

impl SimVm {
    /// A VM for `t` whose notifiers all start `enabled` (source) or disabled (destination).
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::notifier::NotifierState;
    /// use switchover_sim::{KvmModel, SimVm};
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let vm = SimVm::new(&Topology::preset("small").unwrap(), false, KvmModel::Rfc, Duration::ZERO);
    /// assert_eq!(vm.state(DeviceId(3), 0, false), Some(NotifierState::Disabled));
    /// assert_eq!(vm.state(DeviceId(3), 1, false), None); // blk1 has one ring
    /// assert_eq!(vm.transactions(), (0, 0));
    /// ```
    pub fn new(t: &Topology, enabled: bool, model: KvmModel, grace: Duration) -> SimVm {
        let st = if enabled { NotifierState::Enabled } else { NotifierState::Disabled };
        let rings = t
            .devices()
            .iter()
            .map(|d| {
                (0..d.rings())
                    .map(|_| Ring {
                        host: Notifier::new(st),
                        guest: Notifier::new(st),
                        host_ioctls: AtomicU32::new(0),
                        guest_ioctls: AtomicU32::new(0),
                    })
                    .collect()
            })
            .collect();
        SimVm {
            model,
            grace,
            rings,
            ioeventfd: Mutex::new(None),
            txn_open: Mutex::new(false),
            txn_commits: AtomicU64::new(0),
            changes_since_begin: AtomicU64::new(0),
            changes_committed: AtomicU64::new(0),
        }
    }

    fn ring(&self, d: DeviceId, r: u32) -> Result<&Ring, StepFailure> {
        self.rings
            .get(d.0 as usize)
            .and_then(|v| v.get(r as usize))
            .ok_or_else(|| StepFailure::MissingState { what: format!("no notifier for ring {r}") })
    }

    /// Changes a ring's host (ioeventfd) or guest (irqfd) notifier; `cost` is the
    /// simulated ioctl time, spent on the calling lane.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use switchover_sim::{KvmModel, SimVm};
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let vm = SimVm::new(&Topology::preset("small").unwrap(), false, KvmModel::Rfc, Duration::ZERO);
    /// let t0 = Instant::now();
    /// vm.change(DeviceId(0), 2, false, true, Duration::from_millis(2)).unwrap();
    /// assert!(t0.elapsed() >= Duration::from_millis(2)); // the ioctl's time is spent on the calling lane
    /// assert_eq!(vm.ioctls(DeviceId(0), 2, false), 1);
    /// assert!(vm.change(DeviceId(0), 99, false, true, Duration::ZERO).is_err()); // no such ring
    /// ```
    pub fn change(&self, d: DeviceId, r: u32, host: bool, on: bool, cost: Duration) -> Result<NotifierOutcome, StepFailure> {
        let ring = self.ring(d, r)?;
        let n = if host { &ring.host } else { &ring.guest };
        let t = match if on { n.begin_enable() } else { n.begin_disable() } {
            Ok(t) => t,
            Err(refused) => return Ok(NotifierOutcome::Refused(refused)),
        };
        if host && self.model == KvmModel::PerVmIoeventfd {
            let mut last_register = self.ioeventfd.lock();
            if !on {
                if let Some(t0) = *last_register {
                    // An unregister right after a register waits out the grace period.
                    sleep_until(t0 + self.grace);
                }
            }
            sleep_until(Instant::now() + cost);
            if on {
                *last_register = Some(Instant::now());
            }
        } else {
            sleep_until(Instant::now() + cost);
        }
        let c = if host { &ring.host_ioctls } else { &ring.guest_ioctls };
        c.fetch_add(1, Ordering::AcqRel);
        // Only ioeventfds are memory-map changes; irqfds are not memory regions.
        if host && *self.txn_open.lock() {
            self.changes_since_begin.fetch_add(1, Ordering::AcqRel);
        }
        t.commit();
        Ok(NotifierOutcome::Issued)
    }

    /// Opens the memory-map transaction.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover_sim::{KvmModel, SimVm};
    /// use switchover::topology::Topology;
    /// let vm = SimVm::new(&Topology::preset("small").unwrap(), false, KvmModel::Rfc, Duration::ZERO);
    /// vm.begin().unwrap();
    /// assert!(vm.begin().is_err()); // one transaction at a time
    /// ```
    pub fn begin(&self) -> Result<(), StepFailure> {
        let mut o = self.txn_open.lock();
        if *o {
            return Err(StepFailure::Other { message: "memory transaction already open".into() });
        }
        *o = true;
        self.changes_since_begin.store(0, Ordering::Release);
        Ok(())
    }

    /// Commits the memory-map transaction: every change made since `begin`, at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover_sim::{KvmModel, SimVm};
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let vm = SimVm::new(&Topology::preset("small").unwrap(), false, KvmModel::Rfc, Duration::ZERO);
    /// assert!(vm.commit().is_err()); // nothing open
    /// vm.begin().unwrap();
    /// for ring in 0..4 {
    ///     vm.change(DeviceId(1), ring, true, true, Duration::ZERO).unwrap();
    /// }
    /// assert_eq!(vm.commit().unwrap(), 4); // four ioeventfds in one memory-map update
    /// ```
    pub fn commit(&self) -> Result<u64, StepFailure> {
        let mut o = self.txn_open.lock();
        if !*o {
            return Err(StepFailure::Other { message: "commit without an open memory transaction".into() });
        }
        *o = false;
        self.txn_commits.fetch_add(1, Ordering::AcqRel);
        let n = self.changes_since_begin.swap(0, Ordering::AcqRel);
        self.changes_committed.fetch_add(n, Ordering::AcqRel);
        Ok(n)
    }

    /// How many times the ioctl was issued for a ring's host or guest notifier.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover_sim::{KvmModel, SimVm};
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let vm = SimVm::new(&Topology::preset("small").unwrap(), true, KvmModel::Rfc, Duration::ZERO);
    /// std::thread::scope(|s| {
    ///     for _ in 0..4 {
    ///         s.spawn(|| vm.change(DeviceId(2), 0, false, false, Duration::ZERO).unwrap());
    ///     }
    /// });
    /// assert_eq!(vm.ioctls(DeviceId(2), 0, false), 1); // exactly once however many try
    /// ```
    pub fn ioctls(&self, d: DeviceId, r: u32, host: bool) -> u32 {
        match self.ring(d, r) {
            Ok(x) => if host { &x.host_ioctls } else { &x.guest_ioctls }.load(Ordering::Acquire),
            Err(_) => 0,
        }
    }

    /// A notifier's state.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::notifier::NotifierState;
    /// use switchover_sim::{KvmModel, SimVm};
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let vm = SimVm::new(&Topology::preset("small").unwrap(), true, KvmModel::Rfc, Duration::ZERO);
    /// vm.change(DeviceId(0), 0, false, false, Duration::ZERO).unwrap();
    /// assert_eq!(vm.state(DeviceId(0), 0, false), Some(NotifierState::Disabled));
    /// assert_eq!(vm.state(DeviceId(0), 0, true), Some(NotifierState::Enabled)); // the host notifier is separate
    /// ```
    pub fn state(&self, d: DeviceId, r: u32, host: bool) -> Option<NotifierState> {
        self.ring(d, r).ok().map(|x| if host { x.host.state() } else { x.guest.state() })
    }

    /// Memory transactions committed, and notifier changes they carried.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover_sim::{KvmModel, SimVm};
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let vm = SimVm::new(&Topology::preset("small").unwrap(), false, KvmModel::Rfc, Duration::ZERO);
    /// vm.begin().unwrap();
    /// vm.change(DeviceId(0), 0, true, true, Duration::ZERO).unwrap();
    /// vm.change(DeviceId(0), 0, false, true, Duration::ZERO).unwrap(); // an irqfd is no memory region
    /// vm.commit().unwrap();
    /// assert_eq!(vm.transactions(), (1, 1));
    /// ```
    pub fn transactions(&self) -> (u64, u64) {
        (self.txn_commits.load(Ordering::Acquire), self.changes_committed.load(Ordering::Acquire))
    }
}
