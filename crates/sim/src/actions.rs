//! Performs plan steps on SIMULATED backends and a SIMULATED KVM.

use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::backend::{BlkIo, Req, SimBackend};
use super::clock::sleep_until;
use super::fault::{Fault, FaultKind};
use super::io::{IoEnd, IoLedger};
use super::profile::{unit_of, Profile};
use super::vm::{NotifierOutcome, SimVm};
use super::world::SimWorld;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use switchover::error::StepFailure;
use switchover::exec::{Completion, StepActions};
use switchover::ids::DeviceId;
use switchover::ids::{Affinity, Side};
use switchover::state::{DeviceState, InflightReq};
use switchover::step::{Step, StepKind};
use switchover::topology::Topology;

/// The base a simulated guest has reached on each ring before switchover: non-zero
/// and different per ring, so a base that is lost or crossed shows (see
/// [`SimSide::guest_base`]).
#[allow(clippy::cast_possible_truncation)]
fn mix(d: u32, r: u32) -> u16 {
    let mut x = (u64::from(d) << 32 | u64::from(r)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x % 65_535) as u16 + 1
}

/// One side's simulated world: a backend per vhost-user device, a VM, the state
/// that crosses to the destination, and the faults to inject.
///
/// ```
/// use std::sync::Arc;
/// use switchover_sim::{Profile, SimSide};
/// use switchover::state::DeviceState;
/// use switchover::ids::{DeviceId, Side};
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let src = SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
/// // The source's rings run at the guest's progress; nothing is captured yet.
/// let ring = &src.backend(DeviceId(1)).unwrap().rings()[3];
/// assert_eq!(ring.base, Some(SimSide::guest_base(1, 3)));
/// assert!(ring.started && src.state().captured() == 0);
/// ```
pub struct SimSide {
    side: Side,
    topo: Arc<Topology>,
    profile: Profile,
    backends: Vec<parking_lot::RwLock<Option<Arc<SimBackend>>>>,
    vm: SimVm,
    state: Arc<DeviceState>,
    faults: Vec<(Fault, AtomicBool)>,
    ledger: Arc<IoLedger>,
    hand_over: bool,
    world: Arc<SimWorld>,
    custom: Mutex<Vec<(DeviceId, String)>>,
}

impl std::fmt::Debug for SimSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSide").field("side", &self.side).field("topology", &self.topo.name()).finish()
    }
}

impl SimSide {
    /// The simulated guest's progress on ring `ring` of device `device`.
    ///
    /// ```
    /// use switchover_sim::SimSide;
    /// assert_ne!(SimSide::guest_base(0, 0), 0);
    /// assert_ne!(SimSide::guest_base(0, 0), SimSide::guest_base(0, 1));
    /// ```
    pub fn guest_base(device: u32, ring: u32) -> u16 {
        mix(device, ring)
    }

    /// Starts the backends of `side`. Source backends run with rings at
    /// [`SimSide::guest_base`]; destination backends start empty.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::{DeviceId, Side};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let dst = SimSide::new(&topo, Side::Destination, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
    /// // Destination backends start empty: no ring has a base or runs.
    /// assert!(dst.backend(DeviceId(0)).unwrap().rings().iter().all(|r| r.base.is_none() && !r.started));
    /// ```
    pub fn new(topo: &Arc<Topology>, side: Side, profile: &Profile, faults: &[Fault], state: Arc<DeviceState>) -> SimSide {
        SimSide::with_io(topo, side, profile, faults, state, Arc::new(IoLedger::default()), false)
    }

    /// As [`SimSide::new`], with the guest's block requests recorded in `ledger`
    /// (shared by both sides) and in-flight requests handed over instead of
    /// drained when `hand_over` is set.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use switchover_sim::{IoLedger, Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let mut profile = Profile::rfc_original(0.02);
    /// profile.blk_inflight = 3;
    /// let ledger = Arc::new(IoLedger::default());
    /// let state = Arc::new(DeviceState::new(&topo));
    /// let src = SimSide::with_io(&topo, Side::Source, &profile, &[], state, ledger.clone(), true);
    /// assert!(Arc::ptr_eq(src.ledger(), &ledger));
    /// // Two blk devices with one ring each, three requests in flight per ring.
    /// assert_eq!(ledger.summary(false).submitted, 6);
    /// ```
    pub fn with_io(
        topo: &Arc<Topology>,
        side: Side,
        profile: &Profile,
        faults: &[Fault],
        state: Arc<DeviceState>,
        ledger: Arc<IoLedger>,
        hand_over: bool,
    ) -> SimSide {
        let world = Arc::new(SimWorld::one_side(topo.clone(), side));
        SimSide::in_world(topo, side, profile, faults, state, ledger, hand_over, world)
    }

    /// As [`SimSide::with_io`], in `world` (shared with the other side: storage,
    /// memory, configuration and the guest; see [`SimWorld`]).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::ids::{DeviceId, Side};
    /// use switchover::state::DeviceState;
    /// use switchover::topology::Topology;
    /// use switchover_sim::{IoLedger, Profile, SimSide, SimWorld};
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let world = Arc::new(SimWorld::new(topo.clone(), vec![], true));
    /// let p = Profile::rfc_original(0.02);
    /// let state = Arc::new(DeviceState::new(&topo));
    /// let src = SimSide::in_world(&topo, Side::Source, &p, &[], state, Arc::new(IoLedger::default()), false, world.clone());
    /// assert!(Arc::ptr_eq(src.world(), &world));
    /// assert_eq!(world.owner(DeviceId(2)), Some(Side::Source));
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn in_world(
        topo: &Arc<Topology>,
        side: Side,
        profile: &Profile,
        faults: &[Fault],
        state: Arc<DeviceState>,
        ledger: Arc<IoLedger>,
        hand_over: bool,
        world: Arc<SimWorld>,
    ) -> SimSide {
        let running = side == Side::Source;
        let backends = topo
            .devices()
            .iter()
            .map(|d| {
                parking_lot::RwLock::new((d.rings() > 0).then(|| {
                    let id = d.id.0;
                    let f = move |r: u32| SimSide::guest_base(id, r);
                    let io = blk_io(d, profile, &ledger, &world);
                    let b = Arc::new(SimBackend::start(&d.name, d.rings(), if running { Some(&f) } else { None }, io));
                    let (w, dev) = (world.clone(), d.id);
                    b.on_death(Box::new(move || w.backend_died(dev, side)));
                    b
                }))
            })
            .collect();
        SimSide {
            side,
            topo: topo.clone(),
            profile: profile.clone(),
            backends,
            vm: SimVm::new(topo, running, profile.kvm, profile.scaled_grace()),
            state,
            faults: faults
                .iter()
                .filter(|f| topo.device_by_name(&f.device).is_some())
                .map(|f| (f.clone(), AtomicBool::new(false)))
                .collect(),
            ledger,
            hand_over,
            world,
            custom: Mutex::new(Vec::new()),
        }
    }

    /// The world this side lives in.
    pub fn world(&self) -> &Arc<SimWorld> {
        &self.world
    }

    /// The steps of VMM-defined devices this side performed, in order (device, step).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let src = SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
    /// assert!(src.custom_steps().is_empty());
    /// ```
    pub fn custom_steps(&self) -> Vec<(DeviceId, String)> {
        self.custom.lock().clone()
    }

    /// Rings of this side still live: their backend runs and the ring is started
    /// (`dst net0 ring 3`).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let src = SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
    /// assert_eq!(src.live_rings().len(), topo.total_rings() as usize); // the guest runs here
    /// ```
    pub fn live_rings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in self.topo.devices() {
            let Some(b) = self.backend(d.id) else { continue };
            if !b.alive() {
                continue;
            }
            for (r, ring) in b.rings().iter().enumerate() {
                if ring.started {
                    out.push(format!("{} {} ring {r}", self.side.short(), d.name));
                }
            }
        }
        out
    }

    /// Cuts a device's backend off for good (its process stopped): no ring of it
    /// runs any more. `false` if it has no backend.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::{DeviceId, Side};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let src = SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
    /// assert!(src.kill_backend(DeviceId(0)));
    /// assert!(src.backend(DeviceId(0)).is_none() && !src.kill_backend(DeviceId(0)));
    /// ```
    pub fn kill_backend(&self, d: DeviceId) -> bool {
        let Some(slot) = self.backends.get(d.0 as usize) else { return false };
        let old = slot.write().take();
        if let Some(o) = &old {
            o.kill(false);
        }
        old.is_some()
    }

    /// The block-request ledger.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let src = SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
    /// assert_eq!(src.ledger().summary(false).submitted, 0); // the profile has no requests in flight
    /// ```
    pub fn ledger(&self) -> &Arc<IoLedger> {
        &self.ledger
    }

    /// The side.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let dst = SimSide::new(&topo, Side::Destination, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
    /// assert_eq!(dst.side(), Side::Destination);
    /// ```
    pub fn side(&self) -> Side {
        self.side
    }
    /// The VM.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::notifier::NotifierState;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::{DeviceId, Side};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let src = SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
    /// assert_eq!(src.vm().state(DeviceId(0), 0, true), Some(NotifierState::Enabled)); // the guest runs here
    /// ```
    pub fn vm(&self) -> &SimVm {
        &self.vm
    }
    /// The captured state.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let state = Arc::new(DeviceState::new(&topo));
    /// let src = SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], state.clone());
    /// assert!(Arc::ptr_eq(src.state(), &state));
    /// ```
    pub fn state(&self) -> &Arc<DeviceState> {
        &self.state
    }
    /// A device's backend.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::{DeviceId, Side};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let src = SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
    /// assert_eq!(src.backend(DeviceId(2)).unwrap().name(), "blk0");
    /// assert!(src.backend(DeviceId(9)).is_none());
    /// ```
    pub fn backend(&self, d: DeviceId) -> Option<Arc<SimBackend>> {
        self.backends.get(d.0 as usize).and_then(|b| b.read().clone())
    }

    /// Replaces a device's backend with a fresh one (a restarted backend process
    /// that knows nothing of its rings). The old one is closed.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::{DeviceId, Side};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let src = SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
    /// assert!(src.backend(DeviceId(0)).unwrap().rings()[0].started);
    /// assert!(src.restart_backend(DeviceId(0)));
    /// // The new backend process knows nothing of its rings.
    /// assert!(src.backend(DeviceId(0)).unwrap().rings().iter().all(|r| r.base.is_none() && !r.started));
    /// assert!(!src.restart_backend(DeviceId(9)));
    /// ```
    pub fn restart_backend(&self, d: DeviceId) -> bool {
        let Some(slot) = self.backends.get(d.0 as usize) else { return false };
        let dev = self.topo.device(d);
        if dev.rings() == 0 {
            return false;
        }
        let io = blk_io(dev, &self.profile, &self.ledger, &self.world);
        let b = Arc::new(SimBackend::start(&dev.name, dev.rings(), None, io));
        let (w, side) = (self.world.clone(), self.side);
        b.on_death(Box::new(move || w.backend_died(d, side)));
        let old = slot.write().replace(b);
        if let Some(o) = &old {
            // The new process of this side takes over the old one's image lock,
            // or opens the image if the old one died with it.
            o.kill(true);
        }
        drop(old);
        self.world.reopen(d, self.side);
        true
    }

    /// Waits until every backend has served what was queued (fire-and-forget
    /// messages included); false if one is gone or hung.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::{DeviceId, Side};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let src = SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
    /// assert!(src.sync(Duration::from_secs(5)));
    /// assert_eq!(src.backend(DeviceId(0)).unwrap().served(), 1); // just the sync itself
    /// ```
    pub fn sync(&self, timeout: Duration) -> bool {
        self.backends.iter().filter_map(|b| b.read().clone()).all(|b| b.sync(timeout))
    }

    /// Checks, on a destination side, that every ring's base is the one the guest
    /// reached on the source. Returns the rings that differ (`device`, `ring`, `have`, `want`).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let dst = SimSide::new(&topo, Side::Destination, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo)));
    /// // Before switchover no destination ring runs at the guest's base.
    /// let m = dst.base_mismatches();
    /// assert_eq!(m.len(), topo.total_rings() as usize);
    /// assert_eq!(m[0], ("net0".to_string(), 0, None, SimSide::guest_base(0, 0)));
    /// ```
    pub fn base_mismatches(&self) -> Vec<(String, u32, Option<u16>, u16)> {
        let mut out = Vec::new();
        for d in self.topo.devices() {
            let Some(b) = self.backend(d.id) else { continue };
            for (r, ring) in b.rings().iter().enumerate() {
                let want = SimSide::guest_base(d.id.0, r as u32);
                if ring.base != Some(want) || !ring.started || !ring.enabled {
                    out.push((d.name.clone(), r as u32, ring.base, want));
                }
            }
        }
        out
    }

    fn fault_for(&self, step: &Step) -> Option<FaultKind> {
        let name = &self.topo.device(step.device).name;
        for (f, fired) in &self.faults {
            if f.step != step.kind || &f.device != name {
                continue;
            }
            match f.ring {
                Some(r) if step.ring != Some(r) => continue,
                Some(_) => return Some(f.kind),
                None => {
                    if fired.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        return Some(f.kind);
                    }
                }
            }
        }
        None
    }
}

fn blk_io(d: &switchover::topology::Device, profile: &Profile, ledger: &Arc<IoLedger>, world: &Arc<SimWorld>) -> Option<BlkIo> {
    (d.kind == switchover::topology::DeviceKind::Blk && profile.blk_inflight > 0).then(|| BlkIo {
        per_ring: profile.blk_inflight,
        io: profile.blk_io.mul_f64(profile.scale),
        ledger: ledger.clone(),
        device: d.id.0,
        world: Some(world.clone()),
    })
}

/// Performs a plan's steps on a [`SimSide`], counting how often each step starts
/// and on which thread caller-affine steps run (for the tests).
///
/// ```
/// use std::sync::Arc;
/// use switchover::exec::{Engine, Progress};
/// use switchover::recipe::{build, RecipeOptions};
/// use switchover_sim::{Profile, SimActions, SimSide};
/// use switchover::state::DeviceState;
/// use switchover::ids::{DeviceId, Side, Window};
/// use switchover::topology::Topology;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let profile = Profile::rfc_original(0.02);
/// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &profile).unwrap());
/// let side = Arc::new(SimSide::new(&topo, Side::Source, &profile, &[], Arc::new(DeviceState::new(&topo))));
/// let actions = Arc::new(SimActions::new(side.clone(), plan.len()));
/// let r = Engine::new(2).run(&plan, Window::Blackout, actions, &mut Progress::new(&plan));
/// assert!(r.ok());
/// // Every ring's base was read into the side's state.
/// assert_eq!(side.state().captured(), topo.total_rings() as usize);
/// assert_eq!(side.state().base(DeviceId(3), 0), Some(SimSide::guest_base(3, 0)));
/// ```
pub struct SimActions {
    side: Arc<SimSide>,
    inject: bool,
    starts: Vec<AtomicU32>,
    caller_threads: Mutex<Vec<(u32, ThreadId)>>,
}

impl std::fmt::Debug for SimActions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimActions").field("side", &self.side).finish()
    }
}

impl SimActions {
    /// Actions for a plan of `steps` steps on `side`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimActions, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let side = Arc::new(SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo))));
    /// let actions = SimActions::new(side, 42);
    /// assert_eq!(actions.starts(), vec![0; 42]);
    /// ```
    pub fn new(side: Arc<SimSide>, steps: usize) -> SimActions {
        SimActions { side, inject: true, starts: (0..steps).map(|_| AtomicU32::new(0)).collect(), caller_threads: Mutex::new(Vec::new()) }
    }
    /// Actions that inject no faults (for the rollback path).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::exec::{Engine, Progress};
    /// use switchover::recipe::{build, RecipeOptions};
    /// use switchover_sim::{Profile, SimActions, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::{Side, Window};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let profile = Profile::rfc_original(0.02);
    /// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &profile).unwrap());
    /// let faults = ["error:get_vring_base:net0".parse().unwrap()];
    /// let side = || Arc::new(SimSide::new(&topo, Side::Source, &profile, &faults, Arc::new(DeviceState::new(&topo))));
    /// let run = |a: SimActions| Engine::new(1).run(&plan, Window::Blackout, Arc::new(a), &mut Progress::new(&plan)).ok();
    /// assert!(!run(SimActions::new(side(), plan.len())));
    /// assert!(run(SimActions::new(side(), plan.len()).without_faults()));
    /// ```
    pub fn without_faults(mut self) -> SimActions {
        self.inject = false;
        self
    }
    /// The side.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover_sim::{Profile, SimActions, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::Side;
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let side = Arc::new(SimSide::new(&topo, Side::Source, &Profile::rfc_original(0.02), &[], Arc::new(DeviceState::new(&topo))));
    /// assert!(Arc::ptr_eq(SimActions::new(side.clone(), 1).side(), &side));
    /// ```
    pub fn side(&self) -> &Arc<SimSide> {
        &self.side
    }
    /// How many times each step was started.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::exec::{Engine, Progress};
    /// use switchover::recipe::{build, RecipeOptions};
    /// use switchover_sim::{Profile, SimActions, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::{Side, Window};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let profile = Profile::rfc_original(0.02);
    /// let plan = Arc::new(build(&topo, Side::Source, &RecipeOptions::engine(), &profile).unwrap());
    /// let side = Arc::new(SimSide::new(&topo, Side::Source, &profile, &[], Arc::new(DeviceState::new(&topo))));
    /// let actions = Arc::new(SimActions::new(side, plan.len()));
    /// Engine::new(2).run(&plan, Window::Blackout, actions.clone(), &mut Progress::new(&plan));
    /// let starts = actions.starts();
    /// for s in plan.steps() {
    ///     let expected = u32::from(s.window == Window::Blackout); // once, and only in its window
    ///     assert_eq!(starts[s.id.0 as usize], expected);
    /// }
    /// ```
    pub fn starts(&self) -> Vec<u32> {
        self.starts.iter().map(|a| a.load(Ordering::Acquire)).collect()
    }
    /// The threads caller-affine steps ran on.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::exec::{Engine, Progress};
    /// use switchover::recipe::{build, RecipeOptions};
    /// use switchover_sim::{Profile, SimActions, SimSide};
    /// use switchover::state::DeviceState;
    /// use switchover::ids::{Side, Window};
    /// use switchover::topology::Topology;
    /// let topo = Arc::new(Topology::preset("small").unwrap());
    /// let profile = Profile::rfc_original(0.02);
    /// let plan = Arc::new(build(&topo, Side::Destination, &RecipeOptions::engine(), &profile).unwrap());
    /// let side = Arc::new(SimSide::new(&topo, Side::Destination, &profile, &[], Arc::new(DeviceState::new(&topo))));
    /// let actions = Arc::new(SimActions::new(side, plan.len()));
    /// Engine::new(4).run(&plan, Window::Prepare, actions.clone(), &mut Progress::new(&plan));
    /// // The memory transaction's begin and commit ran on this (the calling) thread.
    /// let threads = actions.caller_threads();
    /// assert_eq!(threads.len(), 2);
    /// assert!(threads.iter().all(|(_, t)| *t == std::thread::current().id()));
    /// ```
    pub fn caller_threads(&self) -> Vec<(u32, ThreadId)> {
        self.caller_threads.lock().clone()
    }

    fn blocking(&self, step: &Step, fault: Option<FaultKind>) -> Result<(), StepFailure> {
        let s = &self.side;
        let dev = s.topo.device(step.device);
        // The plan's cost: the profile's, batched where the plan batches.
        let cost = step.cost;
        match fault {
            Some(FaultKind::Error | FaultKind::Crash) => {
                return Err(StepFailure::Injected { what: format!("{:?} at {} on {}", fault, step.kind, dev.name) })
            }
            Some(FaultKind::Hang) if step.kind == StepKind::DrainInflight => {
                // The ring's requests never complete: the drain waits out its
                // deadline and fails (it honours the deadline it is given).
                sleep_until(Instant::now() + step.deadline);
                return Err(StepFailure::Timeout { after: step.deadline });
            }
            Some(FaultKind::Hang) => {
                // A hung ioctl: the lane is stuck past the deadline (the engine
                // abandons the step), then the call fails.
                let stuck = (step.deadline + step.deadline / 4 + Duration::from_millis(1)).min(Duration::from_secs(30));
                sleep_until(Instant::now() + stuck);
                return Err(StepFailure::Timeout { after: step.deadline });
            }
            None => {}
        }
        let refused = |message: String| StepFailure::Backend { message };
        match &step.kind {
            StepKind::HostNotifierOn | StepKind::HostNotifierOff | StepKind::GuestNotifierOn | StepKind::GuestNotifierOff => {
                let host = matches!(step.kind, StepKind::HostNotifierOn | StepKind::HostNotifierOff);
                let on = matches!(step.kind, StepKind::HostNotifierOn | StepKind::GuestNotifierOn);
                let r = step.ring.ok_or_else(|| StepFailure::MissingState { what: "notifier step without a ring".into() })?;
                match s.vm.change(step.device, r, host, on, cost)? {
                    NotifierOutcome::Issued | NotifierOutcome::Refused(_) => Ok(()),
                }
            }
            StepKind::DrainInflight => {
                // Wait until the ring's requests in flight have completed
                // (used == avail), within the step's deadline.
                let r = step.ring.unwrap_or(0);
                let Some(at) = s.backend(step.device).and_then(|b| b.drained_at(r)) else { return Ok(()) };
                let limit = Instant::now() + step.deadline;
                if at > limit {
                    sleep_until(limit);
                    return Err(StepFailure::Timeout { after: step.deadline });
                }
                sleep_until(at);
                Ok(())
            }
            StepKind::MemTxnBegin => {
                sleep_until(Instant::now() + cost);
                s.vm.begin()
            }
            StepKind::MemTxnCommit => {
                sleep_until(Instant::now() + cost);
                s.vm.commit().map(|_| ())
            }
            StepKind::LogSync => {
                sleep_until(Instant::now() + cost);
                s.world.log_sync();
                Ok(())
            }
            StepKind::FinalPass => {
                sleep_until(Instant::now() + cost);
                s.world.final_pass();
                Ok(())
            }
            // The image lock is the backend process's: a dead backend holds
            // nothing and can take nothing.
            StepKind::StorageInactivate => {
                sleep_until(Instant::now() + cost);
                s.world.give_up(step.device, s.side).map_err(refused)
            }
            StepKind::StorageActivate | StepKind::StorageReactivate => {
                sleep_until(Instant::now() + cost);
                if !s.backend(step.device).is_some_and(|b| b.alive()) {
                    return Err(StepFailure::Disconnected);
                }
                s.world.activate(step.device, s.side).map_err(refused)
            }
            StepKind::Custom(name) => {
                sleep_until(Instant::now() + cost);
                s.custom.lock().push((step.device, name.to_string()));
                Ok(())
            }
            _ => {
                sleep_until(Instant::now() + cost);
                Ok(())
            }
        }
    }
}

impl StepActions for SimActions {
    fn reconnect(&self, device: DeviceId) -> bool {
        self.side.restart_backend(device)
    }

    fn abandon(&self, device: DeviceId) -> bool {
        self.side.kill_backend(device)
    }

    fn recover_base(&self, device: DeviceId, ring: u32) -> Option<u16> {
        // The simulated guest has nothing in flight at the stop: its used index
        // equals the base the backend had reached.
        (ring < self.side.topo.device(device).rings()).then(|| SimSide::guest_base(device.0, ring))
    }

    fn start(&self, step: &Step, done: Completion) {
        if let Some(c) = self.starts.get(step.id.0 as usize) {
            c.fetch_add(1, Ordering::AcqRel);
        }
        if step.affinity == Affinity::Caller {
            self.caller_threads.lock().push((step.id.0, std::thread::current().id()));
        }
        let s = &self.side;
        let fault = if self.inject { s.fault_for(step) } else { None };
        if !step.kind.is_message() {
            done.complete(self.blocking(step, fault));
            return;
        }
        let dev = s.topo.device(step.device);
        let Some(backend) = s.backend(step.device) else {
            done.complete(Err(StepFailure::MissingState { what: format!("{} has no backend", dev.name) }));
            return;
        };
        let mut value = 0u16;
        let mut resubmit = Vec::new();
        let mut cost = step.cost;
        match step.kind {
            StepKind::GetVringBase if s.hand_over => value = 1,
            StepKind::SetVringKick => {
                let end = if s.side == Side::Destination { IoEnd::Destination } else { IoEnd::Source };
                resubmit =
                    step.ring.map(|r| s.state.take_inflight(step.device, r)).unwrap_or_default().into_iter().map(|q| (q.id, end)).collect();
                if let (Side::Destination, Some(r)) = (s.side, step.ring) {
                    // The backend reads the used index from this side's memory.
                    s.world.ring_starts(step.device, r, s.state.base(step.device, r).unwrap_or(0));
                }
            }
            StepKind::SetVringBase => match step.ring.and_then(|r| s.state.base(step.device, r)) {
                Some(b) => value = b,
                None => {
                    done.complete(Err(StepFailure::MissingState { what: "no vring base was captured for this ring".into() }));
                    return;
                }
            },
            StepKind::SetVringAddr => value = s.world.generation_for(step.device, s.side, &s.state) as u16,
            // A started ring's source stops logging after a failed migration.
            StepKind::SetFeatures if s.side == Side::Source => s.world.set_logging(step.device, false),
            StepKind::Reconcile => match s.world.reconcile(step.device, &s.state) {
                // Redo the device's set-up with the loaded configuration.
                Some(generation) => {
                    value = generation as u16;
                    cost = s.profile.reconcile_redo(dev).mul_f64(s.profile.scale);
                }
                // Unchanged: nothing to send, nothing to pay.
                None => {
                    done.complete(Ok(()));
                    return;
                }
            },
            _ => {}
        }
        let unit = unit_of(dev).expect("messages only for vhost-user devices");
        let acked = s.profile.acked(unit, &step.kind);
        let (device, ring, kind) = (step.device, step.ring, step.kind.clone());
        let state = s.state.clone();
        let world = (s.side == Side::Source).then(|| s.world.clone());
        let mut pending = Some(done);
        let reply: Option<super::backend::Reply> = if acked {
            let done = pending.take().expect("completion");
            Some(Box::new(move |r: Result<(u16, Vec<u64>), StepFailure>| match r {
                Ok((v, handed)) => {
                    match (&kind, ring, &world) {
                        (StepKind::GetVringBase, Some(ring), _) => {
                            state.set_base(device, ring, v);
                            let reqs: Vec<InflightReq> = handed.into_iter().map(|id| InflightReq { device: device.0, ring, id }).collect();
                            state.hand_over(&reqs);
                            // The backend wrote its last used index before replying.
                            if let Some(w) = &world {
                                w.backend_write(device, ring, v);
                            }
                        }
                        (StepKind::LogStart, _, Some(w)) => w.set_logging(device, true),
                        _ => {}
                    }
                    done.complete(Ok(()));
                }
                Err(e) => done.complete(Err(e)),
            }))
        } else {
            None
        };
        backend.send(Req { kind: step.kind.clone(), ring: step.ring, value, cost, arrival: Instant::now(), fault, resubmit, reply });
        if let Some(done) = pending {
            // Fire-and-forget: done once sent (as without REPLY_ACK).
            done.complete(Ok(()));
        }
    }
}
