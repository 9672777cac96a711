//! The two roles on devices in memory: the order of the VMM's hooks, the
//! destination's fence before it says the start failed, its deadline, sessions,
//! a switchover that cannot run twice, and an in-doubt outcome settled later.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchover::error::StepFailure;
use switchover::exec::{Completion, Engine, StepActions};
use switchover::ids::{DeviceId, Side};
use switchover::recipe::{build, NoCosts, RecipeOptions};
use switchover::roles::message::{Envelope, Message};
use switchover::roles::path::{channel_pair, ReturnPath, UnixPath};
use switchover::roles::{
    answer_query, run_in_process, Deadlines, Destination, HookError, MessageKind, Outcome, PathOp, Refusal, Session, SideSetup, Source,
    SwitchoverError, VmmHooks,
};
use switchover::state::{DeviceBlob, DeviceState};
use switchover::step::{Step, StepKind};
use switchover::topology::Topology;

/// Devices in memory. Every ring's base is `100 + ring`; a ring counts as live
/// from its kick to its `get_vring_base`. A step may be made to fail.
struct Devices {
    state: Arc<DeviceState>,
    fail: Option<(StepKind, DeviceId)>,
    live: Mutex<Vec<(DeviceId, u32)>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Devices {
    fn new(state: Arc<DeviceState>, fail: Option<(StepKind, DeviceId)>, log: Arc<Mutex<Vec<String>>>) -> Devices {
        Devices { state, fail, live: Mutex::new(Vec::new()), log }
    }
}

impl StepActions for Devices {
    fn start(&self, step: &Step, done: Completion) {
        if self.fail.as_ref().is_some_and(|(k, d)| *k == step.kind && *d == step.device) {
            return done.complete(Err(StepFailure::Backend { message: "EIO".into() }));
        }
        let ring = step.ring.unwrap_or(0);
        match step.kind {
            StepKind::GetVringBase => {
                self.state.set_base(step.device, ring, 100 + ring as u16);
                self.live.lock().unwrap().retain(|x| *x != (step.device, ring));
            }
            StepKind::SetVringKick => self.live.lock().unwrap().push((step.device, ring)),
            StepKind::FinalPass | StepKind::StorageActivate | StepKind::StorageInactivate | StepKind::StorageReactivate => {
                self.log.lock().unwrap().push(step.kind.name().to_string());
            }
            _ => {}
        }
        done.complete(Ok(()));
    }
}

/// The VMM's hooks: each call logged, with the side.
struct Hooks {
    side: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    fail_load: bool,
    /// How long loading the device state takes (a slow destination).
    load_delay: Duration,
}

impl Hooks {
    fn note(&self, what: &str) {
        self.log.lock().unwrap().push(format!("{} {what}", self.side));
    }
}

impl VmmHooks for Hooks {
    fn snapshot_config(&self) -> Result<Vec<DeviceBlob>, HookError> {
        self.note("snapshot_config");
        Ok(vec![DeviceBlob { device: 0, generation: 1, bytes: b"cfg".to_vec() }])
    }
    fn stage_config(&self, config: &[DeviceBlob]) -> Result<(), HookError> {
        self.note(&format!("stage_config gen {}", config[0].generation));
        Ok(())
    }
    fn predicted(&self, p: &switchover::predict::Prediction) {
        self.note(&format!("predicted {}", if p.this_side() > Duration::ZERO { "some" } else { "nothing" }));
    }
    fn precopy(&self) -> Result<(), HookError> {
        self.note("precopy");
        Ok(())
    }
    fn stop_vcpus(&self) -> Result<(), HookError> {
        self.note("stop_vcpus");
        Ok(())
    }
    fn save_state(&self) -> Result<Vec<DeviceBlob>, HookError> {
        self.note("save_state");
        Ok(vec![DeviceBlob { device: 0, generation: 2, bytes: b"msix".to_vec() }])
    }
    fn load_state(&self, state: &[DeviceBlob]) -> Result<(), HookError> {
        self.note(&format!("load_state gen {}", state[0].generation));
        std::thread::sleep(self.load_delay);
        if self.fail_load {
            return Err(HookError::msg("the MSI-X table does not fit"));
        }
        Ok(())
    }
    fn resume_vcpus(&self) -> Result<(), HookError> {
        self.note("resume_vcpus");
        Ok(())
    }
}

struct Side2 {
    setup: SideSetup,
    devices: Arc<Devices>,
}

fn side(topo: &Arc<Topology>, side: Side, fail: Option<(StepKind, DeviceId)>, log: &Arc<Mutex<Vec<String>>>, fail_load: bool) -> Side2 {
    side_with(topo, side, fail, log, fail_load, Duration::ZERO)
}

fn side_with(
    topo: &Arc<Topology>,
    side: Side,
    fail: Option<(StepKind, DeviceId)>,
    log: &Arc<Mutex<Vec<String>>>,
    fail_load: bool,
    load_delay: Duration,
) -> Side2 {
    let state = Arc::new(DeviceState::new(topo));
    let plan = Arc::new(build(topo, side, &RecipeOptions::engine(), &NoCosts).unwrap());
    let devices = Arc::new(Devices::new(state.clone(), fail, log.clone()));
    let name = if side == Side::Source { "src" } else { "dst" };
    let setup =
        SideSetup::new(plan, devices.clone(), state).with_hooks(Arc::new(Hooks { side: name, log: log.clone(), fail_load, load_delay }));
    Side2 { setup, devices }
}

fn small() -> Arc<Topology> {
    Arc::new(Topology::preset("small").unwrap())
}

#[test]
fn hooks_run_in_order_and_the_state_carries_the_vmm_s_device_state() {
    let (topo, log) = (small(), Arc::new(Mutex::new(Vec::new())));
    let (src, dst) = (side(&topo, Side::Source, None, &log, false), side(&topo, Side::Destination, None, &log, false));
    let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(2), &mut Engine::new(2));
    assert_eq!(rep.outcome, Outcome::Completed);
    let log = log.lock().unwrap().clone();
    let at = |what: &str| log.iter().position(|x| x == what).unwrap_or_else(|| panic!("{what} missing in {log:?}"));
    assert!(at("src snapshot_config") < at("dst stage_config gen 1"));
    assert!(at("src precopy") < at("src stop_vcpus"));
    // Each side's share of the downtime reaches the VMM before the guest stops:
    // the source's before its precopy, the destination's before its ready-ack.
    assert!(at("src predicted some") < at("src precopy"));
    assert!(at("dst predicted some") < at("src stop_vcpus"));
    assert!(at("src stop_vcpus") < at("final_pass") && at("final_pass") < at("src save_state"));
    assert!(at("src save_state") < at("dst load_state gen 2"));
    assert!(at("dst load_state gen 2") < at("storage_activate") && at("storage_activate") < at("dst resume_vcpus"));
    assert!(!log.iter().any(|x| x == "src resume_vcpus"), "the source's guest resumed after a completed switchover");
    assert_eq!(dst.setup.state.blob(DeviceId(0)).unwrap().bytes, b"msix");
}

#[test]
fn a_failed_start_fences_the_destination_before_the_source_resumes() {
    let (topo, log) = (small(), Arc::new(Mutex::new(Vec::new())));
    // blk1's kick fails after other rings were already kicked (live).
    let blk1 = topo.device_by_name("blk1").unwrap().id;
    let (src, dst) =
        (side(&topo, Side::Source, None, &log, false), side(&topo, Side::Destination, Some((StepKind::SetVringKick, blk1)), &log, false));
    let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(2), &mut Engine::new(2));
    let Outcome::RolledBack { cause } = &rep.outcome else { panic!("{:?}", rep.outcome) };
    assert_eq!((cause.side(), cause.device_name()), (Side::Destination, Some("blk1")));
    // Every ring the destination had started was stopped again before it answered.
    assert!(dst.devices.live.lock().unwrap().is_empty(), "live rings left: {:?}", dst.devices.live.lock().unwrap());
    let (fence_plan, fence_run) = rep.fence.as_ref().expect("a fence ran");
    assert!(fence_run.ok());
    assert!(fence_plan.steps().iter().any(|s| s.kind == StepKind::StorageInactivate), "the destination gave the storage back");
    let log = log.lock().unwrap().clone();
    let at = |what: &str| log.iter().rposition(|x| x == what).unwrap();
    assert!(at("storage_inactivate") < at("src resume_vcpus"), "{log:?}");
    assert!(at("storage_reactivate") < at("src resume_vcpus"), "the source took its storage back before resuming");
    assert!(!log.iter().any(|x| x == "dst resume_vcpus"));
}

#[test]
fn a_failed_state_load_is_a_start_failure_named_as_the_hook() {
    let (topo, log) = (small(), Arc::new(Mutex::new(Vec::new())));
    let (src, dst) = (side(&topo, Side::Source, None, &log, false), side(&topo, Side::Destination, None, &log, true));
    let rep = run_in_process(&src.setup, &dst.setup, &mut Engine::new(2), &mut Engine::new(2));
    let Outcome::RolledBack { cause } = &rep.outcome else { panic!("{:?}", rep.outcome) };
    assert!(matches!(cause, SwitchoverError::Hook { side: Side::Destination, .. }), "{cause}");
    assert!(cause.to_string().contains("load_state: the MSI-X table does not fit"), "{cause}");
}

#[test]
fn a_destination_past_its_deadline_says_it_will_not_run_and_the_source_resumes() {
    let (topo, log) = (small(), Arc::new(Mutex::new(Vec::new())));
    let (src, dst) = (side(&topo, Side::Source, None, &log, false), slow_destination(&topo, &log));
    let (mut a, mut b) = channel_pair();
    let (mut e1, mut e2) = (Engine::new(1), Engine::new(1));
    let short = Deadlines { state: Duration::from_millis(50), ..Deadlines::default() };
    let (s, d) = std::thread::scope(|sc| {
        let h = sc.spawn(|| Destination::new(&dst.setup, &mut e2, Session::new(1, &topo), short).run(&mut b));
        let ready = Source::new(&src.setup, &mut e1, Session::new(1, &topo), Deadlines::default())
            .prepare(&mut a)
            .and_then(|p| p.wait_ready(&mut a))
            .unwrap();
        // The source waits too long before it stops the guest.
        std::thread::sleep(Duration::from_millis(200));
        let d = h.join().unwrap();
        (ready.switch_over(&mut a), d)
    });
    assert!(
        matches!(&d.outcome, Outcome::Aborted { cause: SwitchoverError::ReturnPath { op: PathOp::Wait(MessageKind::State), .. } }),
        "{:?}",
        d.outcome
    );
    assert!(!d.running_here);
    // Not in doubt: the destination promised not to run, so the source resumed.
    assert!(matches!(s.outcome, Outcome::RolledBack { .. }), "{:?}", s.outcome);
    assert!(log.lock().unwrap().iter().any(|x| x == "src resume_vcpus"));
}

#[test]
fn a_message_of_another_session_is_refused_and_named() {
    let (topo, log) = (small(), Arc::new(Mutex::new(Vec::new())));
    let dst = side(&topo, Side::Destination, None, &log, false);
    let (mut a, mut b) = channel_pair();
    let mut engine = Engine::new(1);
    let rep = std::thread::scope(|sc| {
        let h = sc.spawn(|| Destination::new(&dst.setup, &mut engine, Session::new(7, &topo), Deadlines::default()).run(&mut b));
        // A source of another migration (session 8).
        a.send(&Envelope { session: 8, seq: 0, fingerprint: topo.fingerprint(), message: Message::Config { devices: vec![] } }).unwrap();
        h.join().unwrap()
    });
    let Outcome::Aborted { cause } = &rep.outcome else { panic!("{:?}", rep.outcome) };
    assert_eq!(cause, &SwitchoverError::Refused { side: Side::Destination, problem: Refusal::Session { expected: 7, got: 8 } });
    // And one of another VM's topology.
    let dst2 = side(&topo, Side::Destination, None, &log, false);
    let (mut a, mut b) = channel_pair();
    let mut engine = Engine::new(1);
    let rep = std::thread::scope(|sc| {
        let h = sc.spawn(|| Destination::new(&dst2.setup, &mut engine, Session::new(7, &topo), Deadlines::default()).run(&mut b));
        a.send(&Envelope { session: 7, seq: 0, fingerprint: topo.fingerprint() ^ 1, message: Message::Config { devices: vec![] } })
            .unwrap();
        h.join().unwrap()
    });
    assert!(matches!(&rep.outcome, Outcome::Aborted { cause: SwitchoverError::Refused { problem: Refusal::Fingerprint { .. }, .. } }));
}

#[test]
fn a_finished_switchover_does_not_run_again() {
    let (topo, log) = (small(), Arc::new(Mutex::new(Vec::new())));
    let (src, dst) = (side(&topo, Side::Source, None, &log, false), side(&topo, Side::Destination, None, &log, false));
    assert_eq!(run_in_process(&src.setup, &dst.setup, &mut Engine::new(1), &mut Engine::new(1)).outcome, Outcome::Completed);
    let kicks = |d: &Side2| d.devices.live.lock().unwrap().len();
    let before = kicks(&dst);
    let again = run_in_process(&src.setup, &dst.setup, &mut Engine::new(1), &mut Engine::new(1));
    assert!(matches!(again.outcome, Outcome::Aborted { cause: SwitchoverError::AlreadyRan { .. } }), "{:?}", again.outcome);
    assert_eq!(kicks(&dst), before, "the destination's rings were started again");
}

/// A destination whose `load_state` takes 100 ms: longer than the source's
/// 1 ms `running` deadline in the in-doubt tests.
fn slow_destination(topo: &Arc<Topology>, log: &Arc<Mutex<Vec<String>>>) -> Side2 {
    side_with(topo, Side::Destination, None, log, false, Duration::from_millis(100))
}

#[test]
fn an_in_doubt_outcome_is_settled_when_the_destination_answers() {
    let (topo, log) = (small(), Arc::new(Mutex::new(Vec::new())));
    let (src, dst) = (side(&topo, Side::Source, None, &log, false), slow_destination(&topo, &log));
    let (x, y) = UnixStream::pair().unwrap();
    let (mut sp, mut dp) = (UnixPath::new(x), UnixPath::new(y.try_clone().unwrap()));
    let (mut e1, mut e2) = (Engine::new(1), Engine::new(1));
    let short = Deadlines { running: Duration::from_millis(1), ..Deadlines::default() };
    // The source gives up on `running` at once (1 ms): in doubt.
    let (s, mut d) = std::thread::scope(|sc| {
        let h = sc.spawn(|| Destination::new(&dst.setup, &mut e2, Session::new(3, &topo), Deadlines::default()).run(&mut dp));
        let s = Source::new(&src.setup, &mut e1, Session::new(3, &topo), short).run(&mut sp);
        (s, h.join().unwrap())
    });
    assert!(matches!(s.outcome, Outcome::InDoubt { .. }), "{:?}", s.outcome);
    assert!(d.running_here);
    // The path is back (a new connection): the source asks, the destination answers.
    let (x, y) = UnixStream::pair().unwrap();
    let (mut sp, mut dp) = (UnixPath::new(x), UnixPath::new(y));
    let settled = std::thread::scope(|sc| {
        let h = sc.spawn(|| answer_query(&mut d, &mut dp, Duration::from_secs(5)));
        let r = s.unsettled.expect("in doubt").settle(&src.setup, &mut e1, &mut sp, Duration::from_secs(5));
        h.join().unwrap().unwrap();
        r
    });
    assert_eq!(settled.outcome, Outcome::Completed);
    assert!(!log.lock().unwrap().iter().any(|x| x == "src resume_vcpus"), "never both sides");
}

#[test]
fn an_in_doubt_outcome_without_an_answer_stays_in_doubt() {
    let (topo, log) = (small(), Arc::new(Mutex::new(Vec::new())));
    let (src, dst) = (side(&topo, Side::Source, None, &log, false), slow_destination(&topo, &log));
    let (mut a, mut b) = channel_pair();
    let (mut e1, mut e2) = (Engine::new(1), Engine::new(1));
    let short = Deadlines { running: Duration::from_millis(1), ..Deadlines::default() };
    let s = std::thread::scope(|sc| {
        let _d = sc.spawn(|| Destination::new(&dst.setup, &mut e2, Session::new(4, &topo), Deadlines::default()).run(&mut b));
        Source::new(&src.setup, &mut e1, Session::new(4, &topo), short).run(&mut a)
    });
    assert!(matches!(s.outcome, Outcome::InDoubt { .. }));
    // Nobody answers the query: still in doubt, and the source does not resume.
    let (mut sp, _silent) = channel_pair();
    let t = Instant::now();
    let r = s.unsettled.unwrap().settle(&src.setup, &mut e1, &mut sp, Duration::from_millis(30));
    assert!(matches!(r.outcome, Outcome::InDoubt { .. }), "{:?}", r.outcome);
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert!(!log.lock().unwrap().iter().any(|x| x == "src resume_vcpus"));
}
