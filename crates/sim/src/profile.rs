//! The simulated cost profile: the 2021 RFC's table for the steps it measured, the
//! costs measured on this machine for the steps a two-host switchover adds
//! ([`WindowCosts`]), QEMU's published batching savings for notifiers changed in
//! one memory-map transaction ([`batched_share`]). docs/performance.md ("The
//! simulated profile") gives every figure, its source and what it adds on rfc-huge.

use std::collections::HashMap;
use std::time::Duration;

use switchover::ids::Side;
use switchover::recipe::{build, CostModel, NoCosts, RecipeOptions};
use switchover::step::{Server, StepKind};
use switchover::topology::{Device, DeviceKind, Topology};

/// The RFC's total downtime, "Original" column (ms).
///
/// ```
/// use switchover_sim::{rfc_rows, RFC_ORIGINAL_MS};
/// // The table's rows fall 30 ms short of the total; the profile spreads those over unlisted messages.
/// let listed: f64 = rfc_rows().iter().map(|r| r.original_ms).sum();
/// assert_eq!(RFC_ORIGINAL_MS - listed, 30.0);
/// ```
pub const RFC_ORIGINAL_MS: f64 = 5600.0;
/// The RFC's total downtime with its thread pool (ms).
///
/// ```
/// use switchover_sim::{RFC_CONCURRENT_MS, RFC_ORIGINAL_MS};
/// assert!(RFC_ORIGINAL_MS / RFC_CONCURRENT_MS > 5.0); // the RFC's pool cut downtime about 5.8 times
/// ```
pub const RFC_CONCURRENT_MS: f64 = 962.0;

/// Device kinds the profile distinguishes.
///
/// ```
/// use switchover_sim::{Profile, Unit};
/// use switchover::step::StepKind;
/// let p = Profile::rfc_original(1.0);
/// // Per ring, removing a blk ring's host notifier costs more than a net ring's (300 ms over
/// // 96 rings against 1011 ms over 1024).
/// assert!(p.unit_cost(Unit::Blk, &StepKind::HostNotifierOff) > p.unit_cost(Unit::Net, &StepKind::HostNotifierOff));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// vhost-user net.
    Net,
    /// vhost-user blk.
    Blk,
}

/// One row of the RFC's table (seed 003, research.md §2).
///
/// ```
/// use switchover_sim::{rfc_rows, Unit};
/// use switchover::ids::Side;
/// use switchover::step::StepKind;
/// let rows = rfc_rows();
/// let r = rows.iter().find(|r| r.side == Side::Destination && r.unit == Unit::Net && r.step == StepKind::HostNotifierOn).unwrap();
/// assert_eq!((r.original_ms, r.concurrent_ms), (2022.0, 114.0));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RfcRow {
    /// Side.
    pub side: Side,
    /// Device kind.
    pub unit: Unit,
    /// Step kind.
    pub step: StepKind,
    /// "Original" (ms).
    pub original_ms: f64,
    /// "With state change concurrently" (ms).
    pub concurrent_ms: f64,
}

/// The RFC's rows, as published.
///
/// ```
/// use switchover_sim::rfc_rows;
/// let rows = rfc_rows();
/// assert_eq!(rows.len(), 12);
/// assert!(rows.iter().all(|r| r.concurrent_ms < r.original_ms));
/// ```
pub fn rfc_rows() -> Vec<RfcRow> {
    use StepKind as K;
    let r = |side, unit, step, o, c| RfcRow { side, unit, step, original_ms: o, concurrent_ms: c };
    vec![
        r(Side::Source, Unit::Blk, K::GetVringBase, 36.0, 18.0),
        r(Side::Source, Unit::Blk, K::GuestNotifierOff, 48.0, 32.0),
        r(Side::Source, Unit::Blk, K::HostNotifierOff, 300.0, 120.0),
        r(Side::Source, Unit::Net, K::GetVringBase, 1376.0, 294.0),
        r(Side::Source, Unit::Net, K::HostNotifierOff, 1011.0, 116.0),
        r(Side::Source, Unit::Net, K::GuestNotifierOff, 59.0, 40.0),
        r(Side::Destination, Unit::Net, K::GuestNotifierOn, 310.0, 97.0),
        r(Side::Destination, Unit::Net, K::SetMemTable, 48.0, 20.0),
        r(Side::Destination, Unit::Net, K::HostNotifierOn, 2022.0, 114.0),
        r(Side::Destination, Unit::Blk, K::HostNotifierOn, 312.0, 78.0),
        r(Side::Destination, Unit::Blk, K::GuestNotifierOn, 32.0, 23.0),
        r(Side::Destination, Unit::Blk, K::SetMemTable, 16.0, 10.0),
    ]
}

/// How KVM notifier changes cost.
///
/// ```
/// use switchover::recipe::CostModel;
/// use switchover_sim::{KvmModel, Profile};
/// use switchover::step::Server;
/// // Only the per-VM model serialises ioeventfd changes on one server.
/// assert_eq!(Profile::rfc_original(1.0).host_notifier_server(), None);
/// assert_eq!(Profile::rfc_original(1.0).with_kvm(KvmModel::PerVmIoeventfd).host_notifier_server(), Some(Server::VmIoeventfd));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmModel {
    /// The RFC's per-ring costs, charged to the lane that makes the change; changes
    /// of different rings proceed in parallel.
    Rfc,
    /// As probed on this machine kind (research.md §4): ioeventfd changes of one VM
    /// serialise on a per-VM lock, and an unregister that follows a register on the
    /// same VM within the grace period waits it out (scaled 8 ms).
    PerVmIoeventfd,
}

impl KvmModel {
    /// Name used on the command line and in reports.
    ///
    /// ```
    /// use switchover_sim::KvmModel;
    /// assert_eq!(KvmModel::PerVmIoeventfd.name(), "per-vm-ioeventfd");
    /// assert_eq!(KvmModel::Rfc.name(), "rfc");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            KvmModel::Rfc => "rfc",
            KvmModel::PerVmIoeventfd => "per-vm-ioeventfd",
        }
    }
}

/// The step kinds the 2021 RFC's QEMU performed at switchover and the RFC's
/// table and total cover: the profile's calibration counts only these. The kinds a
/// two-host switchover adds ([`WindowCosts`]) are charged on top.
///
/// ```
/// use switchover::step::StepKind;
/// use switchover_sim::rfc_measured;
/// assert!(rfc_measured(&StepKind::GetVringBase));
/// assert!(!rfc_measured(&StepKind::LogSync) && !rfc_measured(&StepKind::Probe));
/// ```
pub fn rfc_measured(kind: &StepKind) -> bool {
    use StepKind as K;
    matches!(
        kind,
        K::VringDisable
            | K::DrainInflight
            | K::GetVringBase
            | K::GuestNotifierOff
            | K::HostNotifierOff
            | K::SetFeatures
            | K::SetMemTable
            | K::SetVringNum
            | K::SetVringAddr
            | K::SetVringCall
            | K::HostNotifierOn
            | K::GuestNotifierOn
            | K::SetVringBase
            | K::SetVringKick
            | K::VringEnable
            | K::MemTxnBegin
            | K::MemTxnCommit
    )
}

/// What the steps a two-host switchover adds to the window cost (unscaled), and
/// where each figure comes from. Measured on this machine (2 cores, AMD EPYC,
/// nested KVM, shared with other work) with `cargo bench --bench window_costs`
/// (the mean of two runs' medians; see docs/performance.md, "The simulated
/// profile"), except
/// where a field says otherwise.
///
/// ```
/// use std::time::Duration;
/// use switchover_sim::WindowCosts;
/// let w = WindowCosts::measured();
/// // One routing commit for every vector of rfc-huge against one per vector.
/// let once = w.route_commit(1120 + 40);
/// let per_vector: Duration = (1..=1120 + 40).map(|n| w.route_commit(n)).sum();
/// assert!(per_vector > once * 100);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCosts {
    /// Fixed part of one `KVM_SET_GSI_ROUTING` (a VM with an in-kernel irqchip and
    /// an irqfd per route): the least-squares line through the one-commit medians
    /// of 64, 80 and 1120 routes.
    pub route_commit_base: Duration,
    /// Each MSI route in the committed table (the same line).
    pub route_commit_per_route: Duration,
    /// One eventfd write; `ring_notify` signals a ring's call and kicks it: two.
    pub eventfd_write: Duration,
    /// Copying one dirty 4 KiB page (`final_pass`, per page; in memory: a real
    /// migration sends it over the network, which costs more per page).
    pub page_copy: Duration,
    /// Scanning the dirty bitmap of 1 GiB of guest memory (`log_sync`, per GiB).
    pub bitmap_scan_per_gib: Duration,
    /// qemu-storage-daemon `blockdev-set-active` false over QMP (`storage_inactivate`).
    pub storage_inactivate: Duration,
    /// qemu-storage-daemon `blockdev-set-active` true over QMP (`storage_activate`,
    /// `storage_reactivate`).
    pub storage_activate: Duration,
    /// Guest memory the dirty log covers, GiB. An assumption: the RFC does not give
    /// its VM's memory.
    pub guest_ram_gib: u32,
    /// Pages each ring's backend dirtied after precopy's last pass (its used ring):
    /// what the final pass copies for the devices (the vCPUs' own dirty pages are
    /// the migration's, not the devices').
    pub pages_per_ring: u32,
    /// MSI routes of the VM before and including each device (one per ring, one
    /// for each device's configuration vector), set by [`Profile::for_topology`].
    pub routes_upto: Vec<u32>,
    /// Rings of the VM (set by [`Profile::for_topology`]).
    pub rings: u32,
}

impl WindowCosts {
    /// The figures measured on this machine (see the fields), for `rfc-huge`.
    pub fn measured() -> WindowCosts {
        let topo = Topology::preset("rfc-huge").expect("built-in preset");
        let mut w = WindowCosts {
            route_commit_base: Duration::from_nanos(ROUTE_COMMIT_BASE_NS),
            route_commit_per_route: Duration::from_nanos(ROUTE_COMMIT_PER_ROUTE_NS),
            eventfd_write: Duration::from_nanos(EVENTFD_WRITE_NS),
            page_copy: Duration::from_nanos(PAGE_COPY_NS),
            bitmap_scan_per_gib: Duration::from_nanos(BITMAP_SCAN_PER_GIB_NS),
            storage_inactivate: Duration::from_nanos(STORAGE_INACTIVATE_NS),
            storage_activate: Duration::from_nanos(STORAGE_ACTIVATE_NS),
            guest_ram_gib: 256,
            pages_per_ring: 1,
            routes_upto: vec![],
            rings: 0,
        };
        w.set_topology(&topo);
        w
    }

    fn set_topology(&mut self, t: &Topology) {
        let mut n = 0;
        self.routes_upto = t
            .devices()
            .iter()
            .map(|d| {
                if d.rings() > 0 {
                    n += d.rings() + 1;
                }
                n
            })
            .collect();
        self.rings = t.total_rings();
    }

    /// One `KVM_SET_GSI_ROUTING` carrying `routes` MSI routes.
    pub fn route_commit(&self, routes: u32) -> Duration {
        self.route_commit_base + self.route_commit_per_route * routes
    }

    /// Every MSI route of the VM.
    pub fn routes(&self) -> u32 {
        self.routes_upto.last().copied().unwrap_or(0)
    }

    /// The routes committed by a `route_commit` of `device`'s: ring `Some(r)` —
    /// one commit per vector, the table grown to this vector; `None` on the first
    /// device with rings — one commit for every vector of the VM; `None` on
    /// another device — one commit per device, the table grown to it.
    fn commit_routes(&self, device: &Device, ring: Option<u32>) -> u32 {
        let i = device.id.0 as usize;
        let before = if i == 0 { 0 } else { self.routes_upto.get(i - 1).copied().unwrap_or(0) };
        let first = self.routes_upto.iter().position(|&n| n > 0);
        match ring {
            Some(r) => before + r + 1,
            None if first == Some(i) || first.is_none() => self.routes(),
            None => self.routes_upto.get(i).copied().unwrap_or_else(|| self.routes()),
        }
    }
}

// The figures of `cargo bench --bench window_costs` (see `WindowCosts`): the mean
// of two runs' medians (docs/performance.md gives both runs).
const ROUTE_COMMIT_BASE_NS: u64 = 18_600;
const ROUTE_COMMIT_PER_ROUTE_NS: u64 = 295;
const EVENTFD_WRITE_NS: u64 = 340;
const PAGE_COPY_NS: u64 = 523;
const BITMAP_SCAN_PER_GIB_NS: u64 = 1_907;
const STORAGE_INACTIVATE_NS: u64 = 423_000;
const STORAGE_ACTIVATE_NS: u64 = 438_000;

/// Simulated service times per step kind and device kind.
///
/// ```
/// use switchover_sim::Profile;
/// let p = Profile::rfc_original(0.5);
/// assert_eq!((p.name.as_str(), p.scale, p.reply_ack, p.blk_inflight), ("rfc-original", 0.5, true, 0));
/// assert_eq!(p.rows.len(), 12);
/// ```
#[derive(Debug, Clone)]
pub struct Profile {
    /// Profile name.
    pub name: String,
    /// Every cost is multiplied by this.
    pub scale: f64,
    /// The KVM model.
    pub kvm: KvmModel,
    /// Whether the per-ring start messages (and other unlisted messages) wait for a
    /// reply (`REPLY_ACK`); the RFC-era QEMU did not.
    pub reply_ack: bool,
    /// The probed ioeventfd grace period (unscaled).
    pub grace: Duration,
    /// Block requests each blk ring has in flight when the guest stops (the RFC
    /// gives none: its `GET_VRING_BASE` row includes the drain).
    pub blk_inflight: u32,
    /// How long a block request takes in the backend (unscaled).
    pub blk_io: Duration,
    costs: HashMap<(Unit, StepKind), Duration>,
    /// The share of the 30 ms of unlisted steps charged to each unlisted message.
    pub unlisted_each: Duration,
    /// The RFC rows the profile came from.
    pub rows: Vec<RfcRow>,
    /// Devices (by name) whose configuration the guest changes during precopy:
    /// their `reconcile` costs [`Profile::reconcile_redo`], every other device's
    /// nothing.
    pub changed: Vec<String>,
    /// The costs of the steps a two-host switchover adds, charged on top of the
    /// RFC's calibration.
    pub window: WindowCosts,
}

impl Profile {
    /// The built-in profile for `rfc-huge`, derived from the RFC's "Original" column
    /// by a fixed rule, never tuned to a result:
    ///
    /// 1. each row's total is divided evenly over the instances that perform it in
    ///    `rfc-huge` (e.g. net `get_vring_base`: 1376 ms / 1024 rings), and charged to
    ///    that device's own resources (its control channel for messages, the lane
    ///    for notifier changes);
    /// 2. the steps the table does not list (per-ring start messages,
    ///    `SET_VRING_ENABLE(0)`, `SET_FEATURES`; fire-and-forget without `REPLY_ACK`)
    ///    share evenly the 30 ms by which the rows fall short of 5600 ms;
    /// 3. steps that are not vhost-user messages or notifier changes and are not in
    ///    the table (blk drain, which the RFC counts inside `GET_VRING_BASE`; the
    ///    memory-transaction begin/commit) cost nothing;
    /// 4. the steps a two-host switchover adds, which the RFC did not measure
    ///    ([`rfc_measured`] is false: dirty log, final pass, route commits, ring
    ///    notify, reconcile, probe, storage hand-over), are charged on top at the
    ///    costs measured on this machine ([`WindowCosts`]); they take nothing from
    ///    the calibration above;
    /// 5. everything is multiplied by `scale`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, RecipeOptions};
    /// use switchover_sim::{rfc_measured, Profile, RFC_ORIGINAL_MS};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// // Today's plans for `rfc-huge`, costed by the profile: the steps the RFC
    /// // measured add up to its total; the others come on top.
    /// let p = Profile::rfc_original(1.0);
    /// let topo = Arc::new(Topology::preset("rfc-huge").unwrap());
    /// let (mut rfc, mut added) = (0.0, 0.0);
    /// for side in [Side::Source, Side::Destination] {
    ///     for s in build(&topo, side, &RecipeOptions::baseline(), &p).unwrap().steps() {
    ///         let ms = s.cost.as_secs_f64() * 1e3;
    ///         if rfc_measured(&s.kind) { rfc += ms } else { added += ms }
    ///     }
    /// }
    /// assert!((rfc - RFC_ORIGINAL_MS).abs() < 0.01);
    /// assert!(added > 0.0);
    /// ```
    pub fn rfc_original(scale: f64) -> Profile {
        let topo = Topology::preset("rfc-huge").expect("built-in preset");
        let topo = std::sync::Arc::new(topo);
        let rows = rfc_rows();
        // Count instances of each (side, unit, kind) in today's (baseline) plans.
        let mut counts: HashMap<(Side, Unit, StepKind), u32> = HashMap::new();
        for side in [Side::Source, Side::Destination] {
            let plan = build(&topo, side, &RecipeOptions::baseline(), &NoCosts).expect("built-in recipe");
            for s in plan.steps().iter().filter(|s| rfc_measured(&s.kind)) {
                let unit = match topo.device(s.device).kind {
                    DeviceKind::Net => Unit::Net,
                    DeviceKind::Blk => Unit::Blk,
                    DeviceKind::Generic(_) => continue,
                };
                *counts.entry((side, unit, s.kind.clone())).or_default() += 1;
            }
        }
        let listed_total: f64 = rows.iter().map(|r| r.original_ms).sum();
        let mut costs = HashMap::new();
        for r in &rows {
            let n = counts.get(&(r.side, r.unit, r.step.clone())).copied().unwrap_or(1).max(1);
            costs.insert((r.unit, r.step.clone()), Duration::from_secs_f64(r.original_ms / 1000.0 / f64::from(n)));
        }
        let unlisted: u32 = counts
            .iter()
            .filter(|((side, unit, k), _)| k.is_message() && !rows.iter().any(|r| r.side == *side && r.unit == *unit && r.step == *k))
            .map(|(_, n)| *n)
            .sum();
        let unlisted_each = Duration::from_secs_f64((RFC_ORIGINAL_MS - listed_total) / 1000.0 / f64::from(unlisted.max(1)));
        Profile {
            name: "rfc-original".into(),
            scale,
            kvm: KvmModel::Rfc,
            reply_ack: true,
            grace: Duration::from_millis(8),
            blk_inflight: 0,
            blk_io: Duration::from_millis(1),
            costs,
            unlisted_each,
            rows,
            changed: vec![],
            window: WindowCosts::measured(),
        }
    }

    /// The same profile for the VM `t` (its MSI routes and rings size the route
    /// commits and the final pass).
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// use switchover_sim::Profile;
    /// let p = Profile::rfc_original(1.0).for_topology(&Topology::preset("small").unwrap());
    /// assert_eq!((p.window.rings, p.window.routes()), (10, 14));
    /// ```
    pub fn for_topology(mut self, t: &Topology) -> Profile {
        self.window.set_topology(t);
        self
    }

    /// The same profile under another KVM model.
    ///
    /// ```
    /// use switchover_sim::{KvmModel, Profile};
    /// let p = Profile::rfc_original(1.0).with_kvm(KvmModel::PerVmIoeventfd);
    /// assert_eq!(p.kvm, KvmModel::PerVmIoeventfd);
    /// ```
    pub fn with_kvm(mut self, m: KvmModel) -> Profile {
        self.kvm = m;
        self
    }

    /// Unscaled cost of `kind` on a device of kind `unit`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover_sim::{Profile, Unit};
    /// use switchover::step::StepKind;
    /// let p = Profile::rfc_original(0.1);
    /// // Unscaled: 36 ms of blk `get_vring_base` over 24 × 4 rings.
    /// assert_eq!(p.unit_cost(Unit::Blk, &StepKind::GetVringBase), Duration::from_secs_f64(0.036 / 96.0));
    /// assert_eq!(p.unit_cost(Unit::Blk, &StepKind::DrainInflight), Duration::ZERO); // nothing in flight
    /// ```
    pub fn unit_cost(&self, unit: Unit, kind: &StepKind) -> Duration {
        let w = &self.window;
        match kind {
            // Draining waits for the last request in flight.
            StepKind::DrainInflight => {
                return if unit == Unit::Blk && self.blk_inflight > 0 { self.blk_io } else { Duration::ZERO };
            }
            StepKind::LogSync => return w.bitmap_scan_per_gib * w.guest_ram_gib,
            StepKind::FinalPass => return w.page_copy * (w.rings * w.pages_per_ring),
            StepKind::RingNotify => return w.eventfd_write * 2,
            StepKind::StorageInactivate => return w.storage_inactivate,
            StepKind::StorageActivate | StepKind::StorageReactivate => return w.storage_activate,
            _ => {}
        }
        if let Some(c) = self.costs.get(&(unit, kind.clone())) {
            return *c;
        }
        if kind.is_message() {
            self.unlisted_each
        } else {
            Duration::ZERO
        }
    }

    /// Whether a message of `kind` waits for the backend's reply.
    ///
    /// ```
    /// use switchover_sim::{Profile, Unit};
    /// use switchover::step::StepKind;
    /// let mut p = Profile::rfc_original(1.0);
    /// assert!(p.acked(Unit::Net, &StepKind::SetVringKick)); // REPLY_ACK negotiated
    /// p.reply_ack = false;
    /// assert!(p.acked(Unit::Net, &StepKind::GetVringBase));
    /// assert!(p.acked(Unit::Net, &StepKind::Probe)); // a round trip whatever was negotiated
    /// assert!(!p.acked(Unit::Net, &StepKind::SetVringKick)); // fire-and-forget
    /// ```
    pub fn acked(&self, unit: Unit, kind: &StepKind) -> bool {
        // GET_VRING_BASE, SET_LOG_BASE and the probe have a reply whatever was negotiated.
        matches!(kind, StepKind::GetVringBase | StepKind::LogStart | StepKind::Probe)
            || self.reply_ack
            || self.costs.contains_key(&(unit, kind.clone()))
    }

    /// Unscaled cost of redoing a device's set-up in the window when its guest
    /// changed its configuration during precopy (`reconcile` of a changed device):
    /// `SET_FEATURES`, then per ring `SET_VRING_NUM`, `SET_VRING_ADDR` and
    /// `SET_VRING_CALL`, each at its message cost in this profile.
    ///
    /// ```
    /// use switchover_sim::{Profile, Unit};
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// let p = Profile::rfc_original(1.0);
    /// let t = Topology::preset("small").unwrap();
    /// let net0 = t.device_by_name("net0").unwrap();
    /// let msg = p.unit_cost(Unit::Net, &StepKind::SetVringNum);
    /// assert_eq!(p.reconcile_redo(net0), msg * (1 + 3 * net0.rings()));
    /// ```
    pub fn reconcile_redo(&self, device: &Device) -> Duration {
        let Some(u) = unit_of(device) else { return Duration::ZERO };
        let per_ring =
            [StepKind::SetVringNum, StepKind::SetVringAddr, StepKind::SetVringCall].iter().map(|k| self.unit_cost(u, k)).sum::<Duration>();
        self.unit_cost(u, &StepKind::SetFeatures) + per_ring * device.rings()
    }

    /// The scaled grace period.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover_sim::Profile;
    /// assert_eq!(Profile::rfc_original(0.5).scaled_grace(), Duration::from_millis(4));
    /// ```
    pub fn scaled_grace(&self) -> Duration {
        self.grace.mul_f64(self.scale)
    }
}

/// Maps a device to a profile unit (generic devices have none).
pub(crate) fn unit_of(d: &Device) -> Option<Unit> {
    match d.kind {
        DeviceKind::Net => Some(Unit::Net),
        DeviceKind::Blk => Some(Unit::Blk),
        DeviceKind::Generic(_) => None,
    }
}

impl Profile {
    /// Unscaled cost of `kind` on `device` for ring `ring` (see
    /// [`CostModel::cost_at`]): [`Profile::unit_cost`], but for the kinds whose
    /// cost depends on the device —
    ///
    /// * `log_start`: `SET_FEATURES` with `LOG_ALL`, `SET_LOG_BASE`, and each ring's
    ///   `SET_VRING_ADDR` with the log flag, at this profile's message cost;
    /// * `route_commit`: one `KVM_SET_GSI_ROUTING` of the routes it carries (every
    ///   route of the VM for the engine's one commit; the table grown so far for a
    ///   commit per vector or per device);
    /// * `reconcile`: [`Profile::reconcile_redo`] for a device in
    ///   [`Profile::changed`], nothing for another.
    ///
    /// ```
    /// use switchover::step::StepKind;
    /// use switchover::topology::Topology;
    /// use switchover_sim::Profile;
    /// let t = Topology::preset("rfc-huge").unwrap();
    /// let p = Profile::rfc_original(1.0);
    /// let (net0, net1) = (t.device_by_name("net0").unwrap(), t.device_by_name("net1").unwrap());
    /// // The engine's one commit carries every route; net1's own commit (QEMU today)
    /// // the routes of net0 and net1.
    /// assert_eq!(p.device_cost(net0, &StepKind::RouteCommit, None), p.window.route_commit(1160));
    /// assert_eq!(p.device_cost(net1, &StepKind::RouteCommit, None), p.window.route_commit(130));
    /// assert_eq!(p.device_cost(net0, &StepKind::RouteCommit, Some(0)), p.window.route_commit(1));
    /// assert!(p.device_cost(net0, &StepKind::Reconcile, None).is_zero()); // unchanged
    /// ```
    pub fn device_cost(&self, device: &Device, kind: &StepKind, ring: Option<u32>) -> Duration {
        let Some(u) = unit_of(device) else {
            return device.steps.iter().find(|s| s.name == kind.name()).map(|s| s.cost).unwrap_or(Duration::ZERO);
        };
        match kind {
            StepKind::LogStart => self.unlisted_each * (2 + device.rings()),
            StepKind::RouteCommit => self.window.route_commit(self.window.commit_routes(device, ring)),
            StepKind::Reconcile if self.changed.contains(&device.name) => self.reconcile_redo(device),
            StepKind::Reconcile => Duration::ZERO,
            _ => self.unit_cost(u, kind),
        }
    }
}

/// What batching a device's host notifiers into one memory-map transaction left
/// of their cost, as QEMU measured it (research.md §2): vhost_net's single-MR
/// patch (2024, 15 nets × 64 queues) enable 630 → 75 ms, disable 441 → 45 ms;
/// QEMU commit 0fdc6b85 (2023, 3 blk × 64 queues) 376 → 9.1 ms. (The blk figure
/// is for 64 queues a device; a blk of 4 queues saves less, so it is generous to
/// the strategies that batch.)
///
/// ```
/// use switchover::step::StepKind;
/// use switchover_sim::{batched_share, Unit};
/// assert_eq!(batched_share(Unit::Net, &StepKind::HostNotifierOn), 75.0 / 630.0);
/// assert_eq!(batched_share(Unit::Blk, &StepKind::GuestNotifierOn), 1.0); // irqfds are no memory regions
/// ```
pub fn batched_share(unit: Unit, kind: &StepKind) -> f64 {
    match (unit, kind) {
        (Unit::Net, StepKind::HostNotifierOn) => 75.0 / 630.0,
        (Unit::Net, StepKind::HostNotifierOff) => 45.0 / 441.0,
        (Unit::Blk, StepKind::HostNotifierOn | StepKind::HostNotifierOff) => 9.1 / 376.0,
        _ => 1.0,
    }
}

impl CostModel for Profile {
    fn cost(&self, device: &Device, kind: &StepKind) -> Duration {
        self.cost_at(device, kind, None)
    }
    fn cost_at(&self, device: &Device, kind: &StepKind, ring: Option<u32>) -> Duration {
        self.device_cost(device, kind, ring).mul_f64(self.scale)
    }
    fn batched_cost(&self, device: &Device, kind: &StepKind, ring: Option<u32>) -> Duration {
        let share = unit_of(device).map_or(1.0, |u| batched_share(u, kind));
        self.cost_at(device, kind, ring).mul_f64(share)
    }
    fn host_notifier_server(&self) -> Option<Server> {
        match self.kvm {
            KvmModel::Rfc => None,
            KvmModel::PerVmIoeventfd => Some(Server::VmIoeventfd),
        }
    }
}
