//! [`StepActions`] on a [`RealSide`]: vhost-user messages are split-phase (sent from
//! the lane, completed by the device's reader thread); notifier steps issue real
//! KVM ioctls through the exactly-once state machine; `drain_inflight` waits for the
//! guest's requests to complete in guest memory.
//!
//! Faults ([`crate::sim::Fault`], the same `KIND:STEP:DEVICE[:RING]` as the
//! simulation) are injected on the real components:
//!
//! * `error`: the request is sent and served, but its reply is treated as an error
//!   (a `GET_VRING_BASE` base is then not recorded); a step that is not a message
//!   fails without acting;
//! * `hang`: the device's backend process is stopped (SIGSTOP) just before the
//!   request is written, so it never answers and the side's watchdog turns that
//!   into a time-out; a step that is not a message waits out its deadline;
//! * `crash`: the backend process is killed (SIGKILL) just before the request is
//!   written, so the request fails with a closed channel; a step that is not a
//!   message fails once the backend is gone.
//!
//! Each fault fires once (on the named ring, or on the first ring performing the
//! step). Rollback runs on [`RealActions::for_rollback`] actions, which inject nothing.
//!
//! # Examples
//!
//! ```
//! use switchover::sim::{Fault, FaultKind};
//! let f: Fault = "crash:get_vring_base:net3".parse().unwrap();
//! assert_eq!(f.kind, FaultKind::Crash); // the backend is SIGKILLed just before the request
//! assert_eq!(f.device, "net3");
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frontend::BackendKind;
use super::kvm::Change;
use super::mem::QSIZE;
use super::side::RealSide;
use super::wire::Reply;
use crate::error::StepFailure;
use crate::exec::{Completion, StepActions};
use crate::sim::{Fault, FaultKind};
use crate::step::{Side, Step, StepKind};
use crate::topology::DeviceId;

/// Performs steps on one real side.
///
/// # Examples
///
/// ```no_run
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use switchover::real::dir::PrivateDir;
/// # use switchover::real::frontend::BackendKind;
/// # use switchover::real::mem::GuestMem;
/// # use switchover::real::side::{RealSide, SideConfig};
/// # use switchover::state::DeviceState;
/// # use switchover::step::Side;
/// # use switchover::topology::{DeviceId, Topology};
/// # let dir = PrivateDir::new().unwrap();
/// # let topo = Arc::new(Topology::builder().name("doc").net(1, 1).build().unwrap());
/// # let cfg = SideConfig {
/// #     exe: "target/release/switchover".into(), // this crate's binary runs the own backends
/// #     dir: dir.path().to_path_buf(),
/// #     qsd: None,
/// #     backends: vec![BackendKind::OwnNet],
/// #     images: vec![None],
/// #     deadline: Duration::from_secs(5),
/// #     qsd_iops: None,
/// #     hostile: vec![],
/// # };
/// # let mem = Arc::new(GuestMem::new(topo.total_rings() as usize).unwrap());
/// # let state = Arc::new(DeviceState::new(&topo));
/// # let side = Arc::new(RealSide::connect(&cfg, Side::Source, &topo, mem, state).unwrap());
/// # use switchover::real::actions::RealActions;
///
/// use switchover::exec::StepActions;
/// let actions = RealActions::new(side.clone());
/// // The rollback hooks read the used index from guest memory.
/// assert_eq!(actions.recover_base(DeviceId(0), 0), Some(side.mem().used_idx(0)));
/// assert_eq!(actions.recover_base(DeviceId(0), 9), None);
/// ```
#[derive(Debug, Clone)]
pub struct RealActions {
    side: Arc<RealSide>,
    faults: Arc<Vec<(Fault, AtomicBool)>>,
    restart: bool,
}

impl RealActions {
    /// Actions on `side` (no faults).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # use switchover::real::dir::PrivateDir;
    /// # use switchover::real::frontend::BackendKind;
    /// # use switchover::real::mem::GuestMem;
    /// # use switchover::real::side::{RealSide, SideConfig};
    /// # use switchover::state::DeviceState;
    /// # use switchover::step::Side;
    /// # use switchover::topology::{DeviceId, Topology};
    /// # let dir = PrivateDir::new().unwrap();
    /// # let topo = Arc::new(Topology::builder().name("doc").net(1, 1).build().unwrap());
    /// # let cfg = SideConfig {
    /// #     exe: "target/release/switchover".into(), // this crate's binary runs the own backends
    /// #     dir: dir.path().to_path_buf(),
    /// #     qsd: None,
    /// #     backends: vec![BackendKind::OwnNet],
    /// #     images: vec![None],
    /// #     deadline: Duration::from_secs(5),
    /// #     qsd_iops: None,
    /// #     hostile: vec![],
    /// # };
    /// # let mem = Arc::new(GuestMem::new(topo.total_rings() as usize).unwrap());
    /// # let state = Arc::new(DeviceState::new(&topo));
    /// # let side = Arc::new(RealSide::connect(&cfg, Side::Source, &topo, mem, state).unwrap());
    /// # use switchover::real::actions::RealActions;
    ///
    /// use switchover::exec::StepActions;
    /// let actions = RealActions::new(side.clone());
    /// assert_eq!(actions.recover_base(DeviceId(0), 1), Some(0));
    /// ```
    pub fn new(side: Arc<RealSide>) -> RealActions {
        RealActions { side, faults: Arc::new(Vec::new()), restart: false }
    }

    /// Actions for the source's rollback plan (no faults). They re-send
    /// `SET_VRING_CALL` just before each `SET_VRING_KICK`: a ring stopped by
    /// `GET_VRING_BASE` has lost its call eventfd in libvhost-user backends
    /// (qemu-storage-daemon closes it there and then fails on its next completion),
    /// and the rollback plan of a ring that was not lost restarts it with
    /// `SET_VRING_BASE`, `SET_VRING_KICK`, `SET_VRING_ENABLE` only.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # use switchover::real::dir::PrivateDir;
    /// # use switchover::real::frontend::BackendKind;
    /// # use switchover::real::mem::GuestMem;
    /// # use switchover::real::side::{RealSide, SideConfig};
    /// # use switchover::state::DeviceState;
    /// # use switchover::step::Side;
    /// # use switchover::topology::{DeviceId, Topology};
    /// # let dir = PrivateDir::new().unwrap();
    /// # let topo = Arc::new(Topology::builder().name("doc").net(1, 1).build().unwrap());
    /// # let cfg = SideConfig {
    /// #     exe: "target/release/switchover".into(), // this crate's binary runs the own backends
    /// #     dir: dir.path().to_path_buf(),
    /// #     qsd: None,
    /// #     backends: vec![BackendKind::OwnNet],
    /// #     images: vec![None],
    /// #     deadline: Duration::from_secs(5),
    /// #     qsd_iops: None,
    /// #     hostile: vec![],
    /// # };
    /// # let mem = Arc::new(GuestMem::new(topo.total_rings() as usize).unwrap());
    /// # let state = Arc::new(DeviceState::new(&topo));
    /// # let side = Arc::new(RealSide::connect(&cfg, Side::Source, &topo, mem, state).unwrap());
    /// # use switchover::real::actions::RealActions;
    ///
    /// use switchover::exec::StepActions;
    /// let rollback = RealActions::for_rollback(side.clone());
    /// assert!(rollback.reconnect(DeviceId(0))); // a fresh backend for a lost one
    /// assert_eq!(side.reconnects(), 1);
    /// ```
    pub fn for_rollback(side: Arc<RealSide>) -> RealActions {
        RealActions { side, faults: Arc::new(Vec::new()), restart: true }
    }

    /// Actions on `side` that inject `faults` (those naming a device of the side's
    /// topology; each fires once, on the side whose plan has the step).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # use switchover::real::dir::PrivateDir;
    /// # use switchover::real::frontend::BackendKind;
    /// # use switchover::real::mem::GuestMem;
    /// # use switchover::real::side::{RealSide, SideConfig};
    /// # use switchover::state::DeviceState;
    /// # use switchover::step::Side;
    /// # use switchover::topology::{DeviceId, Topology};
    /// # let dir = PrivateDir::new().unwrap();
    /// # let topo = Arc::new(Topology::builder().name("doc").net(1, 1).build().unwrap());
    /// # let cfg = SideConfig {
    /// #     exe: "target/release/switchover".into(), // this crate's binary runs the own backends
    /// #     dir: dir.path().to_path_buf(),
    /// #     qsd: None,
    /// #     backends: vec![BackendKind::OwnNet],
    /// #     images: vec![None],
    /// #     deadline: Duration::from_secs(5),
    /// #     qsd_iops: None,
    /// #     hostile: vec![],
    /// # };
    /// # let mem = Arc::new(GuestMem::new(topo.total_rings() as usize).unwrap());
    /// # let state = Arc::new(DeviceState::new(&topo));
    /// # let side = Arc::new(RealSide::connect(&cfg, Side::Source, &topo, mem, state).unwrap());
    /// # use switchover::real::actions::RealActions;
    ///
    /// use switchover::sim::Fault;
    /// let faults: Vec<Fault> = vec!["hang:get_vring_base:net0".parse().unwrap(), "crash:get_vring_base:blk9".parse().unwrap()];
    /// // Only the fault on a device of this side's topology (net0) is kept.
    /// let _actions = RealActions::with_faults(side.clone(), &faults);
    /// ```
    pub fn with_faults(side: Arc<RealSide>, faults: &[Fault]) -> RealActions {
        let topo = side.topology().clone();
        let faults =
            faults.iter().filter(|f| topo.device_by_name(&f.device).is_some()).map(|f| (f.clone(), AtomicBool::new(false))).collect();
        RealActions { side, faults: Arc::new(faults), restart: false }
    }

    fn fault_for(&self, step: &Step) -> Option<FaultKind> {
        let name = &self.side.topology().device(step.device).name;
        for (f, fired) in self.faults.iter() {
            if f.step != step.kind || &f.device != name || f.ring.is_some_and(|r| step.ring != Some(r)) {
                continue;
            }
            if fired.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Some(f.kind);
            }
        }
        None
    }

    fn injected(&self, step: &Step, kind: FaultKind) -> StepFailure {
        let k = match kind {
            FaultKind::Error => "error",
            FaultKind::Hang => "hang",
            FaultKind::Crash => "crash",
        };
        StepFailure::Injected { what: format!("{k} at {} on {} (real backend)", step.kind, self.side.topology().device(step.device).name) }
    }

    /// Causes `kind` on the step's backend process (hang: SIGSTOP, crash: SIGKILL).
    fn signal(&self, step: &Step, kind: FaultKind) {
        let sig = match kind {
            FaultKind::Hang => libc::SIGSTOP,
            FaultKind::Crash => libc::SIGKILL,
            FaultKind::Error => return,
        };
        // signal_backend waits until the signal took effect (see there).
        if let Err(e) = self.side.signal_backend(step.device, sig) {
            tracing::warn!(error = %e, "fault injection");
        }
    }

    fn drain(&self, g: u32, deadline: Duration) -> Result<(), StepFailure> {
        let mem = self.side.mem();
        let t = Instant::now();
        let mut spins = 0u32;
        loop {
            let (a, u) = (mem.avail_idx(g), mem.used_idx(g));
            if a == u {
                return Ok(());
            }
            if t.elapsed() > deadline {
                return Err(StepFailure::Other {
                    message: format!(
                        "{} request(s) still in flight after {} ms (avail {a}, used {u})",
                        a.wrapping_sub(u),
                        deadline.as_millis()
                    ),
                });
            }
            spins += 1;
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }
}

/// Whether a `GET_VRING_BASE` base is possible on a ring whose guest memory shows
/// `used` (the used ring's index) and `avail` (the avail ring's index).
///
/// A base is the backend's next avail index, a free-running `u16`. It cannot be
/// behind what the backend already completed (`used`), nor ahead of what the guest
/// published (`avail`), nor more than a ring's worth of descriptors ahead of
/// `used` (at most `QSIZE` requests can be outstanding). All three in wrapping
/// arithmetic: `base - used <= min(avail - used, QSIZE)`.
///
/// # Errors
/// What is impossible about it.
///
/// # Examples
///
/// ```
/// use switchover::real::actions::check_base;
/// // 5 completed, 9 published: the backend has taken between 5 and 9.
/// assert_eq!(check_base(7, 5, 9), Ok(7));
/// assert!(check_base(10, 5, 9).unwrap_err().contains("past the guest's avail index"));
/// assert!(check_base(4, 5, 9).is_err()); // behind what was completed
/// assert_eq!(check_base(2, 65534, 3), Ok(2)); // wrapping indices
/// ```
pub fn check_base(base: u16, used: u16, avail: u16) -> Result<u16, String> {
    let ahead = base.wrapping_sub(used);
    let published = avail.wrapping_sub(used);
    if ahead > QSIZE {
        return Err(format!("vring base {base} is {ahead} past the used index {used}, more than the ring size {QSIZE} (impossible)"));
    }
    if ahead > published {
        return Err(format!(
            "vring base {base} is past the guest's avail index {avail} (used {used}): requests never published (impossible)"
        ));
    }
    Ok(base)
}

impl StepActions for RealActions {
    /// Kills what is left of the device's backend (process and socket), starts a
    /// fresh one and does the connection handshake: see [`RealSide::reconnect`].
    fn reconnect(&self, device: DeviceId) -> bool {
        match self.side.reconnect(device) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "reconnect failed");
                false
            }
        }
    }

    /// The ring's used index in guest memory (the driver's shared memfd).
    ///
    /// Assumption: nothing is in flight on the ring, i.e. the backend completed
    /// every request it took, in order, before it was lost (the own backends
    /// complete under the vring lock; qemu-storage-daemon's rings are drained by
    /// `drain_inflight` before `GET_VRING_BASE`). A request the lost backend took
    /// but never completed lies after the used index and is served again by the
    /// restarted backend (block writes of the same data are idempotent).
    fn recover_base(&self, device: DeviceId, ring: u32) -> Option<u16> {
        (ring < self.side.topology().device(device).rings()).then(|| self.side.used_index(device, ring))
    }

    fn start(&self, step: &Step, done: Completion) {
        let s = &self.side;
        let ring = step.ring;
        let g = s.global(step.device, ring.unwrap_or(0));
        let fault = if self.faults.is_empty() { None } else { self.fault_for(step) };
        if let Some(f) = fault {
            self.signal(step, f);
            if !step.kind.is_message() {
                if f == FaultKind::Hang {
                    // A hung step: nothing answers before the deadline.
                    std::thread::sleep(step.deadline);
                    done.complete(Err(StepFailure::Timeout { after: step.deadline }));
                } else {
                    done.complete(Err(self.injected(step, f)));
                }
                return;
            }
        }
        match &step.kind {
            StepKind::HostNotifierOn | StepKind::HostNotifierOff | StepKind::GuestNotifierOn | StepKind::GuestNotifierOff => {
                let host = matches!(step.kind, StepKind::HostNotifierOn | StepKind::HostNotifierOff);
                let on = matches!(step.kind, StepKind::HostNotifierOn | StepKind::GuestNotifierOn);
                // A refused transition (already in that state) issues nothing and is not an error.
                done.complete(s.vm().change(g, host, on).map(|_: Change| ()));
            }
            StepKind::MemTxnBegin => {
                s.vm().txn_begin();
                done.complete(Ok(()));
            }
            StepKind::MemTxnCommit => {
                s.vm().txn_commit();
                done.complete(Ok(()));
            }
            StepKind::DrainInflight => done.complete(self.drain(g, step.deadline)),
            StepKind::Custom(_) => done.complete(Ok(())),
            kind => {
                let Some(dev) = s.device(step.device) else {
                    done.complete(Err(StepFailure::MissingState { what: "device has no vhost-user connection".into() }));
                    return;
                };
                let mut value = 0u16;
                if *kind == StepKind::SetVringBase {
                    match ring.and_then(|r| s.state().base(step.device, r)) {
                        Some(b) => value = b,
                        None => {
                            done.complete(Err(StepFailure::MissingState { what: "no vring base was captured for this ring".into() }));
                            return;
                        }
                    }
                }
                let fd = match kind {
                    StepKind::SetVringKick => s.vm().ring(g).map(|n| std::os::fd::AsRawFd::as_raw_fd(&n.kick)),
                    StepKind::SetVringCall => s.vm().ring(g).map(|n| std::os::fd::AsRawFd::as_raw_fd(&n.call)),
                    _ => None,
                };
                // `done` is completed once, by whichever reply settles the step.
                let slot = Arc::new(parking_lot::Mutex::new(Some(done)));
                let finish = move |r: Result<(), StepFailure>| {
                    if let Some(d) = slot.lock().take() {
                        d.complete(r);
                    }
                };
                if self.restart && *kind == StepKind::SetVringKick {
                    if let Some(call) = s.vm().ring(g).map(|n| std::os::fd::AsRawFd::as_raw_fd(&n.call)) {
                        let fail = finish.clone();
                        let pre: super::wire::OnReply = Box::new(move |r: Result<Reply, StepFailure>| {
                            if let Err(e) = r {
                                fail(Err(e));
                            }
                        });
                        dev.send_step(&StepKind::SetVringCall, ring, g, 0, Some(call), s.mem(), step.deadline, pre);
                    }
                }
                let injected = (fault == Some(FaultKind::Error)).then(|| self.injected(step, FaultKind::Error));
                if *kind == StepKind::SetVringBase && s.side() == Side::Destination && dev.backend == BackendKind::Qsd {
                    // libvhost-user (qemu-storage-daemon) reads the used index from
                    // guest memory at SET_VRING_ADDR only. The plan sends ADDR in
                    // prepare, while the source still completes requests, so that
                    // index is stale: re-send ADDR after BASE, once the source stopped.
                    let (fail, side) = (finish.clone(), s.clone());
                    let on_base: super::wire::OnReply = Box::new(move |r: Result<Reply, StepFailure>| match r {
                        Ok(_) => side.record_sent_base(g, value),
                        Err(e) => fail(Err(e)),
                    });
                    dev.send_step(kind, ring, g, value, None, s.mem(), step.deadline, on_base);
                    let on_addr: super::wire::OnReply = Box::new(move |r: Result<Reply, StepFailure>| match (r, injected) {
                        (Ok(_), Some(e)) => finish(Err(e)),
                        (r, _) => finish(r.map(|_| ())),
                    });
                    dev.send_step(&StepKind::SetVringAddr, ring, g, 0, None, s.mem(), step.deadline, on_addr);
                    return;
                }
                let done = finish;
                let kind2 = kind.clone();
                let side = s.clone();
                let device = step.device;
                let on_reply = Box::new(move |r: Result<Reply, StepFailure>| match (r, &kind2) {
                    // The reply arrived (the wire stays in step) but counts as an error.
                    (Ok(_), _) if injected.is_some() => done(Err(injected.expect("checked"))),
                    (Ok(Reply::State(_, num)), StepKind::GetVringBase) => {
                        // The reader checked ring index and 16-bit range; the base
                        // must also be possible for this ring in guest memory before
                        // it is recorded (and later sent to the destination).
                        let (used, avail) = (side.mem().used_idx(g), side.mem().avail_idx(g));
                        match check_base(num as u16, used, avail) {
                            Ok(base) => {
                                if let Some(r) = ring {
                                    side.state().set_base(device, r, base);
                                }
                                done(Ok(()));
                            }
                            Err(what) => done(Err(StepFailure::Garbage { what })),
                        }
                    }
                    (Ok(_), StepKind::GetVringBase) => {
                        done(Err(StepFailure::Garbage { what: "GET_VRING_BASE answered without a vring state".into() }))
                    }
                    (Ok(_), StepKind::SetVringBase) => {
                        side.record_sent_base(g, value);
                        done(Ok(()));
                    }
                    (Ok(_), _) => done(Ok(())),
                    (Err(e), _) => done(Err(e)),
                });
                dev.send_step(kind, ring, g, value, fd, s.mem(), step.deadline, on_reply);
            }
        }
    }
}
