//! The simulated cost profile.

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

/// Simulated service times per step kind and device kind.
///
/// ```
/// use switchover_sim::Profile;
/// let p = Profile::rfc_original(0.5);
/// assert_eq!((p.name.as_str(), p.scale, p.reply_ack, p.blk_inflight), ("rfc-original", 0.5, false, 0));
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
    /// 4. everything is multiplied by `scale`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::recipe::{build, RecipeOptions};
    /// use switchover_sim::{Profile, RFC_ORIGINAL_MS};
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// // Today's plans for `rfc-huge`, costed by the profile, add up to the RFC's total.
    /// let p = Profile::rfc_original(1.0);
    /// let topo = Arc::new(Topology::preset("rfc-huge").unwrap());
    /// let total: f64 = [Side::Source, Side::Destination]
    ///     .iter()
    ///     .map(|&side| build(&topo, side, &RecipeOptions::baseline(), &p).unwrap())
    ///     .flat_map(|plan| plan.steps().iter().map(|s| s.cost.as_secs_f64() * 1e3).collect::<Vec<_>>())
    ///     .sum();
    /// assert!((total - RFC_ORIGINAL_MS).abs() < 0.01);
    /// ```
    pub fn rfc_original(scale: f64) -> Profile {
        let topo = Topology::preset("rfc-huge").expect("built-in preset");
        let topo = std::sync::Arc::new(topo);
        let rows = rfc_rows();
        // Count instances of each (side, unit, kind) in today's (baseline) plans.
        let mut counts: HashMap<(Side, Unit, StepKind), u32> = HashMap::new();
        for side in [Side::Source, Side::Destination] {
            let plan = build(&topo, side, &RecipeOptions::baseline(), &NoCosts).expect("built-in recipe");
            for s in plan.steps() {
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
            reply_ack: false,
            grace: Duration::from_millis(8),
            blk_inflight: 0,
            blk_io: Duration::from_millis(1),
            costs,
            unlisted_each,
            rows,
        }
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
        if *kind == StepKind::DrainInflight {
            // Draining waits for the last request in flight.
            return if unit == Unit::Blk && self.blk_inflight > 0 { self.blk_io } else { Duration::ZERO };
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
    /// assert!(p.acked(Unit::Net, &StepKind::GetVringBase));
    /// assert!(!p.acked(Unit::Net, &StepKind::SetVringKick)); // fire-and-forget
    /// p.reply_ack = true;
    /// assert!(p.acked(Unit::Net, &StepKind::SetVringKick));
    /// ```
    pub fn acked(&self, unit: Unit, kind: &StepKind) -> bool {
        matches!(kind, StepKind::GetVringBase) || self.reply_ack || self.costs.contains_key(&(unit, kind.clone()))
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

impl CostModel for Profile {
    fn cost(&self, device: &Device, kind: &StepKind) -> Duration {
        match unit_of(device) {
            Some(u) => self.unit_cost(u, kind).mul_f64(self.scale),
            None => device.steps.iter().find(|s| s.name == kind.name()).map(|s| s.cost.mul_f64(self.scale)).unwrap_or(Duration::ZERO),
        }
    }
    fn host_notifier_server(&self) -> Option<Server> {
        match self.kvm {
            KvmModel::Rfc => None,
            KvmModel::PerVmIoeventfd => Some(Server::VmIoeventfd),
        }
    }
}
