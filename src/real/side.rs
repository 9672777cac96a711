//! One side's real world: a KVM VM, a vhost-user connection and backend process per
//! device, the shared guest memory, and the state captured or applied.
//!
//! # Examples
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use switchover::real::dir::PrivateDir;
//! # use switchover::real::frontend::BackendKind;
//! # use switchover::real::mem::GuestMem;
//! # use switchover::real::side::{RealSide, SideConfig};
//! # use switchover::state::DeviceState;
//! # use switchover::step::Side;
//! # use switchover::topology::{DeviceId, Topology};
//! # let dir = PrivateDir::new().unwrap();
//! # let topo = Arc::new(Topology::builder().name("doc").net(1, 1).build().unwrap());
//! # let cfg = SideConfig {
//! #     exe: "target/release/switchover".into(), // this crate's binary runs the own backends
//! #     dir: dir.path().to_path_buf(),
//! #     qsd: None,
//! #     backends: vec![BackendKind::OwnNet],
//! #     images: vec![None],
//! #     deadline: Duration::from_secs(5),
//! #     qsd_iops: None,
//! #     hostile: vec![],
//! # };
//! # let mem = Arc::new(GuestMem::new(topo.total_rings() as usize).unwrap());
//! # let state = Arc::new(DeviceState::new(&topo));
//! # let side = Arc::new(RealSide::connect(&cfg, Side::Source, &topo, mem, state).unwrap());
//!
//! side.start_watchdog();
//! side.bring_up(Duration::from_secs(5)).unwrap(); // a running source: rings at base 0
//! assert_eq!(side.sent_base(0), None);
//! assert_eq!(side.vm().ioctls(0, true), 1); // ioeventfd registered once
//! side.shutdown();
//! assert!(side.pids().is_empty());
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use parking_lot::RwLock;

use super::backend::{spawn_own, ChildProc};
use super::frontend::{BackendKind, DeviceConn};
use super::kvm::RealVm;
use super::mem::GuestMem;
use super::qsd;
use crate::state::DeviceState;
use crate::step::{Side, StepKind};
use crate::topology::{DeviceId, DeviceKind, Topology};

const NONE: u32 = u32::MAX;

/// How to start one side's backends.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use switchover::real::dir::PrivateDir;
/// use switchover::real::frontend::BackendKind;
/// use switchover::real::side::SideConfig;
/// let dir = PrivateDir::new().unwrap();
/// let image = dir.join("blk0.img");
/// let cfg = SideConfig {
///     exe: "target/release/switchover".into(),
///     dir: dir.path().to_path_buf(),
///     qsd: None,
///     backends: vec![BackendKind::OwnNet, BackendKind::OwnBlk],
///     images: vec![None, Some(image)],
///     deadline: Duration::from_secs(5),
///     qsd_iops: None,
///     hostile: vec![],
/// };
/// assert_eq!(cfg.backends.len(), cfg.images.len()); // one entry per device
/// ```
#[derive(Debug, Clone)]
pub struct SideConfig {
    /// The binary to run own backends with (`EXE real __backend ...`).
    pub exe: PathBuf,
    /// Private directory for sockets.
    pub dir: PathBuf,
    /// qemu-storage-daemon, when some devices use it.
    pub qsd: Option<PathBuf>,
    /// Backend of each device.
    pub backends: Vec<BackendKind>,
    /// Image file of each blk device.
    pub images: Vec<Option<PathBuf>>,
    /// Deadline of set-up messages.
    pub deadline: Duration,
    /// qemu-storage-daemon's I/O limit (a throttle node), if any.
    pub qsd_iops: Option<u32>,
    /// Tests only: (device name, `MODE@REQUEST`) of devices whose first backend
    /// on this side is the hostile test backend (see [`super::backend::HOSTILE_MODES`]).
    /// A replacement started by [`RealSide::reconnect`] is never hostile.
    pub hostile: Vec<(String, String)>,
}

/// One side.
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
///
/// assert_eq!(side.side(), Side::Source);
/// assert_eq!(side.pids().len(), 1); // one backend process per device
/// ```
pub struct RealSide {
    side: Side,
    topo: Arc<Topology>,
    mem: Arc<GuestMem>,
    vm: RealVm,
    cfg: SideConfig,
    devices: Vec<RwLock<Arc<DeviceConn>>>,
    first_ring: Vec<u32>,
    state: Arc<DeviceState>,
    sent_bases: Vec<AtomicU32>,
    procs: Mutex<Vec<ChildProc>>,
    reconnects: AtomicU32,
    reconnected: Mutex<Vec<DeviceId>>,
    stop: Arc<AtomicBool>,
    watchdog: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RealSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealSide").field("side", &self.side).field("devices", &self.devices.len()).finish()
    }
}

impl RealSide {
    /// Creates the VM, starts a backend per device and connects to it (handshake
    /// done, nothing else sent).
    ///
    /// # Errors
    /// A message naming the device that failed.
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
    ///
    /// // `side` came from `RealSide::connect(&cfg, Side::Source, &topo, mem, state)`.
    /// assert_eq!(side.vm().rings(), 2);
    /// assert!(side.device(DeviceId(0)).is_some());
    /// ```
    pub fn connect(
        cfg: &SideConfig,
        side: Side,
        topo: &Arc<Topology>,
        mem: Arc<GuestMem>,
        state: Arc<DeviceState>,
    ) -> Result<RealSide, String> {
        let vm = RealVm::new(topo.total_rings() as usize)?;
        let mut first_ring = Vec::new();
        let mut n = 0;
        for d in topo.devices() {
            first_ring.push(n);
            n += d.rings();
        }
        let mut procs = Vec::new();
        let mut devices = Vec::new();
        for d in topo.devices() {
            // On error, `procs` is dropped: every backend started so far is stopped.
            let hostile = cfg.hostile.iter().find(|(n, _)| *n == d.name).map(|(_, m)| m.as_str());
            let (conn, p) = start_backend(cfg, side, d, hostile)?;
            procs.push(p);
            devices.push(RwLock::new(Arc::new(conn)));
        }
        let sent_bases = (0..n).map(|_| AtomicU32::new(NONE)).collect();
        let s = RealSide {
            side,
            topo: topo.clone(),
            mem,
            vm,
            cfg: cfg.clone(),
            devices,
            first_ring,
            state,
            sent_bases,
            procs: Mutex::new(procs),
            reconnects: AtomicU32::new(0),
            reconnected: Mutex::new(Vec::new()),
            stop: Arc::new(AtomicBool::new(false)),
            watchdog: Mutex::new(None),
        };
        Ok(s)
    }

    /// Starts the watchdog that turns a hung backend into an error (shuts the socket
    /// down once its oldest request is past its deadline).
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
    ///
    /// side.start_watchdog(); // a hung backend's oldest request now fails at its deadline
    /// side.bring_up(Duration::from_secs(5)).unwrap();
    /// ```
    pub fn start_watchdog(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let stop = self.stop.clone();
        let h = std::thread::Builder::new()
            .name(format!("vu-watchdog-{}", self.side.short()))
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                    let Some(s) = me.upgrade() else { return };
                    let now = Instant::now();
                    for d in &s.devices {
                        let c = d.read().channel().clone();
                        c.check_deadline(now);
                    }
                }
            })
            .ok();
        *self.watchdog.lock() = h;
    }

    /// Brings every device up as a running source (features, memory table, each
    /// ring started at base 0 with its notifiers registered) — set-up before the
    /// migration, not timed.
    ///
    /// # Errors
    /// A message naming the device, ring and request.
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
    ///
    /// side.bring_up(Duration::from_secs(5)).unwrap();
    /// assert_eq!(side.vm().ioctls(0, true) + side.vm().ioctls(0, false), 2);
    /// ```
    pub fn bring_up(&self, deadline: Duration) -> Result<(), String> {
        for d in self.topo.devices() {
            let c = self.devices[d.id.0 as usize].read().clone();
            c.call_step(&StepKind::SetFeatures, None, 0, 0, None, &self.mem, deadline)?;
            c.call_step(&StepKind::SetMemTable, None, 0, 0, None, &self.mem, deadline)?;
            for r in 0..d.rings() {
                let g = self.global(d.id, r);
                let n = self.vm.ring(g).ok_or("ring out of range")?;
                self.vm.change(g, true, true).map_err(|e| format!("{} ring {r} host_notifier_on: {e}", c.name))?;
                self.vm.change(g, false, true).map_err(|e| format!("{} ring {r} guest_notifier_on: {e}", c.name))?;
                for k in [StepKind::SetVringNum, StepKind::SetVringAddr, StepKind::SetVringBase] {
                    c.call_step(&k, Some(r), g, 0, None, &self.mem, deadline)?;
                }
                c.call_step(&StepKind::SetVringKick, Some(r), g, 0, Some(&n.kick), &self.mem, deadline)?;
                c.call_step(&StepKind::SetVringCall, Some(r), g, 0, Some(&n.call), &self.mem, deadline)?;
                c.call_step(&StepKind::VringEnable, Some(r), g, 0, None, &self.mem, deadline)?;
            }
        }
        Ok(())
    }

    /// The side.
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
    ///
    /// assert_eq!(side.side(), Side::Source);
    /// ```
    pub fn side(&self) -> Side {
        self.side
    }
    /// The topology.
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
    ///
    /// assert_eq!(side.topology().total_rings(), 2);
    /// ```
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topo
    }
    /// The guest memory.
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
    ///
    /// assert_eq!(side.mem().used_idx(0), 0);
    /// ```
    pub fn mem(&self) -> &Arc<GuestMem> {
        &self.mem
    }
    /// The VM.
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
    ///
    /// assert_eq!(side.vm().rings(), side.topology().total_rings() as usize);
    /// ```
    pub fn vm(&self) -> &RealVm {
        &self.vm
    }
    /// A device's connection (the current one: [`RealSide::reconnect`] replaces it).
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
    ///
    /// let conn = side.device(DeviceId(0)).unwrap();
    /// assert_eq!(conn.backend, BackendKind::OwnNet);
    /// assert!(side.device(DeviceId(1)).is_none());
    /// ```
    pub fn device(&self, d: DeviceId) -> Option<Arc<DeviceConn>> {
        self.devices.get(d.0 as usize).map(|c| c.read().clone())
    }
    /// The side's state.
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
    ///
    /// side.state().set_base(DeviceId(0), 1, 4);
    /// assert_eq!(side.state().base(DeviceId(0), 1), Some(4));
    /// ```
    pub fn state(&self) -> &Arc<DeviceState> {
        &self.state
    }
    /// Global index of ring `r` of device `d`.
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
    ///
    /// assert_eq!(side.global(DeviceId(0), 1), 1);
    /// ```
    pub fn global(&self, d: DeviceId, r: u32) -> u32 {
        self.first_ring.get(d.0 as usize).copied().unwrap_or(0) + r
    }
    /// Records the base a `SET_VRING_BASE` carried to the backend (acked).
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
    ///
    /// side.record_sent_base(1, 9);
    /// assert_eq!(side.sent_base(1), Some(9));
    /// ```
    pub fn record_sent_base(&self, g: u32, base: u16) {
        if let Some(s) = self.sent_bases.get(g as usize) {
            s.store(u32::from(base), Ordering::Release);
        }
    }
    /// The base set on ring `g`, if any.
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
    ///
    /// assert_eq!(side.sent_base(0), None);
    /// side.record_sent_base(0, 3);
    /// assert_eq!(side.sent_base(0), Some(3));
    /// ```
    pub fn sent_base(&self, g: u32) -> Option<u16> {
        let v = self.sent_bases.get(g as usize)?.load(Ordering::Acquire);
        (v != NONE).then_some(v as u16)
    }

    /// Sends `sig` to device `d`'s backend process (fault injection in tests).
    ///
    /// # Errors
    /// No such device or process.
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
    ///
    /// side.signal_backend(DeviceId(0), libc::SIGSTOP).unwrap(); // the backend hangs
    /// side.signal_backend(DeviceId(0), libc::SIGCONT).unwrap();
    /// assert!(side.signal_backend(DeviceId(7), libc::SIGCONT).is_err());
    /// ```
    pub fn signal_backend(&self, d: DeviceId, sig: i32) -> Result<(), String> {
        let pid =
            self.procs.lock().get(d.0 as usize).and_then(ChildProc::pid).ok_or_else(|| format!("device {} has no backend process", d.0))?;
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(pid as i32, sig);
        }
        // A signal reaches a multi-threaded process asynchronously: wait (up to
        // 500 ms) until it took effect, so that no request sent after this returns
        // can still be picked up. SIGKILL: the process is gone (its socket closes);
        // SIGSTOP: every thread is stopped.
        let done = || match sig {
            libc::SIGKILL => !process_running(pid),
            libc::SIGSTOP => all_threads_stopped(pid),
            _ => true,
        };
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(500) && !done() {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        Ok(())
    }

    /// Pids of the backend processes still owned.
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
    ///
    /// assert_eq!(side.pids().len(), 1);
    /// side.shutdown();
    /// assert!(side.pids().is_empty());
    /// ```
    pub fn pids(&self) -> Vec<u32> {
        self.procs.lock().iter().filter_map(ChildProc::pid).collect()
    }

    /// Pid of device `d`'s backend process.
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
    ///
    /// let pid = side.backend_pid(DeviceId(0)).unwrap();
    /// assert_eq!(side.pids(), vec![pid]);
    /// ```
    pub fn backend_pid(&self, d: DeviceId) -> Option<u32> {
        self.procs.lock().get(d.0 as usize).and_then(ChildProc::pid)
    }

    /// How many backends [`RealSide::reconnect`] replaced.
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
    ///
    /// assert_eq!(side.reconnects(), 0);
    /// side.reconnect(DeviceId(0)).unwrap();
    /// assert_eq!(side.reconnects(), 1);
    /// ```
    pub fn reconnects(&self) -> u32 {
        self.reconnects.load(Ordering::Acquire)
    }

    /// The devices whose backends [`RealSide::reconnect`] replaced.
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
    ///
    /// side.reconnect(DeviceId(0)).unwrap();
    /// assert_eq!(side.reconnected(), vec![DeviceId(0)]);
    /// ```
    pub fn reconnected(&self) -> Vec<DeviceId> {
        self.reconnected.lock().clone()
    }

    /// Replaces device `d`'s backend: whatever is left of the old one is killed
    /// (SIGKILL, also when it is stopped) and reaped, its control channel closed
    /// (requests still queued fail) and its socket file removed; then a fresh
    /// backend process of the same kind is started (own net/blk, or a new
    /// qemu-storage-daemon on the same image) and the connection handshake is done
    /// (`SET_OWNER`, features, protocol features with `REPLY_ACK`, queue count).
    /// The new backend knows nothing of the rings: the caller sends the start
    /// sequence (features, memory table, ring set-up).
    ///
    /// # Errors
    /// The new backend did not start or the handshake failed (naming the device).
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
    ///
    /// let old = side.backend_pid(DeviceId(0)).unwrap();
    /// side.reconnect(DeviceId(0)).unwrap(); // a fresh backend, handshake done
    /// assert_ne!(side.backend_pid(DeviceId(0)), Some(old));
    /// side.bring_up(Duration::from_secs(5)).unwrap(); // the caller restarts the rings
    /// ```
    pub fn reconnect(&self, d: DeviceId) -> Result<(), String> {
        let dev = self.topo.devices().get(d.0 as usize).ok_or_else(|| format!("no device {}", d.0))?.clone();
        // Kill and reap the old process first, so a stopped backend cannot wake up
        // and serve the shared rings next to the new one.
        {
            let mut procs = self.procs.lock();
            if let Some(p) = procs.get_mut(d.0 as usize) {
                p.kill();
            }
        }
        self.devices[d.0 as usize].read().close();
        let label = format!("{}-{}", self.side.short(), dev.name);
        let _ = std::fs::remove_file(self.cfg.dir.join(format!("{label}-qsd.sock")));
        let (conn, p) = start_backend(&self.cfg, self.side, &dev, None)?;
        let old_proc = {
            let mut procs = self.procs.lock();
            match procs.get_mut(d.0 as usize) {
                Some(slot) => Some(std::mem::replace(slot, p)),
                None => {
                    procs.push(p);
                    None
                }
            }
        };
        drop(old_proc);
        let old = std::mem::replace(&mut *self.devices[d.0 as usize].write(), Arc::new(conn));
        drop(old);
        self.reconnects.fetch_add(1, Ordering::AcqRel);
        self.reconnected.lock().push(d);
        Ok(())
    }

    /// The used index of ring `r` of device `d` in guest memory: the base a
    /// backend reached on that ring, provided nothing is in flight on it (every
    /// request it took was completed, in order). Requests published after it were
    /// not completed and are served again by whoever the ring is started on.
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
    ///
    /// assert_eq!(side.used_index(DeviceId(0), 1), side.mem().used_idx(side.global(DeviceId(0), 1)));
    /// ```
    pub fn used_index(&self, d: DeviceId, r: u32) -> u16 {
        self.mem.used_idx(self.global(d, r))
    }

    /// Closes every control channel and stops every backend process (waited for).
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
    ///
    /// side.shutdown();
    /// assert!(side.pids().is_empty()); // every backend stopped and reaped
    /// ```
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.watchdog.lock().take() {
            let _ = h.join();
        }
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

impl Drop for RealSide {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the backend of device `d` for `side` and connects to it (handshake done).
fn start_backend(
    cfg: &SideConfig,
    side: Side,
    d: &crate::topology::Device,
    hostile: Option<&str>,
) -> Result<(DeviceConn, ChildProc), String> {
    let kind = cfg.backends.get(d.id.0 as usize).copied().ok_or_else(|| format!("{}: no backend chosen", d.name))?;
    let image = cfg.images.get(d.id.0 as usize).cloned().flatten();
    let tag = side.short();
    let label = format!("{tag}-{}", d.name);
    let (stream, p) = match (kind, &d.kind) {
        (BackendKind::OwnNet, DeviceKind::Net) => spawn_own(&cfg.exe, &cfg.dir, &label, false, d.rings(), None, hostile)?,
        (BackendKind::OwnBlk, DeviceKind::Blk) => spawn_own(&cfg.exe, &cfg.dir, &label, true, d.rings(), image.as_deref(), hostile)?,
        (BackendKind::Qsd, DeviceKind::Blk) => {
            let bin = cfg.qsd.as_ref().ok_or_else(|| format!("{}: qemu-storage-daemon is not installed", d.name))?;
            let img = image.as_ref().ok_or_else(|| format!("{}: no image", d.name))?;
            qsd::spawn(bin, &cfg.dir, &label, img, d.rings(), cfg.qsd_iops)?
        }
        (k, dk) => return Err(format!("{}: a {} backend cannot serve a {dk} device", d.name, k.name())),
    };
    // On error, `p` is dropped: the backend is stopped.
    let conn = DeviceConn::connect(&format!("{tag} {}", d.name), stream, d.rings(), kind)?;
    Ok((conn, p))
}

/// Whether `pid` is still running (not a zombie, not gone).
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(st) => st.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether every thread of `pid` is stopped (`T`) or gone.
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
