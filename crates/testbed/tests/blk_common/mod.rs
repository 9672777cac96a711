//! A small VMM for the blk backend's tests: one blk device whose backend is the
//! own inflight backend (a re-execution of the test binary), the frontend crate's
//! actions with the storage steps on the backend's control socket, guest memory
//! shared by both sides (one host), and a checking guest driver per ring.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use switchover::error::StepFailure;
use switchover::exec::{Completion, Engine, StepActions};
use switchover::ids::{DeviceId, Side as Role};
use switchover::recipe::{build, BlkPolicy, NoCosts, RecipeOptions, RouteCommits};
use switchover::roles::{run_in_process, SideSetup, SwitchoverReport, VmmHooks};
use switchover::state::DeviceState;
use switchover::step::{Step, StepKind};
use switchover::topology::Topology;
use switchover_testbed::blk::driver::{pattern, BlkDriver, Op};
use switchover_testbed::blk::{self, BlkExe, BlkOptions, Control};
use switchover_testbed::child::ChildProc;
use switchover_testbed::mem::GuestMem;
use switchover_testbed::RigError;
use switchover_vhost::actions::{VhostActions, VhostDevices};
use switchover_vhost::frontend::{Frontend, FrontendConfig};
use switchover_vhost::memory::VringConfig;
use switchover_vhost::sink::NotifierSink;
use vmm_sys_util::eventfd::EventFd;

/// The name of the ignored test each test file has that runs the backend.
pub const CHILD_TEST: &str = "blk_backend_child_process";

/// The backend binary: this test binary, re-executed.
pub fn exe() -> BlkExe {
    BlkExe::Reexec { exe: std::env::current_exe().expect("test binary"), test: CHILD_TEST.into() }
}

/// Whether a missing real component must fail the test.
pub fn require_real() -> bool {
    std::env::var("SWITCHOVER_REQUIRE_REAL").as_deref() == Ok("1")
}

/// A fresh image of `mib` MiB in `dir`.
pub fn image(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(format!("{name}.img"));
    std::fs::File::create(&p).unwrap().set_len(mib << 20).unwrap();
    p
}

/// The guest's doorbells and interrupts: kick and call eventfds, shared by both
/// sides (they move with the guest; only the side running a ring polls them).
pub struct Guest {
    pub kicks: Vec<EventFd>,
    pub calls: Vec<EventFd>,
}

impl Guest {
    pub fn new(queues: u32) -> Arc<Guest> {
        Arc::new(Guest {
            kicks: (0..queues).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect(),
            calls: (0..queues).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect(),
        })
    }
    pub fn kick(&self, ring: u32) {
        self.kicks[ring as usize].write(1).unwrap();
    }
}

/// Copies the whole of `from` into `to` (the last RAM pass of a migration between
/// two hosts: each side has its own copy of guest memory).
pub fn copy_memory(from: &GuestMem, to: &GuestMem) {
    use vm_memory::{Bytes, GuestAddress};
    let r = from.region();
    let mut buf = vec![0u8; r.size as usize];
    from.mem().read_slice(&mut buf, GuestAddress(r.guest_addr)).unwrap();
    to.mem().write_slice(&buf, GuestAddress(r.guest_addr)).unwrap();
}

/// One side: the device's backend process, its frontend, its control socket.
pub struct Side {
    pub label: String,
    pub queues: u32,
    pub guest: Arc<Guest>,
    /// This side's guest memory.
    pub mem: Arc<GuestMem>,
    dir: PathBuf,
    image: PathBuf,
    opts: BlkOptions,
    fcfg: FrontendConfig,
    fe: RwLock<Arc<Frontend>>,
    proc_: Mutex<ChildProc>,
    control: RwLock<Control>,
    pub reconnects: AtomicU32,
}

impl Side {
    /// Starts the backend and does the handshake.
    pub fn spawn(
        label: &str,
        guest: &Arc<Guest>,
        dir: &Path,
        image: &Path,
        opts: BlkOptions,
        fcfg: FrontendConfig,
    ) -> Result<Arc<Side>, RigError> {
        let queues = u32::from(opts.queues);
        let (fe, p, c) = start(label, dir, image, &opts, &fcfg)?;
        Ok(Arc::new(Side {
            label: label.into(),
            queues,
            guest: guest.clone(),
            mem: Arc::new(GuestMem::new(queues as usize).map_err(RigError::io("guest memory"))?),
            dir: dir.into(),
            image: image.into(),
            opts,
            fcfg,
            fe: RwLock::new(fe),
            proc_: Mutex::new(p),
            control: RwLock::new(c),
            reconnects: AtomicU32::new(0),
        }))
    }

    pub fn frontend(&self) -> Arc<Frontend> {
        self.fe.read().clone()
    }
    pub fn control(&self) -> Control {
        self.control.read().clone()
    }
    pub fn pid(&self) -> Option<u32> {
        self.proc_.lock().pid()
    }

    /// Starts every ring at base 0, as a running source does.
    pub fn bring_up(&self, d: Duration) -> Result<(), StepFailure> {
        let fe = self.frontend();
        fe.set_features(fe.features(), d).wait()?;
        fe.set_mem_table(&[self.mem.region()], d).wait()?;
        fe.setup_inflight(switchover_testbed::mem::QSIZE, d).wait()?;
        for r in 0..self.queues {
            let v = GuestMem::vring(r);
            let h = |gpa| self.mem.host_addr(gpa);
            let p = [
                fe.set_vring_num(r, v.size, d),
                fe.set_vring_addr(r, h(v.desc), h(v.used), h(v.avail), d),
                fe.set_vring_base(r, 0, d),
                fe.set_vring_call(r, self.guest.calls[r as usize].as_raw_fd(), d),
                fe.set_vring_enable(r, true, d),
                fe.set_vring_kick(r, self.guest.kicks[r as usize].as_raw_fd(), d),
            ];
            for x in p {
                x.wait()?;
            }
        }
        Ok(())
    }

    /// Kills the backend and waits until it is gone.
    pub fn kill(&self) {
        self.proc_.lock().kill();
    }

    /// Sends a signal to the backend and waits until it took effect.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, sig) };
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_millis(500) {
                let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = st.rsplit_once(')').map(|(_, r)| r.trim_start().chars().next().unwrap_or('?')).unwrap_or('X');
                let done = match sig {
                    libc::SIGSTOP => "Tt".contains(state),
                    _ => true,
                };
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

fn start(
    label: &str,
    dir: &Path,
    image: &Path,
    opts: &BlkOptions,
    fcfg: &FrontendConfig,
) -> Result<(Arc<Frontend>, ChildProc, Control), RigError> {
    let s = blk::spawn(&exe(), dir, label, image, opts.clone())?;
    let fe = Frontend::connect(s.stream, fcfg).map_err(|e| RigError::Config(e.to_string()))?;
    Ok((Arc::new(fe), s.proc_, s.control.expect("control socket")))
}

impl VhostDevices for Side {
    fn frontend(&self, device: DeviceId) -> Option<Arc<Frontend>> {
        (device.0 == 0).then(|| self.frontend())
    }
    fn vring(&self, device: DeviceId, ring: u32) -> Option<VringConfig> {
        (device.0 == 0 && ring < self.queues).then(|| GuestMem::vring(ring))
    }
    fn reconnect(&self, device: DeviceId) -> bool {
        if device.0 != 0 {
            return false;
        }
        // The old process goes first (killed and reaped): it can no longer touch
        // the rings or the region.
        self.kill();
        let old = self.frontend();
        old.close();
        match start(&format!("{}-re", self.label), &self.dir, &self.image, &self.opts, &self.fcfg) {
            Ok((fe, p, c)) => {
                if let Some(region) = old.inflight() {
                    fe.adopt_inflight(region);
                }
                *self.fe.write() = fe;
                *self.proc_.lock() = p;
                *self.control.write() = c;
                self.reconnects.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err(e) => {
                eprintln!("reconnect failed: {e}");
                false
            }
        }
    }
}

impl NotifierSink for Side {
    fn kick_fd(&self, _d: DeviceId, ring: u32) -> Option<RawFd> {
        self.guest.kicks.get(ring as usize).map(AsRawFd::as_raw_fd)
    }
    fn call_fd(&self, _d: DeviceId, ring: u32) -> Option<RawFd> {
        self.guest.calls.get(ring as usize).map(AsRawFd::as_raw_fd)
    }
    fn host_notifier(&self, _d: DeviceId, _ring: u32, _on: bool) -> Result<(), StepFailure> {
        Ok(())
    }
    fn guest_notifier(&self, _d: DeviceId, _ring: u32, _on: bool) -> Result<(), StepFailure> {
        Ok(())
    }
}

/// What a test does at a step: `Some(result)` completes the step with it without
/// doing it; `None` lets it run (after whatever the hook did, a kill say).
pub type Hook = Arc<dyn Fn(&Side, &Step) -> Option<Result<(), StepFailure>> + Send + Sync>;

/// The side's step actions: the frontend crate's, the storage steps on the
/// control socket, a test hook.
pub struct Actions {
    side: Arc<Side>,
    inner: VhostActions,
    hook: Option<Hook>,
}

impl Actions {
    pub fn new(side: &Arc<Side>, state: &Arc<DeviceState>, hook: Option<Hook>) -> Arc<Actions> {
        let inner = VhostActions::new(side.clone(), Arc::new(MemOf(side.mem.clone())), side.clone(), state.clone());
        Arc::new(Actions { side: side.clone(), inner, hook })
    }
    pub fn for_rollback(&self) -> Arc<Actions> {
        Arc::new(Actions { side: self.side.clone(), inner: self.inner.for_rollback(), hook: None })
    }
}

/// Guest memory as the frontend crate's trait.
pub struct MemOf(pub Arc<GuestMem>);

impl switchover_vhost::memory::GuestMemory for MemOf {
    fn regions(&self) -> Vec<switchover_vhost::memory::MemoryRegion> {
        vec![self.0.region()]
    }
    fn read_u16(&self, gpa: u64) -> Option<u16> {
        switchover_vhost::memory::GuestMemory::read_u16(&*self.0, gpa)
    }
}

impl StepActions for Actions {
    fn start(&self, step: &Step, done: Completion) {
        if let Some(h) = &self.hook {
            if let Some(r) = h(&self.side, step) {
                done.complete(r);
                return;
            }
        }
        let storage = |r: Result<(), RigError>| r.map_err(|e| StepFailure::Backend { message: e.to_string() });
        match step.kind {
            StepKind::StorageInactivate => done.complete(storage(self.side.control().inactivate())),
            StepKind::StorageActivate | StepKind::StorageReactivate => done.complete(storage(self.side.control().activate())),
            _ => self.inner.start(step, done),
        }
    }
    fn reconnect(&self, device: DeviceId) -> bool {
        self.side.reconnect(device)
    }
    fn recover_base(&self, device: DeviceId, ring: u32) -> Option<u16> {
        self.inner.recover_base(device, ring)
    }
    fn abandon(&self, _device: DeviceId) -> bool {
        self.side.kill();
        true
    }
}

/// The recipe: one host (no dirty log), no reconcile, no MSI routes; storage
/// handed over; `policy` for the device.
pub fn recipe(policy: BlkPolicy) -> RecipeOptions {
    RecipeOptions {
        dirty_log: false,
        reconcile: false,
        routes: RouteCommits::None,
        storage: true,
        blk_policy: policy,
        deadline: Duration::from_secs(5),
        drain_deadline: Duration::from_secs(5),
        ..RecipeOptions::engine()
    }
}

/// The topology: one blk device of `queues` rings.
pub fn topology(queues: u32) -> Arc<Topology> {
    Arc::new(Topology::builder().name("blk").blk(1, queues).build().unwrap())
}

/// The destination's hooks: loading the state copies the source's guest memory
/// (the final RAM pass; the source's rings are all stopped by then).
struct LoadMemory {
    from: Arc<GuestMem>,
    to: Arc<GuestMem>,
}

impl VmmHooks for LoadMemory {
    fn load_state(&self, _state: &[switchover::state::DeviceBlob]) -> Result<(), switchover::roles::HookError> {
        copy_memory(&self.from, &self.to);
        Ok(())
    }
}

/// A whole switchover between the two sides, both roles in this process, each
/// side with its own guest memory.
pub fn switchover(
    src: &Arc<Side>,
    dst: &Arc<Side>,
    opts: &RecipeOptions,
    src_hook: Option<Hook>,
    dst_hook: Option<Hook>,
) -> (SwitchoverReport, Arc<DeviceState>) {
    let topo = topology(src.queues);
    let setup = |side: &Arc<Side>, role: Role, hook: Option<Hook>| {
        let state = Arc::new(DeviceState::new(&topo));
        let plan = Arc::new(build(&topo, role, opts, &NoCosts).unwrap());
        let a = Actions::new(side, &state, hook);
        let rb = a.for_rollback();
        (SideSetup::new(plan, a, state.clone()).with_recovery(opts.clone(), Arc::new(NoCosts), rb), state)
    };
    let (s, src_state) = setup(src, Role::Source, src_hook);
    let (d, _) = setup(dst, Role::Destination, dst_hook);
    let d = d.with_hooks(Arc::new(LoadMemory { from: src.mem.clone(), to: dst.mem.clone() }));
    let rep = run_in_process(&s, &d, &mut Engine::new(2), &mut Engine::new(2));
    (rep, src_state)
}

/// Sector of request `n` on ring `g` (distinct for every request of a test).
pub fn sector(g: u32, n: u32) -> u64 {
    u64::from(g) * 1024 + u64::from(n)
}

/// Reads sector `s` of `image`.
pub fn read_sector(image: &Path, s: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(image).unwrap();
    let mut b = vec![0u8; 512];
    f.read_exact_at(&mut b, s * 512).unwrap();
    b
}

/// Submits `k` writes on every ring (each to a sector of its own) and kicks.
pub fn writes(mem: &GuestMem, guest: &Guest, drivers: &mut [BlkDriver], k: u32) {
    for d in drivers.iter_mut() {
        for _ in 0..k {
            let n = d.submitted().len() as u32;
            d.submit(mem, Op::Write { sector: sector(d.ring(), n) }).unwrap();
        }
        guest.kick(d.ring());
    }
}

/// Every request completed once with OK; every acknowledged write is on the image.
pub fn check(mem: &GuestMem, drivers: &mut [BlkDriver], img: &Path) {
    for d in drivers.iter_mut() {
        d.wait_all(mem, Duration::from_secs(20)).unwrap();
        d.check_exactly_once().unwrap();
        for x in d.done() {
            if let Op::Write { sector } = x.op {
                assert_eq!(
                    read_sector(img, sector),
                    pattern(d.ring(), x.n),
                    "ring {} request {}: acknowledged write not on the image",
                    d.ring(),
                    x.n
                );
            }
        }
    }
}
