//! A SIMULATED vhost-user backend: one thread serving its control channel one
//! message at a time, with service times from the profile, checking message order
//! the way a strict backend does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::Mutex;

use super::clock::sleep_until;
use super::fault::FaultKind;
use super::io::{IoEnd, IoLedger};
use super::world::SimWorld;
use switchover::error::StepFailure;
use switchover::ids::{DeviceId, Side};
use switchover::step::StepKind;

/// The reply to a request: the value (a vring base for `GET_VRING_BASE`) and the
/// block requests handed over (hand-over policy), or a failure.
pub(crate) type Reply = Box<dyn FnOnce(Result<(u16, Vec<u64>), StepFailure>) + Send + 'static>;

/// A blk backend's simulated data plane: requests in flight per ring when the
/// guest stops, how long each takes, and the ledger they report to.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use switchover_sim::{BlkIo, IoLedger, SimBackend};
/// let ledger = Arc::new(IoLedger::default());
/// let io = BlkIo { per_ring: 2, io: Duration::from_millis(1), ledger: ledger.clone(), device: 0, world: None };
/// let _b = SimBackend::start("blk0", 4, Some(&|_| 1), Some(io));
/// assert_eq!(ledger.summary(false).submitted, 8); // 2 requests in flight on each of 4 rings
/// ```
#[derive(Debug, Clone)]
pub struct BlkIo {
    /// Requests in flight per ring at the stop.
    pub per_ring: u32,
    /// Time a request takes (scaled).
    pub io: Duration,
    /// Where completions are recorded.
    pub ledger: Arc<IoLedger>,
    /// The device's index (request ids are unique per topology).
    pub device: u32,
    /// The world whose storage the completed requests write to (their writes are
    /// refused unless the side owns the image).
    pub world: Option<Arc<SimWorld>>,
}

impl BlkIo {
    fn complete(&self, id: u64, end: IoEnd) {
        if let Some(w) = &self.world {
            match end {
                IoEnd::Source => drop(w.write(DeviceId(self.device), Side::Source)),
                IoEnd::Destination => drop(w.write(DeviceId(self.device), Side::Destination)),
                IoEnd::Lost => {}
            }
        }
        self.ledger.end(id, end);
    }
}

/// One request on the control channel.
pub(crate) struct Req {
    pub kind: StepKind,
    pub ring: Option<u32>,
    pub value: u16,
    pub cost: Duration,
    pub arrival: Instant,
    pub fault: Option<FaultKind>,
    /// Requests to resubmit when the ring starts (handed over), and where they
    /// then complete.
    pub resubmit: Vec<(u64, IoEnd)>,
    /// `None` for fire-and-forget messages (no `REPLY_ACK`).
    pub reply: Option<Reply>,
}

/// A simulated ring's state, as the backend sees it.
///
/// ```
/// use switchover_sim::{SimBackend, SimRing};
/// let b = SimBackend::start("net0", 1, None, None);
/// assert_eq!(b.rings(), [SimRing::default()]); // a fresh destination ring: nothing set up
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimRing {
    /// `SET_VRING_NUM` received.
    pub num: bool,
    /// `SET_VRING_ADDR` received.
    pub addr: bool,
    /// `SET_VRING_CALL` received.
    pub call: bool,
    /// The ring's base (`last_avail_idx`), if set.
    pub base: Option<u16>,
    /// Started (kick received, not stopped by `GET_VRING_BASE`).
    pub started: bool,
    /// Enabled.
    pub enabled: bool,
    /// The configuration generation its ring set-up (`SET_VRING_ADDR`, a
    /// reconcile) came from.
    pub config: u16,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("alive", &self.alive).field("rings", &self.rings).field("served", &self.served).finish()
    }
}

#[derive(Default)]
struct Shared {
    features: bool,
    mem: bool,
    /// Writes to guest memory are logged.
    logging: bool,
    /// The backend process runs (false once it crashed).
    alive: bool,
    /// Called once when the process dies.
    on_death: Option<Box<dyn FnOnce() + Send>>,
    rings: Vec<SimRing>,
    served: u64,
    /// Per ring: requests in flight and when each completes (set at the stop).
    inflight: Vec<Vec<(u64, Option<Instant>)>>,
    io: Option<BlkIo>,
}

/// A simulated backend thread and its control channel.
///
/// ```
/// use std::time::Duration;
/// use switchover_sim::SimBackend;
/// let src = SimBackend::start("net0", 2, Some(&|ring| 1000 + ring as u16), None);
/// assert_eq!(src.name(), "net0");
/// assert_eq!(src.rings()[1].base, Some(1001));
/// assert!(src.sync(Duration::from_secs(5)));
/// ```
#[derive(Debug)]
pub struct SimBackend {
    name: String,
    tx: Option<Sender<Req>>,
    handle: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Mutex<Shared>>,
}

impl SimBackend {
    /// Starts a backend for device `name` with `rings` rings. `running` makes it a
    /// source backend whose rings are started and enabled at the given bases.
    ///
    /// ```
    /// use switchover_sim::SimBackend;
    /// let running = SimBackend::start("net0", 2, Some(&|_| 7), None);
    /// assert!(running.rings().iter().all(|r| r.started && r.enabled && r.base == Some(7)));
    /// let fresh = SimBackend::start("net0", 2, None, None);
    /// assert!(fresh.rings().iter().all(|r| !r.started && r.base.is_none()));
    /// ```
    pub fn start(name: &str, rings: u32, running: Option<&dyn Fn(u32) -> u16>, io: Option<BlkIo>) -> SimBackend {
        let rings_v = (0..rings)
            .map(|r| match running {
                Some(base) => SimRing { num: true, addr: true, call: true, base: Some(base(r)), started: true, enabled: true, config: 1 },
                None => SimRing::default(),
            })
            .collect();
        let mut inflight = vec![Vec::new(); rings as usize];
        if let (Some(_), Some(io)) = (running, &io) {
            for (r, v) in inflight.iter_mut().enumerate() {
                for i in 0..io.per_ring {
                    let id = (u64::from(io.device) << 40) | ((r as u64) << 20) | u64::from(i);
                    io.ledger.submit(id);
                    v.push((id, None));
                }
            }
        }
        let shared = Arc::new(Mutex::new(Shared {
            features: running.is_some(),
            mem: running.is_some(),
            logging: false,
            alive: true,
            on_death: None,
            rings: rings_v,
            served: 0,
            inflight,
            io,
        }));
        let (tx, rx) = unbounded::<Req>();
        let sh = shared.clone();
        let nm = name.to_string();
        let handle =
            std::thread::Builder::new().name(format!("sim-{name}")).spawn(move || serve(&nm, &rx, &sh)).expect("spawn simulated backend");
        SimBackend { name: name.into(), tx: Some(tx), handle: Some(handle), shared }
    }

    /// Queues a request. On a closed channel (crashed backend) the request's reply
    /// is answered with [`StepFailure::Disconnected`].
    pub(crate) fn send(&self, req: Req) {
        let Some(tx) = &self.tx else {
            if let Some(r) = req.reply {
                r(Err(StepFailure::Disconnected));
            }
            return;
        };
        if let Err(e) = tx.send(req) {
            if let Some(r) = e.0.reply {
                r(Err(StepFailure::Disconnected));
            }
        }
    }

    /// Waits until every request queued so far has been served; `false` if the
    /// backend is gone or hung (gives up after `timeout`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover_sim::SimBackend;
    /// let b = SimBackend::start("blk0", 1, None, None);
    /// assert!(b.sync(Duration::from_secs(5)));
    /// assert_eq!(b.served(), 1);
    /// ```
    pub fn sync(&self, timeout: Duration) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Req {
            kind: StepKind::Custom(Arc::from("sync")),
            ring: None,
            value: 0,
            cost: Duration::ZERO,
            arrival: Instant::now(),
            fault: None,
            resubmit: vec![],
            reply: Some(Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            })),
        });
        rx.recv_timeout(timeout).unwrap_or(false)
    }

    /// A copy of the rings' state.
    ///
    /// ```
    /// use switchover_sim::SimBackend;
    /// let b = SimBackend::start("net0", 4, Some(&|r| r as u16), None);
    /// let bases: Vec<_> = b.rings().iter().map(|r| r.base).collect();
    /// assert_eq!(bases, [Some(0), Some(1), Some(2), Some(3)]);
    /// ```
    pub fn rings(&self) -> Vec<SimRing> {
        self.shared.lock().rings.clone()
    }

    /// Calls `f` once when the backend process dies (crashes, or is stopped by
    /// [`SimBackend::kill`]).
    pub(crate) fn on_death(&self, f: Box<dyn FnOnce() + Send>) {
        self.shared.lock().on_death = Some(f);
    }

    /// Stops the backend process for good; `replaced`: a new process of the same
    /// side takes over what it held (its `on_death` is not called).
    pub(crate) fn kill(&self, replaced: bool) {
        let on_death = {
            let mut g = self.shared.lock();
            g.alive = false;
            g.on_death.take()
        };
        if let (Some(f), false) = (on_death, replaced) {
            f();
        }
    }

    /// Whether the backend process still runs (false once it crashed).
    ///
    /// ```
    /// use switchover_sim::SimBackend;
    /// assert!(SimBackend::start("net0", 1, None, None).alive());
    /// ```
    pub fn alive(&self) -> bool {
        self.shared.lock().alive
    }

    /// When the last request in flight on `ring` completes. The guest has stopped
    /// when this is asked, so requests not yet scheduled start completing now (the
    /// stop message may still be queued, as it is fire-and-forget). `None` if
    /// nothing is in flight.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::{Duration, Instant};
    /// use switchover_sim::{BlkIo, IoLedger, SimBackend};
    /// let io = BlkIo { per_ring: 3, io: Duration::from_millis(30), ledger: Arc::new(IoLedger::default()), device: 0, world: None };
    /// let b = SimBackend::start("blk0", 1, Some(&|_| 1), Some(io));
    /// let asked = Instant::now();
    /// let done = b.drained_at(0).unwrap();
    /// assert!(done >= asked + Duration::from_millis(30)); // the last request takes the full 30 ms
    /// assert!(SimBackend::start("net0", 1, Some(&|_| 1), None).drained_at(0).is_none());
    /// ```
    pub fn drained_at(&self, ring: u32) -> Option<Instant> {
        let mut sh = self.shared.lock();
        let io = sh.io.as_ref()?.io;
        let reqs = sh.inflight.get_mut(ring as usize)?;
        schedule(reqs, io, Instant::now());
        reqs.iter().filter_map(|(_, t)| *t).max()
    }

    /// Messages served so far.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover_sim::SimBackend;
    /// let b = SimBackend::start("net0", 1, None, None);
    /// assert_eq!(b.served(), 0);
    /// b.sync(Duration::from_secs(5));
    /// b.sync(Duration::from_secs(5));
    /// assert_eq!(b.served(), 2);
    /// ```
    pub fn served(&self) -> u64 {
        self.shared.lock().served
    }

    /// The device name.
    ///
    /// ```
    /// use switchover_sim::SimBackend;
    /// assert_eq!(SimBackend::start("blk7", 1, None, None).name(), "blk7");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for SimBackend {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(name: &str, rx: &Receiver<Req>, sh: &Mutex<Shared>) {
    let mut busy_until: Option<Instant> = None;
    while let Ok(req) = rx.recv() {
        // Service starts when the request arrived or when the previous one ended,
        // whichever is later, on the ideal timeline: a late wake-up of this thread
        // does not add to the next request's time.
        let start = match busy_until {
            Some(t) if t > req.arrival => t,
            _ => req.arrival,
        };
        let end = start + req.cost;
        sleep_until(end);
        busy_until = Some(end);
        match req.fault {
            Some(FaultKind::Crash) => {
                // The process dies: this and every queued request go unanswered and
                // the channel closes.
                let on_death = {
                    let mut g = sh.lock();
                    g.alive = false;
                    g.on_death.take()
                };
                if let Some(f) = on_death {
                    f();
                }
                if let Some(r) = req.reply {
                    r(Err(StepFailure::Disconnected));
                }
                while let Ok(q) = rx.try_recv() {
                    if let Some(r) = q.reply {
                        r(Err(StepFailure::Disconnected));
                    }
                }
                return;
            }
            Some(FaultKind::Hang) => {
                // Never answers again; requests pile up unanswered until the
                // frontend closes the channel.
                let mut held = vec![req];
                while let Ok(q) = rx.recv() {
                    held.push(q);
                }
                return;
            }
            Some(FaultKind::Error) => {
                if let Some(r) = req.reply {
                    r(Err(StepFailure::Injected { what: format!("error:{}:{name}", req.kind) }));
                }
                continue;
            }
            None => {}
        }
        let result = apply(&mut sh.lock(), &req);
        if let Some(r) = req.reply {
            r(result);
        }
    }
}

/// The guest stopped at `now`: requests in flight not yet scheduled complete
/// evenly over the next `io`.
fn schedule(reqs: &mut [(u64, Option<Instant>)], io: Duration, now: Instant) {
    let n = reqs.len() as u32;
    for (i, (_, t)) in reqs.iter_mut().enumerate() {
        if t.is_none() {
            *t = Some(now + io.mul_f64(f64::from(i as u32 + 1) / f64::from(n.max(1))));
        }
    }
}

fn apply(sh: &mut Shared, req: &Req) -> Result<(u16, Vec<u64>), StepFailure> {
    let mut handed = Vec::new();
    apply_inner(sh, req, &mut handed).map(|v| (v, handed))
}

fn apply_inner(sh: &mut Shared, req: &Req, handed: &mut Vec<u64>) -> Result<u16, StepFailure> {
    sh.served += 1;
    let bad = |m: String| Err(StepFailure::Backend { message: m });
    if let StepKind::Custom(n) = &req.kind {
        if &**n == "sync" {
            return Ok(0);
        }
    }
    match req.kind {
        StepKind::SetFeatures => {
            sh.features = true;
            return Ok(0);
        }
        StepKind::SetMemTable => {
            if !sh.features {
                return bad("SET_MEM_TABLE before SET_FEATURES".into());
            }
            sh.mem = true;
            return Ok(0);
        }
        // Dirty logging on (LOG_ALL, SET_LOG_BASE, the log flag on each ring).
        StepKind::LogStart => {
            if !sh.mem {
                return bad("SET_LOG_BASE before SET_MEM_TABLE".into());
            }
            sh.logging = true;
            return Ok(0);
        }
        // Re-sent configuration of a device whose guest changed it (features, every
        // ring's geometry and addresses, from the loaded generation `value`).
        StepKind::Reconcile => {
            for ring in &mut sh.rings {
                ring.config = req.value;
            }
            return Ok(0);
        }
        // The round trip that proves a backend without REPLY_ACK is alive.
        StepKind::Probe => return Ok(0),
        _ => {}
    }
    let mem = sh.mem;
    let Some(r) = req.ring else { return bad(format!("{} without a ring", req.kind)) };
    let now = Instant::now();
    if let (Some(io), Some(reqs)) = (&sh.io, sh.inflight.get_mut(r as usize)) {
        match req.kind {
            StepKind::VringDisable => schedule(reqs, io.io, now),
            StepKind::GetVringBase => {
                // Completed requests end on the source. With hand-over (value 1) the
                // rest are abandoned here, to be resubmitted on the destination;
                // without it they complete after the base was read: lost to the guest.
                for (id, t) in reqs.drain(..) {
                    match t {
                        Some(t) if t <= now => io.complete(id, IoEnd::Source),
                        _ if req.value == 1 => handed.push(id),
                        _ => io.complete(id, IoEnd::Lost),
                    }
                }
            }
            _ => {}
        }
    }
    let io = sh.io.clone();
    let nrings = sh.rings.len();
    let Some(ring) = sh.rings.get_mut(r as usize) else { return bad(format!("ring {r} out of range ({nrings} rings)")) };
    match req.kind {
        StepKind::VringDisable => ring.enabled = false,
        StepKind::GetVringBase => {
            let Some(b) = ring.base else { return bad("GET_VRING_BASE on a ring that has no base".into()) };
            ring.started = false;
            ring.enabled = false;
            return Ok(b);
        }
        StepKind::SetVringNum => {
            if ring.started {
                return bad("SET_VRING_NUM on a started ring".into());
            }
            ring.num = true;
        }
        StepKind::SetVringAddr => {
            if !mem {
                return bad("SET_VRING_ADDR before SET_MEM_TABLE".into());
            }
            ring.addr = true;
            ring.config = req.value;
        }
        StepKind::SetVringCall => ring.call = true,
        StepKind::SetVringBase => {
            if ring.started {
                return bad("SET_VRING_BASE on a started ring".into());
            }
            ring.base = Some(req.value);
        }
        StepKind::SetVringKick => {
            if !(ring.num && ring.addr && ring.base.is_some()) {
                return bad("SET_VRING_KICK before NUM, ADDR and BASE".into());
            }
            ring.started = true;
            // The started ring resubmits the requests handed over to it.
            if let Some(io) = &io {
                for (id, end) in &req.resubmit {
                    io.complete(*id, *end);
                }
            }
        }
        // Enabling a ring not yet started is allowed (the spec): it processes
        // once it is started.
        StepKind::VringEnable => ring.enabled = true,
        ref k => return bad(format!("{k} is not a vhost-user message")),
    }
    Ok(0)
}
