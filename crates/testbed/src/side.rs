//! One side's real world: a KVM VM and its notifiers, a vhost-user backend process
//! and [`Frontend`] per device, the side's own guest memory, its devices'
//! configurations, and the state captured or applied. It is the rig's VMM: it
//! implements the frontend crate's [`VhostDevices`].
//!
//! Each ring's irqfd raises a GSI of its own (`FIRST_MSI_GSI + g`), routed to
//! the MSI message of the ring's vector once the VM's routing table is committed.
//!
//! # Examples
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use switchover_testbed::dir::PrivateDir;
//! # use switchover_testbed::mem::GuestMem;
//! # use switchover_testbed::side::{BackendKind, RealSide, SideConfig};
//! # use switchover::state::DeviceState;
//! # use switchover::ids::{DeviceId, Side};
//! # use switchover::topology::Topology;
//! # let dir = PrivateDir::new().unwrap();
//! # let topo = Arc::new(Topology::builder().name("doc").net(1, 1).build().unwrap());
//! # let cfg = SideConfig {
//! #     exe: "target/release/switchover".into(), // the CLI binary runs the own backends
//! #     dir: dir.path().to_path_buf(),
//! #     qsd: None,
//! #     backends: vec![BackendKind::OwnNet],
//! #     images: vec![None],
//! #     deadline: Duration::from_secs(5),
//! #     qsd_iops: None,
//! #     hostile: vec![],
//! #     blk_iops: None,
//! #     reply_ack: true,
//! #     image_lock: true,
//! # };
//! # let mem = Arc::new(GuestMem::new(topo.total_rings() as usize).unwrap());
//! # let state = Arc::new(DeviceState::new(&topo));
//! # let devices = Arc::new(switchover_testbed::vmm::Devices::initial(&topo));
//! let side = Arc::new(RealSide::connect(&cfg, Side::Source, &topo, mem, state, devices).unwrap());
//! side.bring_up(Duration::from_secs(5)).unwrap(); // a running source: rings at base 0
//! assert_eq!(side.notifiers().ioctls(DeviceId(0), 0, true), 1); // ioeventfd registered once
//! side.shutdown();
//! assert!(side.pids().is_empty());
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use switchover::error::StepFailure;
use switchover::ids::{DeviceId, Side};
use switchover::state::DeviceState;
use switchover::topology::{Device, DeviceKind, Topology};
use switchover_vhost::actions::VhostDevices;
use switchover_vhost::config::DeviceConfig;
use switchover_vhost::frontend::{Frontend, FrontendConfig, InflightMode};
use switchover_vhost::kvm::{KvmNotifiers, KvmVm, RingSlot, FIRST_MSI_GSI};
use switchover_vhost::memory::VringConfig;
use switchover_vhost::sink::{NotifierSink, Route};

use crate::backend::{spawn_own_with, NO_REPLY_ACK_ENV, RING_LOG_ENV};
use crate::blk::{self, BlkExe, BlkOptions, Control};
use crate::child::ChildProc;
use crate::error::RigError;
use crate::mem::{GuestMem, QSIZE};
use crate::qsd;
use crate::vmm::Devices;

use crate::mem::DOORBELL_BASE;

/// Who serves a device.
///
/// ```
/// use switchover_testbed::side::BackendKind;
/// assert_eq!(BackendKind::OwnNet.name(), "own-net");
/// assert_eq!(BackendKind::Qsd.name(), "qemu-storage-daemon");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The project's own vhost-user net backend.
    OwnNet,
    /// The project's own vhost-user blk backend with an inflight region
    /// ([`crate::blk`]): hands its requests in flight over, gives its image up.
    OwnBlk,
    /// qemu-storage-daemon's vhost-user-blk export.
    Qsd,
}

impl BackendKind {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::OwnNet => "own-net",
            BackendKind::OwnBlk => "own-blk",
            BackendKind::Qsd => "qemu-storage-daemon",
        }
    }
}

/// How to start a side's backends.
#[derive(Debug, Clone)]
pub struct SideConfig {
    /// The binary that runs the own backends (`switchover real __backend ...`).
    pub exe: PathBuf,
    /// The private directory for sockets and images.
    pub dir: PathBuf,
    /// qemu-storage-daemon, if installed.
    pub qsd: Option<PathBuf>,
    /// The backend of each device, by device id.
    pub backends: Vec<BackendKind>,
    /// The image of each blk device, by device id.
    pub images: Vec<Option<PathBuf>>,
    /// Deadline of each request outside a plan (bring-up).
    pub deadline: Duration,
    /// Throttle qemu-storage-daemon to this many IOPS.
    pub qsd_iops: Option<u32>,
    /// Devices whose backend misbehaves on purpose: (device name, MODE@REQUEST).
    pub hostile: Vec<(String, String)>,
    /// Throttle each own blk backend to this many IOPS (so that requests are in
    /// flight at the stop).
    pub blk_iops: Option<u32>,
    /// The own backends offer `REPLY_ACK`. Off: they do not, and the frontend
    /// drives them without acknowledgements (fire-and-forget requests).
    pub reply_ack: bool,
    /// The own blk backends lock their image (`flock`) while it is active; off
    /// only for a negative control (two backends may then both write it).
    pub image_lock: bool,
}

/// One backend process's record of its rings ([`crate::ringlog`]) and when the
/// rig cut it off, if it did.
#[derive(Debug, Clone)]
pub struct BackendRecord {
    /// The device.
    pub device: DeviceId,
    /// Its ring log.
    pub ring_log: PathBuf,
    /// When it was killed to cut it off ([`RealSide::abandon`]) or replaced.
    pub killed: Option<Instant>,
}

/// One side of the rig.
pub struct RealSide {
    side: Side,
    topo: Arc<Topology>,
    mem: Arc<GuestMem>,
    devices_cfg: Arc<Devices>,
    _vm: KvmVm,
    notifiers: Arc<KvmNotifiers>,
    cfg: SideConfig,
    devices: Vec<RwLock<Arc<Frontend>>>,
    first_ring: Vec<u32>,
    state: Arc<DeviceState>,
    procs: Mutex<Vec<ChildProc>>,
    reconnects: AtomicU32,
    reconnected: Mutex<Vec<DeviceId>>,
    /// Each own blk backend's control socket (its storage switch).
    controls: Vec<RwLock<Option<Control>>>,
    /// Devices whose image the side gave up (a `storage_inactivate` started).
    released: Vec<AtomicBool>,
    /// Every backend process started, with its ring log.
    records: Mutex<Vec<BackendRecord>>,
    /// Backend processes started so far (names ring logs apart).
    spawned: AtomicU32,
}

impl std::fmt::Debug for RealSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealSide").field("side", &self.side).field("devices", &self.devices.len()).finish()
    }
}

impl RealSide {
    /// Creates the side's VM and notifiers, starts a backend per device and
    /// connects to it (handshake done; nothing set up on its rings yet).
    /// `devices` holds the side's device configurations (the source's as the
    /// guest set them up; the destination's arrive with the migration).
    ///
    /// # Errors
    /// [`RigError`]: KVM, a backend that does not start, a failed handshake.
    pub fn connect(
        cfg: &SideConfig,
        side: Side,
        topo: &Arc<Topology>,
        mem: Arc<GuestMem>,
        state: Arc<DeviceState>,
        devices_cfg: Arc<Devices>,
    ) -> Result<RealSide, RigError> {
        let vm = KvmVm::new()?;
        let mut first_ring = Vec::new();
        let mut slots = Vec::new();
        let mut n = 0;
        for d in topo.devices() {
            first_ring.push(n);
            for r in 0..d.rings() {
                let g = n + r;
                slots.push(RingSlot { device: d.id, ring: r, doorbell: DOORBELL_BASE + 4 * u64::from(g), gsi: FIRST_MSI_GSI + g });
            }
            n += d.rings();
        }
        let notifiers = Arc::new(KvmNotifiers::new(vm.fd().clone(), slots).map_err(RigError::io("eventfd"))?);
        let mut procs = Vec::new();
        let mut devices = Vec::new();
        let mut controls = Vec::new();
        let mut records = Vec::new();
        for (n, d) in topo.devices().iter().enumerate() {
            // On error, `procs` is dropped: every backend started so far is stopped.
            let hostile = cfg.hostile.iter().find(|(n, _)| *n == d.name).map(|(_, m)| m.as_str());
            // A running source holds its images; a destination takes them in the window.
            let b = start_backend(cfg, side, d, hostile, side == Side::Source, n as u32)?;
            procs.push(b.proc_);
            devices.push(RwLock::new(Arc::new(b.fe)));
            controls.push(RwLock::new(b.control));
            records.push(BackendRecord { device: d.id, ring_log: b.ring_log, killed: None });
        }
        Ok(RealSide {
            side,
            topo: topo.clone(),
            mem,
            devices_cfg,
            _vm: vm,
            notifiers,
            cfg: cfg.clone(),
            devices,
            first_ring,
            state,
            procs: Mutex::new(procs),
            reconnects: AtomicU32::new(0),
            reconnected: Mutex::new(Vec::new()),
            released: topo.devices().iter().map(|_| AtomicBool::new(false)).collect(),
            controls,
            records: Mutex::new(records),
            spawned: AtomicU32::new(topo.devices().len() as u32),
        })
    }

    /// Starts every ring of every device with base 0, as a running source does
    /// (notifiers registered, features, memory, ring set-up, kick, call, enable as
    /// the guest has it), and commits the VM's MSI routes.
    ///
    /// # Errors
    /// The request or registration that failed, naming device and ring.
    pub fn bring_up(&self, deadline: Duration) -> Result<(), RigError> {
        for d in self.topo.devices() {
            let fe = self.devices[d.id.0 as usize].read().clone();
            let name = fe.name().to_string();
            fe.set_features(fe.features(), deadline).wait().map_err(RigError::step(format!("{name} set_features")))?;
            fe.set_mem_table(&[self.mem.region()], deadline).wait().map_err(RigError::step(format!("{name} set_mem_table")))?;
            // The device's inflight region (where the backend keeps one), before any kick.
            fe.setup_inflight(QSIZE, deadline).wait().map_err(RigError::step(format!("{name} inflight region")))?;
            for r in 0..d.rings() {
                let at = |what: &str| format!("{name} ring {r} {what}");
                let n = &self.notifiers;
                n.host_notifier(d.id, r, true).map_err(RigError::step(at("host_notifier_on")))?;
                n.guest_notifier(d.id, r, true).map_err(RigError::step(at("guest_notifier_on")))?;
                self.start_ring(d.id, r, false, deadline).map_err(RigError::step(at("start")))?;
            }
        }
        self.commit_routes().map_err(RigError::step("KVM_SET_GSI_ROUTING"))?;
        // A backend without REPLY_ACK took all of it fire-and-forget: one round
        // trip shows it alive and in step before the guest uses it.
        for d in self.topo.devices() {
            let fe = self.devices[d.id.0 as usize].read().clone();
            if !fe.acks() {
                fe.probe(deadline).wait().map_err(RigError::step(format!("{} probe", fe.name())))?;
            }
        }
        Ok(())
    }

    /// Sets a ring up as the guest has it and starts it at base 0 (NUM, ADDR —
    /// with the log flag while dirty logging runs —, BASE, CALL or none, ENABLE
    /// or not, KICK), waiting for every reply: what the VMM does when the guest
    /// (re)initialises a ring.
    ///
    /// # Errors
    /// A request failed.
    pub fn start_ring(&self, d: DeviceId, r: u32, logged: bool, deadline: Duration) -> Result<(), StepFailure> {
        self.start_ring_at(d, r, logged, None, deadline)
    }

    /// Starts a ring that ran before on a new backend, at `base` (recovered from
    /// guest memory and the inflight region, whose requests in flight the new
    /// backend resubmits): what the VMM does when it brings a crashed backend back.
    ///
    /// # Errors
    /// A request failed.
    pub fn restart_ring(&self, d: DeviceId, r: u32, base: u16, deadline: Duration) -> Result<(), StepFailure> {
        self.start_ring_at(d, r, false, Some(base), deadline)
    }

    fn start_ring_at(&self, d: DeviceId, r: u32, logged: bool, base: Option<u16>, deadline: Duration) -> Result<(), StepFailure> {
        let fe = self.frontend(d).ok_or_else(|| StepFailure::MissingState { what: format!("no device {}", d.0) })?;
        let setup = self.config(d).and_then(|c| c.rings.get(r as usize).copied());
        let setup = setup.ok_or_else(|| StepFailure::MissingState { what: format!("no configuration for ring {r}") })?;
        let Some(v) = setup.vring else { return Ok(()) };
        // A ring the guest sets up afresh starts with nothing in flight: its queue
        // of the inflight region starts over (the backend initialises it at the kick).
        if base.is_none() {
            if let Some(q) = fe.inflight().as_ref().and_then(|g| u16::try_from(r).ok().and_then(|r| g.queue(r))) {
                q.reset();
            }
        }
        let n = &self.notifiers;
        let hva = |gpa| self.mem.host_addr(gpa);
        let kick = n.kick_fd(d, r).ok_or_else(|| StepFailure::MissingState { what: "no kick eventfd".into() })?;
        let call = n.call_fd(d, r).ok_or_else(|| StepFailure::MissingState { what: "no call eventfd".into() })?;
        let addr = if logged {
            fe.set_vring_addr_logged(r, hva(v.desc), hva(v.used), hva(v.avail), v.used, deadline)
        } else {
            fe.set_vring_addr(r, hva(v.desc), hva(v.used), hva(v.avail), deadline)
        };
        // Enabled before it is kicked (QEMU's order since 2022): a net tx ring
        // started while disabled would discard what it holds.
        let pending = [
            fe.set_vring_num(r, v.size, deadline),
            addr,
            fe.set_vring_base(r, base.unwrap_or(0), deadline),
            if setup.vector.is_some() { fe.set_vring_call(r, call, deadline) } else { fe.set_vring_call_none(r, deadline) },
            fe.set_vring_enable(r, setup.enabled, deadline),
            fe.set_vring_kick(r, kick, deadline),
        ];
        for p in pending {
            p.wait()?;
        }
        Ok(())
    }

    /// Stops a ring (`GET_VRING_BASE`), as the VMM does when the guest resets it.
    ///
    /// # Errors
    /// The request failed.
    pub fn stop_ring(&self, d: DeviceId, r: u32, deadline: Duration) -> Result<u16, StepFailure> {
        let fe = self.frontend(d).ok_or_else(|| StepFailure::MissingState { what: format!("no device {}", d.0) })?;
        fe.get_vring_base(r, deadline).wait()
    }

    /// Enables or disables a ring (the guest changed its active queue pairs).
    ///
    /// # Errors
    /// The request failed.
    pub fn enable_ring(&self, d: DeviceId, r: u32, on: bool, deadline: Duration) -> Result<(), StepFailure> {
        let fe = self.frontend(d).ok_or_else(|| StepFailure::MissingState { what: format!("no device {}", d.0) })?;
        fe.set_vring_enable(r, on, deadline).wait()
    }

    /// Commits the VM's routing table from every device's MSI-X table (what the
    /// VMM does when the guest writes an MSI-X entry).
    ///
    /// # Errors
    /// The commit failed.
    pub fn commit_routes(&self) -> Result<(), StepFailure> {
        let mut routes = Vec::new();
        for d in self.topo.devices() {
            let c = self.config(d.id);
            for r in 0..d.rings() {
                routes.push(Route { device: d.id, ring: r, msi: c.as_ref().and_then(|c| c.msi(r)) });
            }
        }
        self.notifiers.commit_routes(&routes)
    }

    /// The side's device configurations.
    pub fn devices(&self) -> &Arc<Devices> {
        &self.devices_cfg
    }

    /// Where a net device's backend writes the packets it transmits.
    pub fn wire(&self, d: DeviceId) -> Option<PathBuf> {
        let dev = self.topo.devices().get(d.0 as usize)?;
        (dev.kind == DeviceKind::Net).then(|| wire_path(&self.cfg.dir, self.side, &dev.name))
    }

    /// Which side it is.
    pub fn side(&self) -> Side {
        self.side
    }
    /// The topology.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topo
    }
    /// Guest memory.
    pub fn mem(&self) -> &Arc<GuestMem> {
        &self.mem
    }
    /// The side's KVM notifiers.
    pub fn notifiers(&self) -> &Arc<KvmNotifiers> {
        &self.notifiers
    }
    /// The side's device state.
    pub fn state(&self) -> &Arc<DeviceState> {
        &self.state
    }
    /// The global index of a device's ring (its place in guest memory).
    pub fn global(&self, d: DeviceId, r: u32) -> u32 {
        self.first_ring.get(d.0 as usize).copied().unwrap_or(0) + r
    }
    /// Where a ring lives now (its configuration's, or its own area's).
    fn ring_config(&self, d: DeviceId, r: u32) -> VringConfig {
        self.config(d).and_then(|c| c.rings.get(r as usize).and_then(|s| s.vring)).unwrap_or_else(|| GuestMem::vring(self.global(d, r)))
    }

    /// Sends `sig` to a device's backend process and waits (up to 500 ms) until it
    /// took effect: SIGKILL, the process is gone (its socket closes); SIGSTOP,
    /// every thread is stopped. A signal reaches a multi-threaded process
    /// asynchronously, so without the wait a request sent afterwards could still
    /// be picked up.
    ///
    /// # Errors
    /// The device has no backend process.
    pub fn signal_backend(&self, d: DeviceId, sig: i32) -> Result<(), RigError> {
        let pid = self
            .procs
            .lock()
            .get(d.0 as usize)
            .and_then(ChildProc::pid)
            .ok_or_else(|| RigError::Config(format!("device {} has no backend process", d.0)))?;
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(pid as i32, sig);
        }
        let done = || match sig {
            libc::SIGKILL => !process_running(pid),
            libc::SIGSTOP => all_threads_stopped(pid),
            _ => true,
        };
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(500) && !done() {
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(())
    }

    /// Pids of the backend processes still running.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.lock().iter().filter_map(ChildProc::pid).collect()
    }
    /// The pid of a device's backend.
    pub fn backend_pid(&self, d: DeviceId) -> Option<u32> {
        self.procs.lock().get(d.0 as usize).and_then(ChildProc::pid)
    }
    /// How many backends were replaced.
    pub fn reconnects(&self) -> u32 {
        self.reconnects.load(Ordering::Acquire)
    }
    /// The devices whose backends were replaced.
    pub fn reconnected(&self) -> Vec<DeviceId> {
        self.reconnected.lock().clone()
    }

    /// Replaces a device's backend: kills the old process, starts a new one and
    /// connects to it (no ring state). The device's inflight region goes to the
    /// new connection (sent to the backend by the next `setup_inflight`), and an
    /// own blk backend starts holding the image unless the side gave it up (then
    /// `storage_reactivate` takes it back).
    ///
    /// # Errors
    /// Starting or connecting the new backend failed.
    pub fn replace_backend(&self, d: DeviceId) -> Result<(), RigError> {
        let dev = self.topo.devices().get(d.0 as usize).ok_or_else(|| RigError::Config(format!("no device {}", d.0)))?.clone();
        // Kill and reap the old process first, so a stopped backend cannot wake up
        // and serve the shared rings next to the new one (and its image lock goes).
        if let Some(p) = self.procs.lock().get_mut(d.0 as usize) {
            p.kill();
        }
        self.mark_killed(d);
        let old_fe = self.devices[d.0 as usize].read().clone();
        old_fe.close();
        let label = format!("{}-{}", self.side.short(), dev.name);
        let _ = std::fs::remove_file(self.cfg.dir.join(format!("{label}-qsd.sock")));
        let active = !self.released[d.0 as usize].load(Ordering::Acquire);
        let n = self.spawned.fetch_add(1, Ordering::AcqRel);
        let b = start_backend(&self.cfg, self.side, &dev, None, active, n)?;
        if let Some(region) = old_fe.inflight() {
            b.fe.adopt_inflight(region);
        }
        let old_proc = std::mem::replace(&mut self.procs.lock()[d.0 as usize], b.proc_);
        drop(old_proc);
        *self.controls[d.0 as usize].write() = b.control;
        self.records.lock().push(BackendRecord { device: d, ring_log: b.ring_log, killed: None });
        let old = std::mem::replace(&mut *self.devices[d.0 as usize].write(), Arc::new(b.fe));
        drop(old);
        self.reconnects.fetch_add(1, Ordering::AcqRel);
        self.reconnected.lock().push(d);
        Ok(())
    }

    fn mark_killed(&self, d: DeviceId) {
        let now = Instant::now();
        if let Some(r) = self.records.lock().iter_mut().rev().find(|r| r.device == d) {
            r.killed.get_or_insert(now);
        }
    }

    /// Cuts a device's backend off for good: its process killed (and reaped),
    /// its connection closed. What a destination does to a device whose ring its
    /// fence could not stop, before it says it will not run the guest.
    pub fn abandon(&self, d: DeviceId) -> bool {
        let Some(fe) = self.devices.get(d.0 as usize).map(|f| f.read().clone()) else { return false };
        if let Some(p) = self.procs.lock().get_mut(d.0 as usize) {
            p.kill();
        }
        self.mark_killed(d);
        fe.close();
        true
    }

    /// The control socket of a device's own blk backend (its storage switch),
    /// answering within `timeout`.
    pub fn control(&self, d: DeviceId, timeout: Duration) -> Option<Control> {
        self.controls.get(d.0 as usize).and_then(|c| c.read().as_ref().map(|c| c.with_timeout(timeout)))
    }

    /// Records that the side is giving a device's image up (its
    /// `storage_inactivate` started): a backend replaced after this starts without
    /// the image, and takes it back only with `storage_reactivate`.
    pub fn release_storage(&self, d: DeviceId) {
        if let Some(r) = self.released.get(d.0 as usize) {
            r.store(true, Ordering::Release);
        }
    }

    /// Who serves a device.
    pub fn backend_kind(&self, d: DeviceId) -> Option<BackendKind> {
        self.cfg.backends.get(d.0 as usize).copied()
    }

    /// Every backend process started on this side, with its ring log and when it
    /// was killed.
    pub fn backend_records(&self) -> Vec<BackendRecord> {
        self.records.lock().clone()
    }

    /// The used ring's index of a device's ring, in guest memory.
    pub fn used_index(&self, d: DeviceId, r: u32) -> u16 {
        self.mem.used_idx(self.global(d, r))
    }

    /// Closes every connection and stops every backend process (idempotent).
    pub fn shutdown(&self) {
        for d in &self.devices {
            d.read().close();
        }
        let mut procs = std::mem::take(&mut *self.procs.lock());
        // Own backends end when their frontend goes; qemu-storage-daemon needs SIGTERM.
        for p in &procs {
            p.term();
        }
        for p in &mut procs {
            p.stop(Duration::from_secs(2));
        }
    }
}

impl VhostDevices for RealSide {
    fn frontend(&self, device: DeviceId) -> Option<Arc<Frontend>> {
        self.devices.get(device.0 as usize).map(|c| c.read().clone())
    }
    fn vring(&self, device: DeviceId, ring: u32) -> Option<VringConfig> {
        (ring < self.topo.devices().get(device.0 as usize)?.rings()).then(|| self.ring_config(device, ring))
    }
    fn config(&self, device: DeviceId) -> Option<DeviceConfig> {
        self.devices_cfg.get(device)
    }
    fn reconnect(&self, device: DeviceId) -> bool {
        match self.replace_backend(device) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "reconnect failed");
                false
            }
        }
    }
}

impl Drop for RealSide {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A backend started and connected.
struct Started {
    fe: Frontend,
    proc_: ChildProc,
    control: Option<Control>,
    ring_log: PathBuf,
}

/// Starts device `d`'s backend (the `n`th process of the side) and does the
/// handshake; an own blk backend holds its image from the start if `active`.
fn start_backend(cfg: &SideConfig, side: Side, d: &Device, hostile: Option<&str>, active: bool, n: u32) -> Result<Started, RigError> {
    let kind = cfg.backends.get(d.id.0 as usize).copied().ok_or_else(|| RigError::Config(format!("{}: no backend chosen", d.name)))?;
    let image = cfg.images.get(d.id.0 as usize).cloned().flatten();
    let tag = side.short();
    let label = format!("{tag}-{}", d.name);
    let wire = wire_path(&cfg.dir, side, &d.name);
    let ring_log = cfg.dir.join(format!("{label}-{n}.rings"));
    let mut env = vec![(RING_LOG_ENV, ring_log.display().to_string())];
    if !cfg.reply_ack {
        env.push((NO_REPLY_ACK_ENV, "1".to_string()));
    }
    let mut control = None;
    let (stream, p) = match (kind, &d.kind) {
        (BackendKind::OwnNet, DeviceKind::Net) => spawn_own_with(&cfg.exe, &cfg.dir, &label, false, d.rings(), Some(&wire), hostile, &env)?,
        // The hostile relay wraps the plain own blk backend.
        (BackendKind::OwnBlk, DeviceKind::Blk) if hostile.is_some() => {
            spawn_own_with(&cfg.exe, &cfg.dir, &label, true, d.rings(), image.as_deref(), hostile, &env)?
        }
        (BackendKind::OwnBlk, DeviceKind::Blk) => {
            let img = image.as_ref().ok_or_else(|| RigError::Config(format!("{}: no image", d.name)))?;
            let queues = u16::try_from(d.rings()).map_err(|_| RigError::Config(format!("{}: too many queues", d.name)))?;
            let opts = BlkOptions {
                iops: cfg.blk_iops,
                active,
                lock: cfg.image_lock,
                reply_ack: cfg.reply_ack,
                ring_log: Some(ring_log.clone()),
                ..BlkOptions::new(queues)
            };
            let s = blk::spawn(&BlkExe::Cli(cfg.exe.clone()), &cfg.dir, &label, img, opts)?;
            control = s.control;
            (s.stream, s.proc_)
        }
        (BackendKind::Qsd, DeviceKind::Blk) => {
            let bin = cfg.qsd.as_ref().ok_or_else(|| RigError::Config(format!("{}: qemu-storage-daemon is not installed", d.name)))?;
            let img = image.as_ref().ok_or_else(|| RigError::Config(format!("{}: no image", d.name)))?;
            qsd::spawn(bin, &cfg.dir, &label, img, d.rings(), cfg.qsd_iops)?
        }
        (k, dk) => return Err(RigError::Config(format!("{}: a {} backend cannot serve a {dk} device", d.name, k.name()))),
    };
    // On error, `p` is dropped: the backend is stopped.
    let qsd = kind == BackendKind::Qsd;
    let fcfg = FrontendConfig {
        resend_addr_after_base: qsd,
        pops_while_disabled: qsd,
        // qemu-storage-daemon keeps an inflight region without offering it
        // (docs/blk-inflight.md): negotiated, it is what recovers a ring's base
        // when the daemon dies with requests completed out of order.
        inflight: if qsd { InflightMode::Unadvertised } else { InflightMode::Offered },
        // Own backends started without REPLY_ACK are driven fire-and-forget.
        require_reply_ack: cfg.reply_ack,
        // rust-vmm's vhost backend library offers REPLY_ACK whatever the backend
        // says: the own backends run without it only if the frontend declines it.
        // qemu-storage-daemon keeps it (it always offers it).
        decline_reply_ack: !cfg.reply_ack && !qsd,
        ..FrontendConfig::new(&format!("{tag} {}", d.name), d.rings())
    };
    let fe = Frontend::connect(stream, &fcfg)?;
    Ok(Started { fe, proc_: p, control, ring_log })
}

/// The wire file of a side's net device.
fn wire_path(dir: &std::path::Path, side: Side, name: &str) -> PathBuf {
    dir.join(format!("{}-{name}.wire", side.short()))
}

fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(st) => st.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
        Err(_) => false,
    }
}

fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|st| st.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['T', 't', 'Z', 'X'])))
            .unwrap_or(true)
    })
}
