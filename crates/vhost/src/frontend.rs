//! One device's vhost-user frontend: the handshake, then typed requests that keep
//! many round trips in flight.
//!
//! The handshake (`SET_OWNER`, `GET_FEATURES`, `GET_PROTOCOL_FEATURES`,
//! `SET_PROTOCOL_FEATURES` with `REPLY_ACK`, `GET_QUEUE_NUM`) is done with the
//! rust-vmm `vhost` crate's `Frontend` on a clone of the socket, without
//! `NEED_REPLY` (it must not be set before `REPLY_ACK` is acked). Then the socket is
//! handed to a pipelined [`Channel`], and every request carries `NEED_REPLY`: each
//! call returns a [`Pending`] reply at once, so one thread keeps every ring's
//! request to this backend in flight.
//!
//! A backend that does not offer `REPLY_ACK` is refused unless the VMM allows it
//! ([`FrontendConfig::require_reply_ack`] off): then requests without a reply of
//! their own are fire-and-forget (as QEMU sends them then), nothing confirms that
//! the backend did them, and [`Frontend::probe`] — a round trip — is the only
//! sign it is alive and has taken what came before ([`Frontend::acks`] says which).
//!
//! Where the backend offers them (see [`InflightMode`]), the handshake also
//! negotiates the inflight region (`INFLIGHT_SHMFD`) and a stop that leaves
//! requests in flight in it (`GET_VRING_BASE_INFLIGHT`): then
//! [`Frontend::setup_inflight`] gives the backend its region before any ring
//! starts, and the device's requests in flight can be handed over
//! ([`Frontend::can_hand_over`], `docs/blk-inflight.md`).
//!
//! # Examples
//!
//! ```no_run
//! # use std::os::unix::net::UnixStream;
//! # use std::time::Duration;
//! use switchover_vhost::frontend::{Frontend, FrontendConfig};
//! let stream = UnixStream::connect("/run/vhost-user-blk0.sock").unwrap();
//! let fe = Frontend::connect(stream, &FrontendConfig::new("blk0", 4)).unwrap();
//! let deadline = Duration::from_millis(500);
//! // Every ring's base in flight at once, then collected.
//! let pending: Vec<_> = (0..4).map(|r| fe.get_vring_base(r, deadline)).collect();
//! let bases: Vec<u16> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
//! # drop(bases);
//! ```

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use switchover::error::StepFailure;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserLog, VhostUserMemory, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserU64, VhostUserVirtioFeatures,
    VhostUserVringAddr, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Frontend as VhostFrontend, VhostUserFrontend};
use vhost::VhostBackend;
use vm_memory::ByteValued;

use crate::channel::{Channel, Pending};
use crate::inflight::{InflightDesc, InflightRegion};
use crate::memory::MemoryRegion;
use crate::reply::Reply;

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// `VHOST_F_LOG_ALL`: the backend logs every write it makes to guest memory in
/// the log `SET_LOG_BASE` gave it (set only while a migration runs).
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// `SET_VRING_CALL`'s flag for "no file descriptor": the ring has no call
/// eventfd (a vector set to `NO_VECTOR`), the backend signals nothing.
pub const VRING_NOFD: u64 = 0x100;

/// What the VMM asks of a backend at the handshake.
///
/// ```
/// use switchover_vhost::frontend::FrontendConfig;
/// let c = FrontendConfig::new("net0", 8);
/// assert_eq!((c.name.as_str(), c.queues), ("net0", 8));
/// assert!(!c.resend_addr_after_base);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendConfig {
    /// The device's name, for errors.
    pub name: String,
    /// Rings the device needs.
    pub queues: u32,
    /// Virtio features to ack, if the backend offers them (`VERSION_1` and
    /// `PROTOCOL_FEATURES` are required and always acked).
    pub features: u64,
    /// The backend reads a ring's used index only at `SET_VRING_ADDR`
    /// (libvhost-user, e.g. qemu-storage-daemon): after `SET_VRING_BASE`, send the
    /// ring's address again so that it sees the used index of final memory.
    pub resend_addr_after_base: bool,
    /// Whether to negotiate the inflight region (`INFLIGHT_SHMFD`) and a stop that
    /// leaves requests in flight in it (`GET_VRING_BASE_INFLIGHT`).
    pub inflight: InflightMode,
    /// The backend keeps taking requests off a ring disabled with
    /// `SET_VRING_ENABLE(0)` (qemu-storage-daemon), where the spec has a disabled
    /// ring cause no side effect: a drain then waits until every request the guest
    /// published is completed (`used == avail`), not only those the backend took.
    pub pops_while_disabled: bool,
    /// Refuse a backend that does not offer `REPLY_ACK` (the default). Off: such
    /// a backend is driven without acknowledgements (fire-and-forget requests);
    /// its start is then unverified beyond a [`Frontend::probe`], and the VMM
    /// must say so (`RecipeOptions::unacked`).
    pub require_reply_ack: bool,
    /// Do not negotiate `REPLY_ACK` even where the backend offers it: the
    /// backend is driven as one without it (fire-and-forget requests, no acks on
    /// the wire). For test rigs: backends built on rust-vmm's `vhost` crate
    /// always offer it, so this is how such a backend runs without it. Needs
    /// `require_reply_ack` off.
    pub decline_reply_ack: bool,
}

/// Which of the inflight protocol features the frontend negotiates.
///
/// ```
/// use switchover_vhost::frontend::{FrontendConfig, InflightMode};
/// assert_eq!(FrontendConfig::new("blk0", 1).inflight, InflightMode::Offered);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightMode {
    /// `INFLIGHT_SHMFD` if the backend offers it, and `GET_VRING_BASE_INFLIGHT`
    /// with it if offered too (then the device's requests can be handed over).
    Offered,
    /// `INFLIGHT_SHMFD` if offered, never `GET_VRING_BASE_INFLIGHT`: the backend
    /// keeps a region (drain by its count, base recovery, resubmission after a
    /// crash) and completes its requests in flight before answering
    /// `GET_VRING_BASE`, as the spec requires without that feature.
    TrackOnly,
    /// `INFLIGHT_SHMFD` even though the backend does not offer it, never
    /// `GET_VRING_BASE_INFLIGHT`. Outside the spec's negotiation rule; only for a
    /// backend known to implement the region without advertising it:
    /// qemu-storage-daemon 10.0's libvhost-user tracks requests in the region and
    /// resubmits them on restart, but its block export does not list the feature
    /// (checked by `crates/testbed/tests/blk_qsd_recovery.rs`).
    Unadvertised,
    /// Neither.
    Off,
}

impl FrontendConfig {
    /// `queues` rings, no virtio features beyond the required ones.
    pub fn new(name: &str, queues: u32) -> FrontendConfig {
        FrontendConfig {
            name: name.into(),
            queues,
            features: 0,
            resend_addr_after_base: false,
            inflight: InflightMode::Offered,
            pops_while_disabled: false,
            require_reply_ack: true,
            decline_reply_ack: false,
        }
    }
}

/// The handshake failed.
///
/// ```
/// use switchover_vhost::frontend::ConnectError;
/// let e = ConnectError::Missing { device: "blk0".into(), what: "REPLY_ACK".into() };
/// assert_eq!(e.to_string(), "blk0: the backend does not offer REPLY_ACK");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// A handshake request failed.
    #[error("{device}: vhost-user {op}")]
    Vhost {
        /// The device.
        device: String,
        /// The request.
        op: &'static str,
        /// Why.
        #[source]
        source: vhost::Error,
    },
    /// The socket could not be set up.
    #[error("{device}: {op}")]
    Io {
        /// The device.
        device: String,
        /// What was done.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backend lacks something the frontend needs.
    #[error("{device}: the backend does not offer {what}")]
    Missing {
        /// The device.
        device: String,
        /// What it lacks.
        what: String,
    },
}

/// One device's connection to its vhost-user backend.
#[derive(Debug)]
pub struct Frontend {
    name: String,
    queues: u32,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    resend_addr_after_base: bool,
    pops_while_disabled: bool,
    chan: Arc<Channel>,
    /// The virtio features the backend offered at the handshake.
    offered: u64,
    /// The protocol features it offered.
    offered_protocol: VhostUserProtocolFeatures,
    inflight: parking_lot::Mutex<Option<Arc<InflightRegion>>>,
}

impl Frontend {
    /// Does the handshake on a connected socket and takes it over.
    ///
    /// # Errors
    /// [`ConnectError`]: the backend lacks `VERSION_1`, `PROTOCOL_FEATURES`,
    /// `REPLY_ACK` or enough queues, or a request failed.
    pub fn connect(stream: UnixStream, cfg: &FrontendConfig) -> Result<Frontend, ConnectError> {
        let name = cfg.name.clone();
        let io = |op: &'static str| {
            let device = name.clone();
            move |source| ConnectError::Io { device, op, source }
        };
        let vh = |op: &'static str| {
            let device = name.clone();
            move |source| ConnectError::Vhost { device, op, source }
        };
        let missing = |what: String| ConnectError::Missing { device: name.clone(), what };
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(io("socket read timeout"))?;
        let clone = stream.try_clone().map_err(io("clone socket"))?;
        let (features, protocol, offered_all, offered_protocol);
        {
            let mut fe = VhostFrontend::from_stream(clone, u64::from(cfg.queues));
            fe.set_owner().map_err(vh("SET_OWNER"))?;
            let offered = fe.get_features().map_err(vh("GET_FEATURES"))?;
            offered_all = offered;
            let pf_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
            if offered & pf_bit == 0 {
                return Err(missing("PROTOCOL_FEATURES".into()));
            }
            if offered & VIRTIO_F_VERSION_1 == 0 {
                return Err(missing("VERSION_1".into()));
            }
            features = pf_bit | VIRTIO_F_VERSION_1 | (cfg.features & offered);
            let pf = fe.get_protocol_features().map_err(vh("GET_PROTOCOL_FEATURES"))?;
            offered_protocol = pf;
            if !pf.contains(VhostUserProtocolFeatures::REPLY_ACK) && cfg.require_reply_ack {
                return Err(missing(format!("REPLY_ACK (protocol features {:#x})", pf.bits())));
            }
            // LOG_SHMFD where offered: dirty logging during a migration needs it.
            let mut wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::LOG_SHMFD;
            if cfg.decline_reply_ack && !cfg.require_reply_ack {
                wanted.remove(VhostUserProtocolFeatures::REPLY_ACK);
            }
            protocol = pf & wanted | inflight_features(cfg.inflight, pf);
            fe.set_protocol_features(protocol).map_err(vh("SET_PROTOCOL_FEATURES"))?;
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let q = fe.get_queue_num().map_err(vh("GET_QUEUE_NUM"))?;
                if q < u64::from(cfg.queues) {
                    return Err(missing(format!("{} queues (it has {q})", cfg.queues)));
                }
            } else if cfg.queues > 1 {
                return Err(missing(format!("MQ ({} queues needed)", cfg.queues)));
            }
        }
        stream.set_read_timeout(None).map_err(io("socket read timeout"))?;
        let acks = protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        let chan = if acks { Channel::start(&name, stream) } else { Channel::start_unacked(&name, stream) };
        let chan = chan.map_err(io("start the reply reader"))?;
        Ok(Frontend {
            name,
            queues: cfg.queues,
            features,
            protocol,
            resend_addr_after_base: cfg.resend_addr_after_base,
            pops_while_disabled: cfg.pops_while_disabled,
            chan,
            offered: offered_all,
            offered_protocol,
            inflight: parking_lot::Mutex::new(None),
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Rings.
    pub fn queues(&self) -> u32 {
        self.queues
    }
    /// The virtio features acked (sent with `SET_FEATURES`).
    pub fn features(&self) -> u64 {
        self.features
    }
    /// The protocol features acked.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }
    /// Whether `SET_VRING_ADDR` follows `SET_VRING_BASE` (see [`FrontendConfig`]).
    pub fn resend_addr_after_base(&self) -> bool {
        self.resend_addr_after_base
    }
    /// Whether the backend takes requests off a disabled ring (see [`FrontendConfig`]).
    pub fn pops_while_disabled(&self) -> bool {
        self.pops_while_disabled
    }
    /// The pipelined channel underneath.
    pub fn channel(&self) -> &Arc<Channel> {
        &self.chan
    }
    /// Whether the backend acknowledges requests (`REPLY_ACK` negotiated). When
    /// it does not, a request settles once written: only [`Frontend::probe`]
    /// shows the backend alive.
    pub fn acks(&self) -> bool {
        self.chan.acks()
    }

    /// One round trip that shows the backend alive and in step: `GET_FEATURES`,
    /// whose reply must come (before the deadline) after everything sent before
    /// it was taken, and must be the features offered at the handshake. What a
    /// VMM sends after the fire-and-forget start of a backend without `REPLY_ACK`.
    pub fn probe(&self, deadline: Duration) -> Pending<()> {
        let offered = self.offered;
        let name = self.name.clone();
        self.chan.request(FrontendReq::GET_FEATURES, &[], &[], deadline).map(move |r| match r? {
            Reply::U64(f) if f == offered => Ok(()),
            Reply::U64(f) => Err(StepFailure::Garbage {
                what: format!("{name}: GET_FEATURES answered {f:#x}, {offered:#x} at the handshake (another backend?)"),
            }),
            Reply::State(..) => Err(StepFailure::Garbage { what: "GET_FEATURES answered with a vring state".into() }),
        })
    }

    fn acked(&self, req: FrontendReq, body: &[u8], fds: &[RawFd], deadline: Duration) -> Pending<()> {
        self.chan.request(req, body, fds, deadline).map(|r| r.map(|_| ()))
    }

    /// `SET_FEATURES`.
    pub fn set_features(&self, features: u64, deadline: Duration) -> Pending<()> {
        self.acked(FrontendReq::SET_FEATURES, VhostUserU64::new(features).as_slice(), &[], deadline)
    }

    /// `SET_MEM_TABLE` with every region's fd.
    pub fn set_mem_table(&self, regions: &[MemoryRegion], deadline: Duration) -> Pending<()> {
        let mut body = VhostUserMemory::new(regions.len() as u32).as_slice().to_vec();
        for r in regions {
            body.extend_from_slice(VhostUserMemoryRegion::new(r.guest_addr, r.size, r.user_addr, r.fd_offset).as_slice());
        }
        let fds: Vec<RawFd> = regions.iter().map(|r| r.fd).collect();
        self.acked(FrontendReq::SET_MEM_TABLE, &body, &fds, deadline)
    }

    /// `SET_VRING_NUM`.
    pub fn set_vring_num(&self, ring: u32, num: u16, deadline: Duration) -> Pending<()> {
        self.acked(FrontendReq::SET_VRING_NUM, VhostUserVringState::new(ring, u32::from(num)).as_slice(), &[], deadline)
    }

    /// `SET_VRING_ADDR` with the VMM's addresses of the descriptor table, used
    /// ring and available ring.
    pub fn set_vring_addr(&self, ring: u32, desc_hva: u64, used_hva: u64, avail_hva: u64, deadline: Duration) -> Pending<()> {
        let a = VhostUserVringAddr::new(ring, VhostUserVringAddrFlags::empty(), desc_hva, used_hva, avail_hva, 0);
        self.acked(FrontendReq::SET_VRING_ADDR, a.as_slice(), &[], deadline)
    }

    /// `SET_VRING_BASE`.
    pub fn set_vring_base(&self, ring: u32, base: u16, deadline: Duration) -> Pending<()> {
        self.acked(FrontendReq::SET_VRING_BASE, VhostUserVringState::new(ring, u32::from(base)).as_slice(), &[], deadline)
    }

    /// `GET_VRING_BASE`: stops the ring; its reply is the ring's next avail index
    /// (checked to name the ring asked about and to fit 16 bits).
    pub fn get_vring_base(&self, ring: u32, deadline: Duration) -> Pending<u16> {
        self.chan.request(FrontendReq::GET_VRING_BASE, VhostUserVringState::new(ring, 0).as_slice(), &[], deadline).map(|r| match r? {
            Reply::State(_, num) => Ok(num as u16),
            Reply::U64(_) => Err(StepFailure::Garbage { what: "GET_VRING_BASE answered without a vring state".into() }),
        })
    }

    /// `SET_VRING_KICK` with the ring's kick eventfd.
    pub fn set_vring_kick(&self, ring: u32, fd: RawFd, deadline: Duration) -> Pending<()> {
        self.acked(FrontendReq::SET_VRING_KICK, VhostUserU64::new(u64::from(ring)).as_slice(), &[fd], deadline)
    }

    /// `SET_VRING_CALL` with the ring's call eventfd.
    pub fn set_vring_call(&self, ring: u32, fd: RawFd, deadline: Duration) -> Pending<()> {
        self.acked(FrontendReq::SET_VRING_CALL, VhostUserU64::new(u64::from(ring)).as_slice(), &[fd], deadline)
    }

    /// `SET_VRING_ENABLE`.
    pub fn set_vring_enable(&self, ring: u32, on: bool, deadline: Duration) -> Pending<()> {
        self.acked(FrontendReq::SET_VRING_ENABLE, VhostUserVringState::new(ring, u32::from(on)).as_slice(), &[], deadline)
    }

    /// The virtio features the backend offered at the handshake.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// The protocol features the backend offered at the handshake.
    pub fn offered_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.offered_protocol
    }

    /// Whether the backend can log its writes to guest memory in a shared log
    /// (`VHOST_F_LOG_ALL` offered, `LOG_SHMFD` negotiated): what a migration
    /// between two hosts needs from it.
    pub fn can_log(&self) -> bool {
        self.offered & VHOST_F_LOG_ALL != 0 && self.protocol.contains(VhostUserProtocolFeatures::LOG_SHMFD)
    }

    /// The features to send while dirty logging runs: the acked ones with
    /// `VHOST_F_LOG_ALL`.
    pub fn logging_features(&self) -> u64 {
        self.features | VHOST_F_LOG_ALL
    }

    /// `SET_LOG_BASE` with the shared log's memfd (`LOG_SHMFD`): the backend maps
    /// `size` bytes of it at `offset` and logs there, one bit per 4 KiB page of
    /// guest-physical address. Sent without `NEED_REPLY` (as QEMU does): with
    /// `LOG_SHMFD` the backend answers it anyway (libvhost-user with a `u64`, the
    /// rust-vmm backend with the log region), and the answer only acknowledges.
    pub fn set_log_base(&self, fd: RawFd, size: u64, offset: u64, deadline: Duration) -> Pending<()> {
        self.acked(FrontendReq::SET_LOG_BASE, VhostUserLog::new(size, offset).as_slice(), &[fd], deadline)
    }

    /// `SET_VRING_ADDR` with the log flag (`VHOST_VRING_F_LOG`) and the used ring's
    /// guest-physical address, where the backend logs its used-ring writes.
    pub fn set_vring_addr_logged(
        &self,
        ring: u32,
        desc_hva: u64,
        used_hva: u64,
        avail_hva: u64,
        used_gpa: u64,
        deadline: Duration,
    ) -> Pending<()> {
        let flags = VhostUserVringAddrFlags::VHOST_VRING_F_LOG;
        let a = VhostUserVringAddr::new(ring, flags, desc_hva, used_hva, avail_hva, used_gpa);
        self.acked(FrontendReq::SET_VRING_ADDR, a.as_slice(), &[], deadline)
    }

    /// `SET_VRING_CALL` without a file descriptor (the "no fd" flag): the ring's
    /// vector is `NO_VECTOR`, the backend signals nothing.
    pub fn set_vring_call_none(&self, ring: u32, deadline: Duration) -> Pending<()> {
        self.acked(FrontendReq::SET_VRING_CALL, VhostUserU64::new(u64::from(ring) | VRING_NOFD).as_slice(), &[], deadline)
    }

    /// Whether the backend keeps an inflight region (`INFLIGHT_SHMFD` negotiated).
    pub fn tracks_inflight(&self) -> bool {
        self.protocol.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    /// Whether the device's requests in flight can be handed over: its
    /// `GET_VRING_BASE` leaves them in the inflight region instead of waiting for
    /// them (`INFLIGHT_SHMFD` and `GET_VRING_BASE_INFLIGHT` negotiated).
    pub fn can_hand_over(&self) -> bool {
        self.tracks_inflight() && self.protocol.contains(VhostUserProtocolFeatures::GET_VRING_BASE_INFLIGHT)
    }

    /// The device's inflight region, once [`Frontend::setup_inflight`] (or
    /// [`Frontend::adopt_inflight`]) gave it one.
    pub fn inflight(&self) -> Option<Arc<InflightRegion>> {
        self.inflight.lock().clone()
    }

    /// Keeps `region` as the device's inflight region without sending it: the
    /// region of the backend this connection replaces (a VMM reconnecting a device
    /// carries its region over, as QEMU's vhost-user-blk does), sent to the new
    /// backend by the next [`Frontend::setup_inflight`].
    pub fn adopt_inflight(&self, region: Arc<InflightRegion>) {
        *self.inflight.lock() = Some(region);
    }

    /// `GET_INFLIGHT_FD`: the backend allocates a region for `num_queues` rings of
    /// `queue_size` descriptors; its reply carries the region's descriptor, which
    /// is mapped here (checked against the description and sealed against
    /// shrinking where the file allows it).
    pub fn get_inflight_fd(&self, num_queues: u16, queue_size: u16, deadline: Duration) -> Pending<Arc<InflightRegion>> {
        let ask = InflightDesc { mmap_size: 0, mmap_offset: 0, num_queues, queue_size };
        let size = InflightDesc::WIRE_SIZE as u32;
        self.chan.request_with_fd(FrontendReq::GET_INFLIGHT_FD, &ask.to_bytes(), &[], deadline, size).map(move |r| {
            let r = r?;
            let garbage = |what: String| StepFailure::Garbage { what: format!("GET_INFLIGHT_FD: {what}") };
            let d = InflightDesc::parse(&r.body).ok_or_else(|| garbage("a reply of another size".into()))?;
            if (d.num_queues, d.queue_size) != (num_queues, queue_size) {
                return Err(garbage(format!(
                    "a region for {} queues of {}, {num_queues} of {queue_size} asked for",
                    d.num_queues, d.queue_size
                )));
            }
            InflightRegion::map(r.fd, d).map(Arc::new).map_err(|e| garbage(e.to_string()))
        })
    }

    /// `SET_INFLIGHT_FD`: hands the region to the backend (before any ring is kicked).
    pub fn set_inflight_fd(&self, region: &InflightRegion, deadline: Duration) -> Pending<()> {
        self.acked(FrontendReq::SET_INFLIGHT_FD, &region.desc().to_bytes(), &[region.fd()], deadline)
    }

    /// Gives the backend its inflight region before its rings start: the region the
    /// device already has (after [`Frontend::adopt_inflight`], or again on the same
    /// connection), else a new one from `GET_INFLIGHT_FD` (every ring of
    /// `queue_size` descriptors), then `SET_INFLIGHT_FD`. Answers at once, with
    /// nothing sent, when the region is not negotiated.
    pub fn setup_inflight(self: &Arc<Self>, queue_size: u16, deadline: Duration) -> Pending<()> {
        let (p, answer) = Pending::new();
        if !self.tracks_inflight() {
            answer(Ok(()));
            return p;
        }
        let send = move |fe: &Arc<Frontend>, region: Arc<InflightRegion>, answer: crate::channel::Then<()>| {
            *fe.inflight.lock() = Some(region.clone());
            fe.set_inflight_fd(&region, deadline).then(answer);
        };
        match self.inflight() {
            Some(region) => send(self, region, answer),
            None => {
                let queues = u16::try_from(self.queues).unwrap_or(u16::MAX);
                let fe = self.clone();
                self.get_inflight_fd(queues, queue_size, deadline).then(move |r| match r {
                    Ok(region) => send(&fe, region, answer),
                    Err(e) => answer(Err(e)),
                });
            }
        }
        p
    }

    /// Closes the connection (the backend sees the frontend go away); requests in
    /// flight fail as disconnected.
    pub fn close(&self) {
        self.chan.close();
    }
}

/// The inflight protocol features to ask for, given the mode and what the backend offers.
fn inflight_features(mode: InflightMode, offered: VhostUserProtocolFeatures) -> VhostUserProtocolFeatures {
    let (shm, base) = (VhostUserProtocolFeatures::INFLIGHT_SHMFD, VhostUserProtocolFeatures::GET_VRING_BASE_INFLIGHT);
    match mode {
        InflightMode::Offered if offered.contains(shm) => shm | (offered & base),
        InflightMode::TrackOnly => offered & shm,
        InflightMode::Unadvertised => shm,
        _ => VhostUserProtocolFeatures::empty(),
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        self.chan.close();
    }
}
