//! A minimal VMM integration: two device kinds of the VMM's own, next to a
//! vhost-user net device, switched over by two engines in one process.
//!
//! * `vfio` — a passthrough device with a large state: the destination loads the
//!   pre-copied state in `load_precopy`, a slow prepare step. The window may only
//!   open once it is done (the destination's switchover-ack), which is what running
//!   the destination's prepare window to completion before opening the window
//!   gives. Inside the window only the short `stop_copy` (source) and `resume`
//!   (destination) remain.
//! * `vbd` — a Xen-style virtual block device whose plug is split in two: a slow
//!   `attach` (prepare) and a fast `activate` (blackout) on the destination, a fast
//!   `deactivate` (blackout) and a slow `detach` (cleanup) on the source. Its
//!   `unpublish` (source) and `publish` (destination) steps update the VMM's device
//!   table under the VMM's big lock, so they declare that they need it and are
//!   caller-affine: they run on the thread that called the engine, which may
//!   already hold that lock (the source VMM below takes its big lock only when the
//!   window opens: prepare and the wait for the destination's ready-ack run with
//!   the guest running and the lock free), and reach it through the engine's
//!   [`CallerLane`] token; workers never touch it.
//!
//! The vhost-user steps are performed by the crate's SIMULATED backends; the VMM's
//! own steps by its own [`StepActions`] (here they sleep for their declared cost).
//!
//! Run with `cargo run --example vmm_integration`.

use std::cell::RefCell;
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use parking_lot::ReentrantMutex;
use switchover::exec::{CallerLane, Completion, Engine, StepActions};
use switchover::ids::{Affinity, Side, Window};
use switchover::recipe::{build, RecipeOptions};
use switchover::roles::path::channel_pair;
use switchover::roles::{Deadlines, Destination, Session, SideSetup, Source, SwitchoverReport};
use switchover::state::DeviceState;
use switchover::step::{Step, StepKind};
use switchover::topology::{GenericStep, Topology};
use switchover_sim::{Profile, SimActions, SimSide};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// The VFIO-like kind: a ready-ack before switchover (the destination's slow load
/// of the pre-copied state is a prepare step).
fn vfio_steps() -> Vec<GenericStep> {
    vec![
        GenericStep::new("stop_copy", Side::Source, Window::Blackout).cost(ms(3)),
        GenericStep::new("release", Side::Source, Window::Cleanup).cost(ms(5)).after("stop_copy"),
        GenericStep::new("load_precopy", Side::Destination, Window::Prepare).cost(ms(60)),
        GenericStep::new("resume", Side::Destination, Window::Blackout).cost(ms(2)).after("load_precopy"),
    ]
}

/// The Xen-VBD-like kind: slow attach and detach outside the window, fast
/// activate and deactivate inside it; `publish` and `unpublish` need the VMM's
/// big lock.
fn vbd_steps() -> Vec<GenericStep> {
    vec![
        GenericStep::new("deactivate", Side::Source, Window::Blackout).cost(Duration::from_micros(500)),
        GenericStep::new("unpublish", Side::Source, Window::Blackout)
            .cost(Duration::from_micros(100))
            .needs_big_lock()
            .affinity(Affinity::Caller)
            .after("deactivate"),
        GenericStep::new("detach", Side::Source, Window::Cleanup).cost(ms(40)).after("deactivate"),
        GenericStep::new("attach", Side::Destination, Window::Prepare).cost(ms(40)),
        GenericStep::new("activate", Side::Destination, Window::Blackout).cost(Duration::from_micros(500)).after("attach"),
        GenericStep::new("publish", Side::Destination, Window::Blackout)
            .cost(Duration::from_micros(100))
            .needs_big_lock()
            .affinity(Affinity::Caller)
            .after("activate"),
    ]
}

/// What the VMM's big lock protects (QEMU's BQL, a device-manager lock).
#[derive(Debug, Default)]
struct DeviceTable {
    /// `(device, step, whether the caller already held the lock)`.
    changes: Vec<(String, String, bool)>,
}

/// One VMM's big lock. Re-entrant: the thread that calls the engine may already
/// hold it when its caller-affine steps run.
type BigLock = Arc<ReentrantMutex<RefCell<DeviceTable>>>;

/// The VMM's step actions: its own kinds here, vhost-user kinds to the backends.
struct VmmActions {
    topo: Arc<Topology>,
    vhost: SimActions,
    big_lock: BigLock,
    /// Threads that ran caller-affine steps.
    caller_threads: parking_lot::Mutex<Vec<ThreadId>>,
}

impl VmmActions {
    /// Records a change of the device table. Only the caller lane may: it is the
    /// thread that called the engine, so if it holds the big lock, taking it again
    /// does not block; a worker would block here until the caller released it,
    /// after the switchover: the 2021 deadlock.
    fn change_table(&self, _lane: &CallerLane, device: &str, step: &str) {
        self.caller_threads.lock().push(std::thread::current().id());
        let held = self.big_lock.is_owned_by_current_thread();
        let table = self.big_lock.lock();
        table.borrow_mut().changes.push((device.to_string(), step.to_string(), held));
    }

    /// The device work itself (a VFIO state ioctl, a xenstore handshake…): sleeps
    /// for the step's declared cost.
    fn work(&self, step: &Step, name: &str, done: Completion) {
        let dev = self.topo.device(step.device);
        let cost = dev.steps.iter().find(|s| s.name == name && s.side == step.side).map(|s| s.cost).unwrap_or_default();
        std::thread::sleep(cost);
        done.complete(Ok(()));
    }
}

impl StepActions for VmmActions {
    fn start(&self, step: &Step, done: Completion) {
        let StepKind::Custom(name) = &step.kind else {
            // A vhost-user step: split-phase, answered by the backend's reply.
            return self.vhost.start(step, done);
        };
        assert_eq!(step.affinity, Affinity::Any, "caller-affine steps come through start_on_caller");
        self.work(step, name, done);
    }

    fn start_on_caller(&self, step: &Step, lane: &CallerLane, done: Completion) {
        let StepKind::Custom(name) = &step.kind else {
            // The memory transaction of the vhost-user notifiers.
            return self.vhost.start_on_caller(step, lane, done);
        };
        self.change_table(lane, &self.topo.device(step.device).name, name);
        self.work(step, name, done);
    }
}

fn side(topo: &Arc<Topology>, s: Side, profile: &Profile, big_lock: &BigLock) -> (SideSetup, Arc<SimSide>, Arc<VmmActions>) {
    let plan = Arc::new(build(topo, s, &RecipeOptions::engine(), profile).expect("valid plan"));
    let state = Arc::new(DeviceState::new(topo));
    let sim = Arc::new(SimSide::new(topo, s, profile, &[], state.clone()));
    let actions = VmmActions {
        topo: topo.clone(),
        vhost: SimActions::new(sim.clone(), plan.len()),
        big_lock: big_lock.clone(),
        caller_threads: Default::default(),
    };
    let actions = Arc::new(actions);
    // Recovery (the source's rollback, the destination's fence) with the same
    // actions: the VMM's own steps and the backends.
    let setup =
        SideSetup::new(plan, actions.clone(), state).with_recovery(RecipeOptions::engine(), Arc::new(profile.clone()), actions.clone());
    (setup, sim, actions)
}

fn print_report(topo: &Topology, src: &SideSetup, dst: &SideSetup, rep: &SwitchoverReport) {
    println!("outcome: {}", rep.outcome.name());
    println!("per phase (SIMULATED vhost-user backends; sleeps for the VMM's own steps):");
    for r in &rep.runs {
        println!("  {} {:<8} {:>7.1} ms  ({} steps)", r.side.short(), r.window.name(), r.wall.as_secs_f64() * 1e3, r.records.len());
    }
    println!("  downtime (window open → destination running): {:.1} ms", rep.downtime.as_secs_f64() * 1e3);
    // The ready-ack: every destination prepare step ended before the window opened.
    for r in rep.runs.iter().filter(|r| r.side == Side::Destination && r.window == Window::Prepare) {
        for rec in &r.records {
            let s = dst.plan.step(rec.step);
            if s.kind.name() == "load_precopy" {
                let end = r.started_at + rec.end;
                let before = rep.window_opened.saturating_duration_since(end);
                assert!(end <= rep.window_opened, "the window opened before the device was ready");
                println!(
                    "  {} load_precopy ({:.1} ms) was done {:.1} ms before the window opened (ready-ack)",
                    topo.device(s.device).name,
                    (rec.end - rec.start).as_secs_f64() * 1e3,
                    before.as_secs_f64() * 1e3
                );
            }
        }
    }
    // Where each vbd step ran.
    let mut per_window = std::collections::BTreeMap::new();
    for (plan, r) in rep.runs.iter().map(|r| (if r.side == Side::Source { &src.plan } else { &dst.plan }, r)) {
        for rec in &r.records {
            let s = plan.step(rec.step);
            if topo.device(s.device).kind.prefix() == "vbd" {
                *per_window.entry((r.window, s.kind.name().to_string())).or_insert(Duration::ZERO) += rec.end - rec.start;
            }
        }
    }
    for ((w, name), d) in per_window {
        println!("  vbd {:<10} in {:<8} {:>6.1} ms over both vbds", name, w.name(), d.as_secs_f64() * 1e3);
    }
}

fn main() {
    let topo = Arc::new(
        Topology::builder()
            .name("my-vmm")
            .net(1, 2)
            .generic(2, "vfio", vfio_steps())
            .generic(2, "vbd", vbd_steps())
            .build()
            .expect("valid topology"),
    );
    println!("topology {}", topo.summary());
    let profile = Profile::rfc_original(1.0);
    // Two VMMs, each with its own big lock.
    let big_lock: BigLock = Arc::new(ReentrantMutex::new(RefCell::new(DeviceTable::default())));
    let dst_big_lock: BigLock = Arc::new(ReentrantMutex::new(RefCell::new(DeviceTable::default())));

    // Each side's engine is started before the window opens (here: two VMMs in
    // one process, so two engines).
    let mut src_engine = Engine::new(4);
    let mut dst_engine = Engine::new(4);
    let (src, _src_sim, src_actions) = side(&topo, Side::Source, &profile, &big_lock);
    let (dst, _, _) = side(&topo, Side::Destination, &profile, &dst_big_lock);

    // The two VMMs, joined by their return path (in process here), in one session.
    let (mut src_path, mut dst_path) = channel_pair();
    let (src_session, dst_session) = (Session::new(1, &topo), Session::new(1, &topo));
    let t0 = Instant::now();
    let rep = std::thread::scope(|sc| {
        let d = sc.spawn(|| Destination::new(&dst, &mut dst_engine, dst_session, Deadlines::default()).run(&mut dst_path));
        // Migration start and precopy: the guest runs, the big lock is free.
        let source = Source::new(&src, &mut src_engine, src_session, Deadlines::default());
        let ready = match source.prepare(&mut src_path).and_then(|p| p.wait_ready(&mut src_path)) {
            Ok(ready) => ready,
            Err(report) => return *report,
        };
        // The vm-state-change path: the window opens under the big lock; if a step
        // fails inside it, the source's devices are restarted with the state read
        // from them (the setup's recovery).
        let mut rep = {
            let _held = big_lock.lock();
            ready.switch_over(&mut src_path)
        };
        // Both sides' windows in one report.
        rep.runs.extend(d.join().expect("the destination role does not panic").runs);
        rep.runs.sort_by_key(|r| r.started_at);
        rep
    });
    print_report(&topo, &src, &dst, &rep);
    for (who, lock) in [("source", &big_lock), ("destination", &dst_big_lock)] {
        let table = lock.lock();
        for (dev, step, held) in &table.borrow().changes {
            println!("  {who} {dev} {step}: caller lane, big lock already held by the caller: {held}");
        }
    }
    // Caller-affine steps ran only on the thread that called the engine.
    let src_threads = src_actions.caller_threads.lock().clone();
    assert!(!src_threads.is_empty() && src_threads.iter().all(|t| *t == std::thread::current().id()));
    println!("whole switchover {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    assert_eq!(rep.outcome.name(), "completed");
}
