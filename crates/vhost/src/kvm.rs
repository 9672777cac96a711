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

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use parking_lot::Mutex;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use switchover::error::StepFailure;
use switchover::ids::DeviceId;
use switchover::notifier::{Notifier, NotifierState};

use crate::config::MsiVector;
use crate::sink::{NotifierSink, Route};

/// The first GSI free for MSI routes: 0–23 are the in-kernel irqchip's pins
/// (PIC and IOAPIC), which every routing table keeps.
///
/// ```
/// assert_eq!(switchover_vhost::kvm::FIRST_MSI_GSI, 24);
/// ```
pub const FIRST_MSI_GSI: u32 = 24;

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
    /// The GSI its irqfd raises: pre-allocated, at or above [`FIRST_MSI_GSI`] for
    /// an MSI route committed later.
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
    /// Where its ioeventfd is (or goes): the slot's, until the guest moves it.
    doorbell: AtomicU64,
    /// Times its doorbell moved.
    moves: AtomicU32,
}

/// What the routing-table commits of a VM did.
///
/// ```
/// use switchover_vhost::kvm::RouteStats;
/// let s = RouteStats::default();
/// assert_eq!((s.commits, s.msi_routes), (0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// `KVM_SET_GSI_ROUTING` ioctls issued.
    pub commits: u64,
    /// MSI routes in the table after the last one.
    pub msi_routes: u64,
    /// Time spent in them.
    pub time: Duration,
    /// When the last one ended.
    pub last: Option<Instant>,
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
    /// The MSI routes of the VM's routing table, by GSI.
    routes: Mutex<(BTreeMap<u32, MsiVector>, RouteStats)>,
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
                doorbell: AtomicU64::new(slot.doorbell),
                moves: AtomicU32::new(0),
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
            routes: Mutex::new((BTreeMap::new(), RouteStats::default())),
        })
    }

    /// What the routing-table commits did so far.
    pub fn route_stats(&self) -> RouteStats {
        self.routes.lock().1
    }

    /// The MSI message routed to a ring's GSI, if any.
    pub fn route(&self, d: DeviceId, r: u32) -> Option<MsiVector> {
        let gsi = self.ring(d, r).ok()?.slot.gsi;
        self.routes.lock().0.get(&gsi).copied()
    }

    /// How many times the ring's doorbell moved (each move re-registers its
    /// ioeventfd: one deassign and one assign more).
    pub fn moves(&self, d: DeviceId, r: u32) -> u32 {
        self.ring(d, r).map(|n| n.moves.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// The ring's doorbell now (its slot's, unless the guest moved it).
    pub fn doorbell(&self, d: DeviceId, r: u32) -> Option<u64> {
        self.ring(d, r).ok().map(|n| n.doorbell.load(Ordering::Acquire))
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
        let addr = IoEventAddress::Mmio(n.doorbell.load(Ordering::Acquire));
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
    fn move_host_notifier(&self, device: DeviceId, ring: u32, doorbell: u64) -> Result<(), StepFailure> {
        let n = self.ring(device, ring)?;
        if n.doorbell.load(Ordering::Acquire) == doorbell {
            return Ok(());
        }
        let on = n.host.state() == NotifierState::Enabled;
        if on {
            self.change(device, ring, true, false)?;
        }
        n.doorbell.store(doorbell, Ordering::Release);
        n.moves.fetch_add(1, Ordering::AcqRel);
        if on {
            self.change(device, ring, true, true)?;
        }
        Ok(())
    }
    fn commit_routes(&self, routes: &[Route]) -> Result<(), StepFailure> {
        let mut g = self.routes.lock();
        for r in routes {
            let gsi = self.ring(r.device, r.ring)?.slot.gsi;
            match r.msi {
                Some(m) => g.0.insert(gsi, m),
                None => g.0.remove(&gsi),
            };
        }
        let t = Instant::now();
        set_gsi_routing(&self.vm, &g.0)
            .map_err(|e| StepFailure::io("KVM_SET_GSI_ROUTING", std::io::Error::from_raw_os_error(e.errno())))?;
        let end = Instant::now();
        let routed = g.0.len() as u64;
        let st = &mut g.1;
        st.msi_routes = routed;
        st.commits += 1;
        st.time += end - t;
        st.last = Some(end);
        Ok(())
    }
}

/// The routing table the in-kernel irqchip starts with (QEMU's
/// `kvm_pc_setup_irq_routing`): GSIs 0–15 on the PICs, 0–23 on the IOAPIC pins.
fn irqchip_routes() -> Vec<kvm_irq_routing_entry> {
    let chip = |gsi: u32, irqchip: u32, pin: u32| {
        // SAFETY: a plain-data union, zeroed, then the irqchip member written.
        let mut e: kvm_irq_routing_entry = unsafe { std::mem::zeroed() };
        e.gsi = gsi;
        e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
        e.u.irqchip.irqchip = irqchip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut v = Vec::new();
    for i in (0..8).filter(|i| *i != 2) {
        v.push(chip(i, KVM_IRQCHIP_PIC_MASTER, i));
    }
    for i in 8..16 {
        v.push(chip(i, KVM_IRQCHIP_PIC_SLAVE, i - 8));
    }
    for i in (0..24).filter(|i| *i != 2) {
        v.push(chip(i, KVM_IRQCHIP_IOAPIC, if i == 0 { 2 } else { i }));
    }
    v
}

/// One `KVM_SET_GSI_ROUTING`: the irqchip's pins and every MSI route of `msi`.
fn set_gsi_routing(vm: &VmFd, msi: &BTreeMap<u32, MsiVector>) -> Result<(), vmm_sys_util::errno::Error> {
    let mut entries = irqchip_routes();
    for (&gsi, m) in msi {
        // SAFETY: a plain-data union, zeroed, then the msi member written.
        let mut e: kvm_irq_routing_entry = unsafe { std::mem::zeroed() };
        e.gsi = gsi;
        e.type_ = KVM_IRQ_ROUTING_MSI;
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = m.data;
        entries.push(e);
    }
    let table = KvmIrqRouting::from_entries(&entries).map_err(|_| vmm_sys_util::errno::Error::new(libc::EINVAL))?;
    vm.set_gsi_routing(&table)
}

/// One routing-table commit carrying every vector against one commit per vector,
/// measured side by side on a scratch VM of this host.
///
/// ```
/// use switchover_vhost::kvm::RoutingCosts;
/// let c = RoutingCosts { vectors: 160, rounds: 3, one_commit: std::time::Duration::from_micros(40), per_vector: std::time::Duration::from_millis(8) };
/// assert!(c.ratio() > 100.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingCosts {
    /// Vectors routed.
    pub vectors: usize,
    /// Rounds measured (each figure is the median).
    pub rounds: usize,
    /// One `KVM_SET_GSI_ROUTING` with every vector's route.
    pub one_commit: Duration,
    /// One commit per vector, the table growing by one route each time (what a
    /// VMM without batching does).
    pub per_vector: Duration,
}

impl RoutingCosts {
    /// `per_vector / one_commit`.
    pub fn ratio(&self) -> f64 {
        self.per_vector.as_secs_f64() / self.one_commit.as_secs_f64().max(1e-9)
    }
}

/// Measures [`RoutingCosts`] for `vectors` MSI routes, `rounds` times each way
/// (alternating), on a scratch VM with an in-kernel irqchip.
///
/// # Errors
/// [`KvmError`]: no KVM, or a routing ioctl failed.
///
/// ```no_run
/// let c = switchover_vhost::kvm::measure_routing(64, 5).unwrap(); // needs /dev/kvm
/// assert!(c.per_vector > c.one_commit);
/// ```
pub fn measure_routing(vectors: usize, rounds: usize) -> Result<RoutingCosts, KvmError> {
    let vm = KvmVm::new()?;
    let msi = |i: usize| MsiVector { address: 0xfee0_0000 | ((i as u64 % 2) << 12), data: 0x4000 | (i as u32 & 0xff), masked: false };
    let err = |source| KvmError { op: "KVM_SET_GSI_ROUTING", source };
    let (mut one, mut per) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        // Back to the irqchip's own table between rounds.
        set_gsi_routing(vm.fd(), &BTreeMap::new()).map_err(err)?;
        let all: BTreeMap<u32, MsiVector> = (0..vectors).map(|i| (FIRST_MSI_GSI + i as u32, msi(i))).collect();
        let t = Instant::now();
        set_gsi_routing(vm.fd(), &all).map_err(err)?;
        one.push(t.elapsed());
        set_gsi_routing(vm.fd(), &BTreeMap::new()).map_err(err)?;
        let mut table = BTreeMap::new();
        let t = Instant::now();
        for i in 0..vectors {
            table.insert(FIRST_MSI_GSI + i as u32, msi(i));
            set_gsi_routing(vm.fd(), &table).map_err(err)?;
        }
        per.push(t.elapsed());
    }
    one.sort();
    per.sort();
    Ok(RoutingCosts { vectors, rounds: one.len(), one_commit: one[one.len() / 2], per_vector: per[per.len() / 2] })
}
