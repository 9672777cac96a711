//! KVM ioeventfds and irqfds as a [`NotifierSink`] (feature `kvm`).
//!
//! Each ring has an ioeventfd (host notifier: the guest's kick) at an MMIO
//! doorbell address, and an irqfd (guest notifier: the backend's call) on a GSI.
//! Every change goes through the exactly-once [`Notifier`]: win the transition,
//! issue the ioctl, commit or abort. A refused transition issues nothing (KVM
//! would silently accept a second irqfd unregister). Ioctls are counted per
//! notifier.
//!
//! # Examples
//!
//! ```no_run
//! use std::sync::Arc;
//! use switchover::ids::DeviceId;
//! use switchover_vhost::kvm::{KvmNotifiers, KvmVm, RingSlot};
//! use switchover_vhost::sink::NotifierSink;
//! let vm = KvmVm::new().unwrap(); // needs /dev/kvm
//! let slot = RingSlot { device: DeviceId(0), ring: 0, doorbell: 0xd000_0000, gsi: 5 };
//! let n = KvmNotifiers::new(vm.fd().clone(), [slot]).unwrap();
//! n.host_notifier(DeviceId(0), 0, true).unwrap(); // KVM_IOEVENTFD assign
//! n.host_notifier(DeviceId(0), 0, true).unwrap(); // refused: nothing issued
//! assert_eq!(n.ioctls(DeviceId(0), 0, true), 1);
//! ```

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use switchover::error::StepFailure;
use switchover::ids::DeviceId;
use switchover::notifier::{Notifier, NotifierState};

use crate::sink::NotifierSink;

/// A KVM VM with the in-kernel irqchip: what irqfds need.
///
/// ```no_run
/// let vm = switchover_vhost::kvm::KvmVm::new().unwrap();
/// assert!(std::sync::Arc::strong_count(vm.fd()) >= 1);
/// ```
#[derive(Debug)]
pub struct KvmVm {
    _kvm: Kvm,
    vm: Arc<VmFd>,
}

/// Opening `/dev/kvm` or creating the VM failed.
///
/// ```
/// let e = switchover_vhost::kvm::KvmError { op: "KVM_CREATE_VM", source: vmm_sys_util::errno::Error::new(12) };
/// assert!(e.to_string().starts_with("KVM_CREATE_VM: "));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct KvmError {
    /// The call that failed.
    pub op: &'static str,
    /// Its error.
    #[source]
    pub source: vmm_sys_util::errno::Error,
}

impl KvmVm {
    /// Opens `/dev/kvm`, creates a VM and its in-kernel irqchip.
    ///
    /// # Errors
    /// [`KvmError`] naming the call that failed.
    pub fn new() -> Result<KvmVm, KvmError> {
        let kvm = Kvm::new().map_err(|source| KvmError { op: "open /dev/kvm", source })?;
        let vm = kvm.create_vm().map_err(|source| KvmError { op: "KVM_CREATE_VM", source })?;
        vm.create_irq_chip().map_err(|source| KvmError { op: "KVM_CREATE_IRQCHIP", source })?;
        Ok(KvmVm { _kvm: kvm, vm: Arc::new(vm) })
    }
    /// The VM's file descriptor.
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.vm
    }
}

/// Where one ring's notifiers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSlot {
    /// The device.
    pub device: DeviceId,
    /// The ring.
    pub ring: u32,
    /// MMIO address of the ring's doorbell (its ioeventfd).
    pub doorbell: u64,
    /// The GSI its irqfd raises.
    pub gsi: u32,
}

/// One ring's two notifiers.
#[derive(Debug)]
struct RingNotifiers {
    kick: EventFd,
    call: EventFd,
    host: Notifier,
    guest: Notifier,
    host_ioctls: AtomicU32,
    guest_ioctls: AtomicU32,
    slot: RingSlot,
}

/// The notifiers of every ring of a VM, on KVM.
#[derive(Debug)]
pub struct KvmNotifiers {
    vm: Arc<VmFd>,
    rings: Vec<RingNotifiers>,
    index: HashMap<(DeviceId, u32), usize>,
    txn_open: AtomicBool,
    txn_changes: AtomicU64,
    commits: AtomicU64,
    carried: AtomicU64,
}

impl KvmNotifiers {
    /// Creates each ring's eventfds (nothing is registered yet).
    ///
    /// # Errors
    /// Creating an eventfd failed.
    pub fn new(vm: Arc<VmFd>, slots: impl IntoIterator<Item = RingSlot>) -> std::io::Result<KvmNotifiers> {
        let mut rings = Vec::new();
        let mut index = HashMap::new();
        for slot in slots {
            index.insert((slot.device, slot.ring), rings.len());
            rings.push(RingNotifiers {
                kick: EventFd::new(EFD_NONBLOCK)?,
                call: EventFd::new(EFD_NONBLOCK)?,
                host: Notifier::new(NotifierState::Disabled),
                guest: Notifier::new(NotifierState::Disabled),
                host_ioctls: AtomicU32::new(0),
                guest_ioctls: AtomicU32::new(0),
                slot,
            });
        }
        Ok(KvmNotifiers {
            vm,
            rings,
            index,
            txn_open: AtomicBool::new(false),
            txn_changes: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            carried: AtomicU64::new(0),
        })
    }

    fn ring(&self, d: DeviceId, r: u32) -> Result<&RingNotifiers, StepFailure> {
        self.index
            .get(&(d, r))
            .map(|&i| &self.rings[i])
            .ok_or_else(|| StepFailure::MissingState { what: format!("no notifiers for {d} ring {r}") })
    }

    /// The ring's kick eventfd (what a guest's doorbell write signals).
    pub fn kick(&self, d: DeviceId, r: u32) -> Option<&EventFd> {
        self.ring(d, r).ok().map(|n| &n.kick)
    }

    /// The ring's call eventfd (what the backend signals).
    pub fn call(&self, d: DeviceId, r: u32) -> Option<&EventFd> {
        self.ring(d, r).ok().map(|n| &n.call)
    }

    /// The state of a ring's notifier.
    pub fn state(&self, d: DeviceId, r: u32, host: bool) -> Option<NotifierState> {
        self.ring(d, r).ok().map(|n| if host { n.host.state() } else { n.guest.state() })
    }

    /// Ioctls issued for a ring's host (`true`) or guest notifier.
    pub fn ioctls(&self, d: DeviceId, r: u32, host: bool) -> u32 {
        self.ring(d, r).map(|n| if host { &n.host_ioctls } else { &n.guest_ioctls }.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Memory transactions committed, and host-notifier changes they carried.
    pub fn transactions(&self) -> (u64, u64) {
        (self.commits.load(Ordering::Acquire), self.carried.load(Ordering::Acquire))
    }

    fn change(&self, d: DeviceId, r: u32, host: bool, on: bool) -> Result<(), StepFailure> {
        let n = self.ring(d, r)?;
        let st = if host { &n.host } else { &n.guest };
        // A refused transition (already in that state, or another thread is
        // changing it) issues nothing and is not an error.
        let Ok(t) = (if on { st.begin_enable() } else { st.begin_disable() }) else {
            return Ok(());
        };
        let addr = IoEventAddress::Mmio(n.slot.doorbell);
        let r = match (host, on) {
            (true, true) => self.vm.register_ioevent(&n.kick, &addr, NoDatamatch),
            (true, false) => self.vm.unregister_ioevent(&n.kick, &addr, NoDatamatch),
            (false, true) => self.vm.register_irqfd(&n.call, n.slot.gsi),
            (false, false) => self.vm.unregister_irqfd(&n.call, n.slot.gsi),
        };
        if host { &n.host_ioctls } else { &n.guest_ioctls }.fetch_add(1, Ordering::AcqRel);
        match r {
            Ok(()) => {
                t.commit();
                if host && self.txn_open.load(Ordering::Acquire) {
                    self.txn_changes.fetch_add(1, Ordering::AcqRel);
                }
                Ok(())
            }
            Err(e) => {
                t.abort();
                let call = match (host, on) {
                    (true, true) => "KVM_IOEVENTFD (assign)",
                    (true, false) => "KVM_IOEVENTFD (deassign)",
                    (false, true) => "KVM_IRQFD (assign)",
                    (false, false) => "KVM_IRQFD (deassign)",
                };
                Err(StepFailure::io(call, std::io::Error::from_raw_os_error(e.errno())))
            }
        }
    }
}

impl NotifierSink for KvmNotifiers {
    fn kick_fd(&self, device: DeviceId, ring: u32) -> Option<RawFd> {
        self.kick(device, ring).map(AsRawFd::as_raw_fd)
    }
    fn call_fd(&self, device: DeviceId, ring: u32) -> Option<RawFd> {
        self.call(device, ring).map(AsRawFd::as_raw_fd)
    }
    fn host_notifier(&self, device: DeviceId, ring: u32, on: bool) -> Result<(), StepFailure> {
        self.change(device, ring, true, on)
    }
    fn guest_notifier(&self, device: DeviceId, ring: u32, on: bool) -> Result<(), StepFailure> {
        self.change(device, ring, false, on)
    }
    fn begin_transaction(&self) {
        self.txn_changes.store(0, Ordering::Release);
        self.txn_open.store(true, Ordering::Release);
    }
    fn commit_transaction(&self) {
        self.txn_open.store(false, Ordering::Release);
        self.commits.fetch_add(1, Ordering::AcqRel);
        self.carried.fetch_add(self.txn_changes.swap(0, Ordering::AcqRel), Ordering::AcqRel);
    }
}
