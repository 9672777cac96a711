//! One KVM VM per side (with the in-kernel irqchip), and each ring's two notifiers:
//! an ioeventfd (host notifier: the guest's kick) at an MMIO doorbell address, and an
//! irqfd (guest notifier: the backend's call). Every change goes through the
//! exactly-once [`Notifier`]: win the transition, issue the ioctl, commit or abort.
//! A refused transition issues nothing (KVM would silently accept a second irqfd
//! unregister). Ioctls are counted per notifier.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The ioctl was issued and succeeded.
    Issued,
    /// The state machine refused: nothing was issued.
    Refused(Refused),
}

/// A side's VM.
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
    pub fn ring(&self, g: u32) -> Option<&RingNotifiers> {
        self.rings.get(g as usize)
    }

    /// Number of rings.
    pub fn rings(&self) -> usize {
        self.rings.len()
    }

    /// Registers (`on`) or unregisters ring `g`'s ioeventfd (`host`) or irqfd.
    ///
    /// # Errors
    /// The ioctl's error, naming the call.
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
    pub fn ioctls(&self, g: u32, host: bool) -> u32 {
        self.ring(g).map(|n| if host { &n.host_ioctls } else { &n.guest_ioctls }.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Opens the memory-map transaction (bookkeeping: KVM has no such batch for
    /// ioeventfds; changes made while it is open are counted against it).
    pub fn txn_begin(&self) {
        self.txn_changes.store(0, Ordering::Release);
        self.txn_open.store(true, Ordering::Release);
    }

    /// Commits the transaction.
    pub fn txn_commit(&self) {
        self.txn_open.store(false, Ordering::Release);
        self.commits.fetch_add(1, Ordering::AcqRel);
        self.carried.fetch_add(self.txn_changes.swap(0, Ordering::AcqRel), Ordering::AcqRel);
    }

    /// Transactions committed and notifier changes they carried.
    pub fn transactions(&self) -> (u64, u64) {
        (self.commits.load(Ordering::Acquire), self.carried.load(Ordering::Acquire))
    }
}
