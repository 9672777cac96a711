//! One device's vhost-user frontend.
//!
//! The handshake (`SET_OWNER`, `GET_FEATURES`, `GET_PROTOCOL_FEATURES`,
//! `SET_PROTOCOL_FEATURES` with `REPLY_ACK`, `GET_QUEUE_NUM`) is done with the
//! rust-vmm `vhost` Frontend on a clone of the socket, without `NEED_REPLY` (it must
//! not be set before `REPLY_ACK` is acked). Then the socket is handed to a
//! split-phase [`Channel`], and every step message carries `NEED_REPLY`.
//!
//! # Examples
//!
//! ```no_run
//! # use std::time::Duration;
//! # use switchover::real::backend::spawn_own;
//! # use switchover::real::dir::PrivateDir;
//! # use switchover::real::frontend::{BackendKind, DeviceConn};
//! # use switchover::real::mem::GuestMem;
//! # use switchover::step::StepKind;
//! # let dir = PrivateDir::new().unwrap();
//! # let exe = std::path::Path::new("target/release/switchover"); // runs `switchover real __backend net SOCK 2`
//! # let (stream, _backend) = spawn_own(exe, dir.path(), "net0", false, 2, None, None).unwrap();
//! # let conn = DeviceConn::connect("net0", stream, 2, BackendKind::OwnNet).unwrap();
//! # let mem = GuestMem::new(2).unwrap();
//! # let deadline = Duration::from_secs(5);
//!
//! // Ring 0 set up over the split-phase channel, each message acked (REPLY_ACK).
//! conn.call_step(&StepKind::SetFeatures, None, 0, 0, None, &mem, deadline).unwrap();
//! conn.call_step(&StepKind::SetMemTable, None, 0, 0, None, &mem, deadline).unwrap();
//! conn.call_step(&StepKind::SetVringNum, Some(0), 0, 0, None, &mem, deadline).unwrap();
//! ```

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{
    FrontendReq, VhostUserMemory, VhostUserProtocolFeatures, VhostUserU64, VhostUserVirtioFeatures, VhostUserVringAddr,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::ByteValued;

use super::mem::{GuestMem, QSIZE};
use super::wire::{Channel, OnReply};
use crate::error::StepFailure;
use crate::step::StepKind;

/// Who serves a device.
///
/// # Examples
///
/// ```
/// use switchover::real::frontend::BackendKind;
/// assert_eq!(serde_json::to_string(&BackendKind::OwnBlk).unwrap(), "\"own_blk\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The project's own vhost-user net backend.
    OwnNet,
    /// The project's own vhost-user blk backend.
    OwnBlk,
    /// qemu-storage-daemon's vhost-user-blk export.
    Qsd,
}

impl BackendKind {
    /// Short name for reports.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover::real::frontend::BackendKind;
    /// assert_eq!(BackendKind::OwnNet.name(), "own-net");
    /// assert_eq!(BackendKind::Qsd.name(), "qemu-storage-daemon");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::OwnNet => "own-net",
            BackendKind::OwnBlk => "own-blk",
            BackendKind::Qsd => "qemu-storage-daemon",
        }
    }
}

/// A connected device: its control channel and what was negotiated.
///
/// # Examples
///
/// ```no_run
/// # use std::time::Duration;
/// # use switchover::real::backend::spawn_own;
/// # use switchover::real::dir::PrivateDir;
/// # use switchover::real::frontend::{BackendKind, DeviceConn};
/// # use switchover::real::mem::GuestMem;
/// # use switchover::step::StepKind;
/// # let dir = PrivateDir::new().unwrap();
/// # let exe = std::path::Path::new("target/release/switchover"); // runs `switchover real __backend net SOCK 2`
/// # let (stream, _backend) = spawn_own(exe, dir.path(), "net0", false, 2, None, None).unwrap();
/// # let conn = DeviceConn::connect("net0", stream, 2, BackendKind::OwnNet).unwrap();
/// # let mem = GuestMem::new(2).unwrap();
/// # let deadline = Duration::from_secs(5);
///
/// assert_eq!((conn.name.as_str(), conn.rings, conn.backend), ("net0", 2, BackendKind::OwnNet));
/// assert_ne!(conn.features, 0); // VERSION_1 | PROTOCOL_FEATURES
/// ```
#[derive(Debug)]
pub struct DeviceConn {
    /// Device name (`net3`).
    pub name: String,
    /// Its rings.
    pub rings: u32,
    /// Its backend.
    pub backend: BackendKind,
    /// Features acked with `SET_FEATURES` (VERSION_1 | PROTOCOL_FEATURES).
    pub features: u64,
    chan: Arc<Channel>,
}

/// Handshake errors name the device and the message.
fn herr(name: &str, what: &str, e: impl std::fmt::Display) -> String {
    format!("{name}: vhost-user {what}: {e}")
}

impl DeviceConn {
    /// Negotiates with the backend on `stream` and starts the split-phase channel.
    ///
    /// # Errors
    /// A message naming the device and the request that failed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use switchover::real::backend::spawn_own;
    /// # use switchover::real::dir::PrivateDir;
    /// # use switchover::real::frontend::{BackendKind, DeviceConn};
    /// # use switchover::real::mem::GuestMem;
    /// # use switchover::step::StepKind;
    /// # let dir = PrivateDir::new().unwrap();
    /// # let exe = std::path::Path::new("target/release/switchover"); // runs `switchover real __backend net SOCK 2`
    /// # let (stream, _backend) = spawn_own(exe, dir.path(), "net0", false, 2, None, None).unwrap();
    /// # let conn = DeviceConn::connect("net0", stream, 2, BackendKind::OwnNet).unwrap();
    /// # let mem = GuestMem::new(2).unwrap();
    /// # let deadline = Duration::from_secs(5);
    ///
    /// // `conn` came from `DeviceConn::connect("net0", stream, 2, BackendKind::OwnNet)`.
    /// assert_eq!(conn.channel().name(), "net0");
    /// assert_eq!(conn.channel().in_flight(), 0);
    /// ```
    pub fn connect(name: &str, stream: UnixStream, rings: u32, backend: BackendKind) -> Result<DeviceConn, String> {
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| herr(name, "socket", e))?;
        let clone = stream.try_clone().map_err(|e| herr(name, "socket", e))?;
        let features;
        {
            let mut fe = Frontend::from_stream(clone, u64::from(rings));
            fe.set_owner().map_err(|e| herr(name, "SET_OWNER", e))?;
            let offered = fe.get_features().map_err(|e| herr(name, "GET_FEATURES", e))?;
            let pf_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
            let v1 = 1u64 << VIRTIO_F_VERSION_1;
            if offered & pf_bit == 0 || offered & v1 == 0 {
                return Err(format!("{name}: backend offers features {offered:#x} without PROTOCOL_FEATURES or VERSION_1"));
            }
            features = pf_bit | v1;
            let pf = fe.get_protocol_features().map_err(|e| herr(name, "GET_PROTOCOL_FEATURES", e))?;
            if !pf.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                return Err(format!("{name}: backend does not offer REPLY_ACK (protocol features {:#x})", pf.bits()));
            }
            let want = pf & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
            fe.set_protocol_features(want).map_err(|e| herr(name, "SET_PROTOCOL_FEATURES", e))?;
            if want.contains(VhostUserProtocolFeatures::MQ) {
                let q = fe.get_queue_num().map_err(|e| herr(name, "GET_QUEUE_NUM", e))?;
                if q < u64::from(rings) {
                    return Err(format!("{name}: backend has {q} queues, {rings} needed"));
                }
            } else if rings > 1 {
                return Err(format!("{name}: backend does not offer MQ, {rings} queues needed"));
            }
        }
        stream.set_read_timeout(None).map_err(|e| herr(name, "socket", e))?;
        let chan = Channel::start(name, stream).map_err(|e| herr(name, "reader thread", e))?;
        Ok(DeviceConn { name: name.to_string(), rings, backend, features, chan })
    }

    /// The channel.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use switchover::real::backend::spawn_own;
    /// # use switchover::real::dir::PrivateDir;
    /// # use switchover::real::frontend::{BackendKind, DeviceConn};
    /// # use switchover::real::mem::GuestMem;
    /// # use switchover::step::StepKind;
    /// # let dir = PrivateDir::new().unwrap();
    /// # let exe = std::path::Path::new("target/release/switchover"); // runs `switchover real __backend net SOCK 2`
    /// # let (stream, _backend) = spawn_own(exe, dir.path(), "net0", false, 2, None, None).unwrap();
    /// # let conn = DeviceConn::connect("net0", stream, 2, BackendKind::OwnNet).unwrap();
    /// # let mem = GuestMem::new(2).unwrap();
    /// # let deadline = Duration::from_secs(5);
    ///
    /// assert_eq!(conn.channel().name(), "net0");
    /// assert_eq!(conn.channel().in_flight(), 0);
    /// ```
    pub fn channel(&self) -> &Arc<Channel> {
        &self.chan
    }

    /// Sends the message of step `kind` on `ring` (global ring `g` for addresses);
    /// `value` is the base for `SET_VRING_BASE`, `fd` the eventfd for KICK/CALL.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use switchover::real::backend::spawn_own;
    /// # use switchover::real::dir::PrivateDir;
    /// # use switchover::real::frontend::{BackendKind, DeviceConn};
    /// # use switchover::real::mem::GuestMem;
    /// # use switchover::step::StepKind;
    /// # let dir = PrivateDir::new().unwrap();
    /// # let exe = std::path::Path::new("target/release/switchover"); // runs `switchover real __backend net SOCK 2`
    /// # let (stream, _backend) = spawn_own(exe, dir.path(), "net0", false, 2, None, None).unwrap();
    /// # let conn = DeviceConn::connect("net0", stream, 2, BackendKind::OwnNet).unwrap();
    /// # let mem = GuestMem::new(2).unwrap();
    /// # let deadline = Duration::from_secs(5);
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let on_reply = Box::new(move |r| tx.send(r).unwrap());
    /// conn.send_step(&StepKind::SetFeatures, None, 0, 0, None, &mem, deadline, on_reply);
    /// assert!(rx.recv().unwrap().is_ok()); // acked
    /// ```
    #[allow(clippy::too_many_arguments)] // one argument per field of the message
    pub fn send_step(
        &self,
        kind: &StepKind,
        ring: Option<u32>,
        g: u32,
        value: u16,
        fd: Option<RawFd>,
        mem: &GuestMem,
        deadline: Duration,
        on_reply: OnReply,
    ) {
        let r = ring.unwrap_or(0);
        let fds: Vec<RawFd> = fd.into_iter().collect();
        match kind {
            StepKind::SetFeatures => {
                self.chan.send(FrontendReq::SET_FEATURES, VhostUserU64::new(self.features).as_slice(), &[], deadline, on_reply)
            }
            StepKind::SetMemTable => {
                let (region, memfd) = mem.region();
                let mut body = VhostUserMemory::new(1).as_slice().to_vec();
                body.extend_from_slice(region.as_slice());
                self.chan.send(FrontendReq::SET_MEM_TABLE, &body, &[memfd], deadline, on_reply)
            }
            StepKind::SetVringNum => self.chan.send(
                FrontendReq::SET_VRING_NUM,
                VhostUserVringState::new(r, u32::from(QSIZE)).as_slice(),
                &[],
                deadline,
                on_reply,
            ),
            StepKind::SetVringAddr => {
                let a = VhostUserVringAddr::new(
                    r,
                    VhostUserVringAddrFlags::empty(),
                    mem.hva(GuestMem::desc(g)),
                    mem.hva(GuestMem::used(g)),
                    mem.hva(GuestMem::avail(g)),
                    0,
                );
                self.chan.send(FrontendReq::SET_VRING_ADDR, a.as_slice(), &[], deadline, on_reply)
            }
            StepKind::SetVringBase => self.chan.send(
                FrontendReq::SET_VRING_BASE,
                VhostUserVringState::new(r, u32::from(value)).as_slice(),
                &[],
                deadline,
                on_reply,
            ),
            StepKind::SetVringKick => {
                self.chan.send(FrontendReq::SET_VRING_KICK, VhostUserU64::new(u64::from(r)).as_slice(), &fds, deadline, on_reply)
            }
            StepKind::SetVringCall => {
                self.chan.send(FrontendReq::SET_VRING_CALL, VhostUserU64::new(u64::from(r)).as_slice(), &fds, deadline, on_reply)
            }
            StepKind::VringEnable => {
                self.chan.send(FrontendReq::SET_VRING_ENABLE, VhostUserVringState::new(r, 1).as_slice(), &[], deadline, on_reply)
            }
            StepKind::VringDisable => {
                self.chan.send(FrontendReq::SET_VRING_ENABLE, VhostUserVringState::new(r, 0).as_slice(), &[], deadline, on_reply)
            }
            StepKind::GetVringBase => {
                self.chan.send(FrontendReq::GET_VRING_BASE, VhostUserVringState::new(r, 0).as_slice(), &[], deadline, on_reply)
            }
            other => on_reply(Err(StepFailure::Other { message: format!("{} is not a vhost-user message", other.name()) })),
        }
    }

    /// Sends step `kind` and waits for its reply (set-up outside the window).
    ///
    /// # Errors
    /// A message naming the device, ring and request.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use switchover::real::backend::spawn_own;
    /// # use switchover::real::dir::PrivateDir;
    /// # use switchover::real::frontend::{BackendKind, DeviceConn};
    /// # use switchover::real::mem::GuestMem;
    /// # use switchover::step::StepKind;
    /// # let dir = PrivateDir::new().unwrap();
    /// # let exe = std::path::Path::new("target/release/switchover"); // runs `switchover real __backend net SOCK 2`
    /// # let (stream, _backend) = spawn_own(exe, dir.path(), "net0", false, 2, None, None).unwrap();
    /// # let conn = DeviceConn::connect("net0", stream, 2, BackendKind::OwnNet).unwrap();
    /// # let mem = GuestMem::new(2).unwrap();
    /// # let deadline = Duration::from_secs(5);
    ///
    /// conn.call_step(&StepKind::SetFeatures, None, 0, 0, None, &mem, deadline).unwrap();
    /// let e = conn.call_step(&StepKind::DrainInflight, Some(0), 0, 0, None, &mem, deadline).unwrap_err();
    /// assert!(e.contains("not a vhost-user message"), "{e}");
    /// ```
    #[allow(clippy::too_many_arguments)] // one argument per field of the message
    pub fn call_step(
        &self,
        kind: &StepKind,
        ring: Option<u32>,
        g: u32,
        value: u16,
        fd: Option<&dyn AsRawFd>,
        mem: &GuestMem,
        deadline: Duration,
    ) -> Result<(), String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send_step(
            kind,
            ring,
            g,
            value,
            fd.map(|f| f.as_raw_fd()),
            mem,
            deadline,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let r = rx.recv_timeout(deadline + Duration::from_secs(1)).unwrap_or(Err(StepFailure::Timeout { after: deadline }));
        r.map(|_| ()).map_err(|e| match ring {
            Some(q) => format!("{} ring {q} {}: {e}", self.name, kind.name()),
            None => format!("{} {}: {e}", self.name, kind.name()),
        })
    }

    /// Closes the control channel.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use switchover::real::backend::spawn_own;
    /// # use switchover::real::dir::PrivateDir;
    /// # use switchover::real::frontend::{BackendKind, DeviceConn};
    /// # use switchover::real::mem::GuestMem;
    /// # use switchover::step::StepKind;
    /// # let dir = PrivateDir::new().unwrap();
    /// # let exe = std::path::Path::new("target/release/switchover"); // runs `switchover real __backend net SOCK 2`
    /// # let (stream, _backend) = spawn_own(exe, dir.path(), "net0", false, 2, None, None).unwrap();
    /// # let conn = DeviceConn::connect("net0", stream, 2, BackendKind::OwnNet).unwrap();
    /// # let mem = GuestMem::new(2).unwrap();
    /// # let deadline = Duration::from_secs(5);
    ///
    /// conn.close();
    /// let e = conn.call_step(&StepKind::SetFeatures, None, 0, 0, None, &mem, deadline).unwrap_err();
    /// assert!(e.starts_with("net0"), "{e}");
    /// ```
    pub fn close(&self) {
        self.chan.close();
    }
}

impl Drop for DeviceConn {
    fn drop(&mut self) {
        self.chan.close();
    }
}
