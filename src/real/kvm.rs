//! One KVM VM per side (with the in-kernel irqchip), and each ring's two notifiers:
//! an ioeventfd (host notifier: the guest's kick) at an MMIO doorbell address, and an
//! irqfd (guest notifier: the backend's call). Every change goes through the
//! exactly-once [`Notifier`]: win the transition, issue the ioctl, commit or abort.
//! A refused transition issues nothing (KVM would silently accept a second irqfd
//! unregister). Ioctls are counted per notifier.
//!
//! # Examples
//!
//! ```no_run
//! use switchover::real::kvm::RealVm;
//! let vm = RealVm::new(2).unwrap(); // needs /dev/kvm
//!
//! use switchover::real::kvm::Change;
//! assert_eq!(vm.change(0, true, true).unwrap(), Change::Issued); // KVM_IOEVENTFD assign
//! assert!(matches!(vm.change(0, true, true).unwrap(), Change::Refused(_))); // nothing issued
//! assert_eq!(vm.ioctls(0, true), 1);
//! ```

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::StepFailure;
use crate::notifier::{Notifier, NotifierState, Refused};

/// MMIO base of the doorbells (one 4-byte doorbell per ring).
const DOORBELL_BASE: u64 = 0xd000_0000;
/// GSIs usable with the in-kernel IOAPIC.
const GSIS: u32 = 24;

/// One ring's notifiers.
///
/// # Examples
///
/// ```no_run
/// use switchover::real::kvm::RealVm;
/// let vm = RealVm::new(2).unwrap(); // needs /dev/kvm
///
/// use switchover::notifier::NotifierState;
/// let n = vm.ring(1).unwrap();
/// assert_eq!(n.host.state(), NotifierState::Disabled);
/// vm.change(1, false, true).unwrap(); // KVM_IRQFD assign
/// assert_eq!(n.guest.state(), NotifierState::Enabled);
/// n.call.write(1).unwrap(); // what a backend does to interrupt the guest
/// ```
#[derive(Debug)]
pub struct RingNotifiers {
    /// The kick eventfd (registered as the ioeventfd, passed with `SET_VRING_KICK`).
    pub kick: EventFd,
    /// The call eventfd (registered as the irqfd, passed with `SET_VRING_CALL`).
    pub call: EventFd,
    /// Host notifier state.
    pub host: Notifier,
    /// Guest notifier state.
    pub guest: Notifier,
    host_ioctls: AtomicU32,
    guest_ioctls: AtomicU32,
    addr: u64,
    gsi: u32,
}

/// What a notifier change did.
///
/// # Examples
///
/// ```
/// use switchover::notifier::Refused;
/// use switchover::real::kvm::Change;
/// let c = Change::Refused(Refused::AlreadyDisabled);
/// assert_ne!(c, Change::Issued);
/// assert_eq!(c, Change::Refused(Refused::AlreadyDisabled));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The ioctl was issued and succeeded.
    Issued,
    /// The state machine refused: nothing was issued.
    Refused(Refused),
}

/// A side's VM.
///
/// # Examples
///
/// ```no_run
/// use switchover::real::kvm::RealVm;
/// let vm = RealVm::new(2).unwrap(); // needs /dev/kvm
///
/// assert_eq!(vm.rings(), 2);
/// assert_eq!(vm.transactions(), (0, 0));
/// ```
#[derive(Debug)]
pub struct RealVm {
    _kvm: Kvm,
    vm: VmFd,
    rings: Vec<RingNotifiers>,
    txn_open: AtomicBool,
    txn_changes: AtomicU64,
    commits: AtomicU64,
    carried: AtomicU64,
}

impl RealVm {
    /// Opens /dev/kvm, creates a VM with an in-kernel irqchip, and makes the
    /// eventfds of `rings` rings (nothing registered yet).
    ///
    /// # Errors
    /// A message naming the failing call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use switchover::real::kvm::RealVm;
    /// let vm = RealVm::new(2).unwrap(); // needs /dev/kvm
    ///
    /// assert_eq!(vm.rings(), 2);
    /// assert_eq!(vm.ioctls(0, true) + vm.ioctls(0, false), 0); // nothing registered yet
    /// ```
    pub fn new(rings: usize) -> Result<RealVm, String> {
        let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        vm.create_irq_chip().map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
        let mut v = Vec::with_capacity(rings);
        for g in 0..rings {
            let ev = || EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"));
            v.push(RingNotifiers {
                kick: ev()?,
                call: ev()?,
                host: Notifier::new(NotifierState::Disabled),
                guest: Notifier::new(NotifierState::Disabled),
                host_ioctls: AtomicU32::new(0),
                guest_ioctls: AtomicU32::new(0),
                addr: DOORBELL_BASE + 4 * g as u64,
                gsi: g as u32 % GSIS,
            });
        }
        Ok(RealVm {
            _kvm: kvm,
            vm,
            rings: v,
            txn_open: AtomicBool::new(false),
            txn_changes: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            carried: AtomicU64::new(0),
        })
    }

    /// Ring `g`'s notifiers.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use switchover::real::kvm::RealVm;
    /// let vm = RealVm::new(2).unwrap(); // needs /dev/kvm
    ///
    /// assert!(vm.ring(1).is_some());
    /// assert!(vm.ring(2).is_none());
    /// ```
    pub fn ring(&self, g: u32) -> Option<&RingNotifiers> {
        self.rings.get(g as usize)
    }

    /// Number of rings.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use switchover::real::kvm::RealVm;
    /// let vm = RealVm::new(2).unwrap(); // needs /dev/kvm
    ///
    /// assert_eq!(vm.rings(), 2);
    /// ```
    pub fn rings(&self) -> usize {
        self.rings.len()
    }

    /// Registers (`on`) or unregisters ring `g`'s ioeventfd (`host`) or irqfd.
    ///
    /// # Errors
    /// The ioctl's error, naming the call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use switchover::real::kvm::RealVm;
    /// let vm = RealVm::new(2).unwrap(); // needs /dev/kvm
    ///
    /// use switchover::notifier::Refused;
    /// use switchover::real::kvm::Change;
    /// assert_eq!(vm.change(0, false, false).unwrap(), Change::Refused(Refused::AlreadyDisabled));
    /// assert_eq!(vm.change(0, false, true).unwrap(), Change::Issued); // KVM_IRQFD assign
    /// assert_eq!(vm.change(0, false, false).unwrap(), Change::Issued); // KVM_IRQFD deassign
    /// assert!(vm.change(9, true, true).is_err()); // no ring 9
    /// ```
    pub fn change(&self, g: u32, host: bool, on: bool) -> Result<Change, StepFailure> {
        let n = self.ring(g).ok_or_else(|| StepFailure::MissingState { what: format!("no notifiers for ring index {g}") })?;
        let st = if host { &n.host } else { &n.guest };
        let t = match if on { st.begin_enable() } else { st.begin_disable() } {
            Ok(t) => t,
            Err(r) => return Ok(Change::Refused(r)),
        };
        let addr = IoEventAddress::Mmio(n.addr);
        let r = match (host, on) {
            (true, true) => self.vm.register_ioevent(&n.kick, &addr, NoDatamatch),
            (true, false) => self.vm.unregister_ioevent(&n.kick, &addr, NoDatamatch),
            (false, true) => self.vm.register_irqfd(&n.call, n.gsi),
            (false, false) => self.vm.unregister_irqfd(&n.call, n.gsi),
        };
        if host { &n.host_ioctls } else { &n.guest_ioctls }.fetch_add(1, Ordering::AcqRel);
        match r {
            Ok(()) => {
                t.commit();
                if self.txn_open.load(Ordering::Acquire) {
                    self.txn_changes.fetch_add(1, Ordering::AcqRel);
                }
                Ok(Change::Issued)
            }
            Err(e) => {
                t.abort();
                let call = match (host, on) {
                    (true, true) => "KVM_IOEVENTFD (assign)",
                    (true, false) => "KVM_IOEVENTFD (deassign)",
                    (false, true) => "KVM_IRQFD (assign)",
                    (false, false) => "KVM_IRQFD (deassign)",
                };
                Err(StepFailure::Other { message: format!("{call}: {e}") })
            }
        }
    }

    /// Ioctls issued so far on ring `g`'s host (`true`) or guest notifier.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use switchover::real::kvm::RealVm;
    /// let vm = RealVm::new(2).unwrap(); // needs /dev/kvm
    ///
    /// vm.change(0, true, true).unwrap();
    /// vm.change(0, true, true).unwrap(); // refused: issues nothing
    /// assert_eq!(vm.ioctls(0, true), 1);
    /// assert_eq!(vm.ioctls(0, false), 0);
    /// ```
    pub fn ioctls(&self, g: u32, host: bool) -> u32 {
        self.ring(g).map(|n| if host { &n.host_ioctls } else { &n.guest_ioctls }.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Opens the memory-map transaction (bookkeeping: KVM has no such batch for
    /// ioeventfds; changes made while it is open are counted against it).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use switchover::real::kvm::RealVm;
    /// let vm = RealVm::new(2).unwrap(); // needs /dev/kvm
    ///
    /// vm.txn_begin();
    /// vm.change(0, true, true).unwrap();
    /// vm.change(1, true, true).unwrap();
    /// vm.txn_commit();
    /// assert_eq!(vm.transactions(), (1, 2));
    /// ```
    pub fn txn_begin(&self) {
        self.txn_changes.store(0, Ordering::Release);
        self.txn_open.store(true, Ordering::Release);
    }

    /// Commits the transaction.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use switchover::real::kvm::RealVm;
    /// let vm = RealVm::new(2).unwrap(); // needs /dev/kvm
    ///
    /// vm.txn_begin();
    /// vm.txn_commit();
    /// assert_eq!(vm.transactions(), (1, 0)); // committed, carrying no change
    /// ```
    pub fn txn_commit(&self) {
        self.txn_open.store(false, Ordering::Release);
        self.commits.fetch_add(1, Ordering::AcqRel);
        self.carried.fetch_add(self.txn_changes.swap(0, Ordering::AcqRel), Ordering::AcqRel);
    }

    /// Transactions committed and notifier changes they carried.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use switchover::real::kvm::RealVm;
    /// let vm = RealVm::new(2).unwrap(); // needs /dev/kvm
    ///
    /// vm.change(0, true, true).unwrap(); // outside a transaction: not counted
    /// vm.txn_begin();
    /// vm.change(0, true, false).unwrap();
    /// vm.txn_commit();
    /// assert_eq!(vm.transactions(), (1, 1));
    /// ```
    pub fn transactions(&self) -> (u64, u64) {
        (self.commits.load(Ordering::Acquire), self.carried.load(Ordering::Acquire))
    }
}
