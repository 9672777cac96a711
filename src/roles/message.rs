//! What crosses between the two roles, and its wire encoding.
//!
//! The encoding is a small self-describing binary format written here (no
//! serialisation framework in the core): little-endian integers, strings and lists
//! prefixed by their length, enums by a tag byte. [`Message::decode`] checks every
//! length against what is left of the frame and every tag against the known ones,
//! so a frame from a confused or hostile peer is refused with a [`DecodeError`],
//! never a panic (fuzzed: `fuzz/fuzz_targets/message_decode.rs`). On the path every
//! message travels in an [`Envelope`] that ties it to one switchover.
//!
//! # Examples
//!
//! ```
//! use switchover::roles::message::Message;
//! use switchover::state::VringBase;
//! let m = Message::State { bases: vec![VringBase { device: 0, ring: 1, base: 77 }], inflight: vec![], devices: vec![] };
//! let bytes = m.encode();
//! assert_eq!(Message::decode(&bytes).unwrap(), m);
//! assert!(Message::decode(&bytes[..bytes.len() - 1]).is_err());
//! ```

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{IoCause, StepError, StepFailure};
use crate::ids::{DeviceId, Side, StepId};
use crate::state::{DeviceBlob, InflightReq, VringBase};
use crate::step::StepKind;

use super::error::{DecodeError, HookError, HookKind, MessageKind, PathError, PathOp, Refusal, SwitchoverError};

/// What crosses between the roles.
///
/// ```
/// use switchover::roles::message::Message;
/// use switchover::roles::MessageKind;
/// assert_eq!(Message::Ready { prepare_ms: 1.5, estimate_ms: None }.kind(), MessageKind::Ready);
/// assert_eq!(MessageKind::StartFailed.to_string(), "start_failed");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Message {
    /// Source → destination, at migration start: each device's configuration as the
    /// guest has it now (the destination stages it in prepare).
    Config {
        /// Each device's VMM-owned state and configuration generation.
        devices: Vec<DeviceBlob>,
    },
    /// Destination → source: prepared; the source may stop the guest (switchover-ack).
    Ready {
        /// How long the destination's prepare took (ms).
        prepare_ms: f64,
        /// The destination's predicted blackout (ms), if it made one.
        estimate_ms: Option<f64>,
    },
    /// Destination → source: prepare failed; the source must not stop.
    NotReady {
        /// Why.
        cause: SwitchoverError,
    },
    /// Source → destination: the devices' state, read while the guest is frozen.
    State {
        /// Every ring's captured base.
        bases: Vec<VringBase>,
        /// Block requests handed over instead of drained, to resubmit.
        inflight: Vec<InflightReq>,
        /// Each device's VMM-owned state and configuration generation.
        devices: Vec<DeviceBlob>,
    },
    /// Source → destination: the source could not stop; the destination must not start.
    Abort {
        /// Why.
        cause: SwitchoverError,
    },
    /// Destination → source: devices started, the guest runs on the destination.
    Running {
        /// How long the destination's blackout took (ms).
        blackout_ms: f64,
        /// Devices whose start could not be verified (their backends do not
        /// acknowledge requests): empty when every start was acknowledged.
        unverified: Vec<DeviceId>,
    },
    /// Destination → source: starting failed; the destination stopped every ring it
    /// had started and gave the storage back, and will not run the guest, so the
    /// source resumes it.
    StartFailed {
        /// Why.
        cause: SwitchoverError,
    },
    /// Destination → source: its deadline for the state passed; it will not run the
    /// guest (a state that arrives later is ignored), so the source resumes it.
    WillNotRun {
        /// Why.
        cause: SwitchoverError,
    },
    /// Source → destination, when the outcome was in doubt: what became of the guest?
    Query,
    /// Destination → source: the answer to a query.
    Verdict {
        /// The destination runs the guest.
        running: bool,
        /// Why it does not, if it does not.
        cause: Option<SwitchoverError>,
    },
}

impl Message {
    /// Its kind.
    ///
    /// ```
    /// use switchover::roles::message::Message;
    /// use switchover::roles::MessageKind;
    /// assert_eq!(Message::Query.kind(), MessageKind::Query);
    /// ```
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Config { .. } => MessageKind::Config,
            Message::Ready { .. } => MessageKind::Ready,
            Message::NotReady { .. } => MessageKind::NotReady,
            Message::State { .. } => MessageKind::State,
            Message::Abort { .. } => MessageKind::Abort,
            Message::Running { .. } => MessageKind::Running,
            Message::StartFailed { .. } => MessageKind::StartFailed,
            Message::WillNotRun { .. } => MessageKind::WillNotRun,
            Message::Query => MessageKind::Query,
            Message::Verdict { .. } => MessageKind::Verdict,
        }
    }

    fn write(&self, w: &mut Writer) {
        w.u8(self.kind() as u8);
        match self {
            Message::Config { devices } => w.blobs(devices),
            Message::Ready { prepare_ms, estimate_ms } => {
                w.f64(*prepare_ms);
                match estimate_ms {
                    None => w.u8(0),
                    Some(e) => {
                        w.u8(1);
                        w.f64(*e);
                    }
                }
            }
            Message::Running { blackout_ms, unverified } => {
                w.f64(*blackout_ms);
                w.u32(unverified.len() as u32);
                for d in unverified {
                    w.u32(d.0);
                }
            }
            Message::NotReady { cause } | Message::Abort { cause } | Message::StartFailed { cause } | Message::WillNotRun { cause } => {
                w.cause(cause)
            }
            Message::State { bases, inflight, devices } => {
                w.u32(bases.len() as u32);
                for b in bases {
                    w.u32(b.device);
                    w.u32(b.ring);
                    w.u16(b.base);
                }
                w.u32(inflight.len() as u32);
                for r in inflight {
                    w.u32(r.device);
                    w.u32(r.ring);
                    w.u64(r.id);
                }
                w.blobs(devices);
            }
            Message::Query => {}
            Message::Verdict { running, cause } => {
                w.u8(u8::from(*running));
                match cause {
                    None => w.u8(0),
                    Some(c) => {
                        w.u8(1);
                        w.cause(c);
                    }
                }
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
        let tag = r.u8()?;
        let kind = *MessageKind::ALL.get(tag as usize).ok_or(r.bad(format!("unknown message tag {tag}")))?;
        Ok(match kind {
            MessageKind::Config => Message::Config { devices: r.blobs()? },
            MessageKind::Ready => {
                let prepare_ms = r.f64()?;
                let estimate_ms = match r.u8()? {
                    0 => None,
                    1 => Some(r.f64()?),
                    t => return Err(r.bad(format!("option tag {t}"))),
                };
                Message::Ready { prepare_ms, estimate_ms }
            }
            MessageKind::Running => {
                let blackout_ms = r.f64()?;
                let n = r.len(4)?;
                let mut unverified = Vec::with_capacity(n);
                for _ in 0..n {
                    unverified.push(DeviceId(r.u32()?));
                }
                Message::Running { blackout_ms, unverified }
            }
            MessageKind::NotReady => Message::NotReady { cause: r.cause()? },
            MessageKind::Abort => Message::Abort { cause: r.cause()? },
            MessageKind::StartFailed => Message::StartFailed { cause: r.cause()? },
            MessageKind::WillNotRun => Message::WillNotRun { cause: r.cause()? },
            MessageKind::State => {
                let n = r.len(10)?;
                let mut bases = Vec::with_capacity(n);
                for _ in 0..n {
                    bases.push(VringBase { device: r.u32()?, ring: r.u32()?, base: r.u16()? });
                }
                let n = r.len(16)?;
                let mut inflight = Vec::with_capacity(n);
                for _ in 0..n {
                    inflight.push(InflightReq { device: r.u32()?, ring: r.u32()?, id: r.u64()? });
                }
                Message::State { bases, inflight, devices: r.blobs()? }
            }
            MessageKind::Query => Message::Query,
            MessageKind::Verdict => {
                let running = match r.u8()? {
                    0 => false,
                    1 => true,
                    t => return Err(r.bad(format!("boolean {t}"))),
                };
                let cause = match r.u8()? {
                    0 => None,
                    1 => Some(r.cause()?),
                    t => return Err(r.bad(format!("option tag {t}"))),
                };
                Message::Verdict { running, cause }
            }
        })
    }

    /// The message's bytes (without envelope or frame length).
    ///
    /// ```
    /// use switchover::roles::message::Message;
    /// let m = Message::Running { blackout_ms: 0.25, unverified: vec![] };
    /// assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64));
        self.write(&mut w);
        w.0
    }

    /// Decodes a message; every byte must belong to it.
    ///
    /// # Errors
    /// [`DecodeError`] naming what is wrong and where.
    ///
    /// ```
    /// use switchover::roles::message::Message;
    /// assert!(Message::decode(&[]).is_err());
    /// assert!(Message::decode(&[99]).unwrap_err().to_string().contains("unknown message tag 99"));
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader { b: bytes, at: 0 };
        let m = Message::read(&mut r)?;
        r.end()?;
        Ok(m)
    }
}

/// A message with what ties it to one switchover: the session (the migration's
/// id, the same on both sides), its sequence number in its direction (0, 1, …),
/// and the fingerprint of the VM's topology. A role refuses a message whose
/// session, sequence or fingerprint is not the one it expects.
///
/// ```
/// use switchover::roles::message::{Envelope, Message};
/// let e = Envelope { session: 42, seq: 0, fingerprint: 7, message: Message::Query };
/// assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The switchover's session id.
    pub session: u64,
    /// The message's sequence number in its direction.
    pub seq: u32,
    /// The fingerprint of the VM's topology ([`crate::topology::Topology::fingerprint`]).
    pub fingerprint: u64,
    /// The message.
    pub message: Message,
}

/// The first bytes of every envelope: a version of the format.
const MAGIC: [u8; 4] = *b"SWO2";

impl Envelope {
    /// The envelope's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(96));
        w.0.extend_from_slice(&MAGIC);
        w.u64(self.session);
        w.u32(self.seq);
        w.u64(self.fingerprint);
        self.message.write(&mut w);
        w.0
    }

    /// Decodes an envelope; every byte must belong to it.
    ///
    /// # Errors
    /// [`DecodeError`] naming what is wrong and where.
    ///
    /// ```
    /// use switchover::roles::message::Envelope;
    /// assert!(Envelope::decode(b"SWO1").unwrap_err().to_string().contains("not a switchover message"));
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.take(4).ok() != Some(&MAGIC[..]) {
            return Err(DecodeError { offset: 0, what: "not a switchover message (no SWO2 header)".into() });
        }
        let (session, seq, fingerprint) = (r.u64()?, r.u32()?, r.u64()?);
        let message = Message::read(&mut r)?;
        r.end()?;
        Ok(Envelope { session, seq, fingerprint, message })
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                self.u32(x);
            }
        }
    }
    fn blobs(&mut self, v: &[DeviceBlob]) {
        self.u32(v.len() as u32);
        for b in v {
            self.u32(b.device);
            self.u64(b.generation);
            self.u32(b.bytes.len() as u32);
            self.0.extend_from_slice(&b.bytes);
        }
    }
    fn kind(&mut self, k: &StepKind) {
        match StepKind::BUILTIN.iter().position(|b| b == k) {
            Some(i) => self.u8(i as u8),
            None => {
                self.u8(u8::MAX);
                self.str(k.name());
            }
        }
    }
    fn failure(&mut self, f: &StepFailure) {
        match f {
            StepFailure::Backend { message } => {
                self.u8(0);
                self.str(message);
            }
            StepFailure::Timeout { after } => {
                self.u8(1);
                self.u64(after.as_nanos().min(u128::from(u64::MAX)) as u64);
            }
            StepFailure::Disconnected => self.u8(2),
            StepFailure::Garbage { what } => {
                self.u8(3);
                self.str(what);
            }
            StepFailure::MissingState { what } => {
                self.u8(4);
                self.str(what);
            }
            StepFailure::Abandoned => self.u8(5),
            StepFailure::Panicked { message } => {
                self.u8(6);
                self.str(message);
            }
            StepFailure::Injected { what } => {
                self.u8(7);
                self.str(what);
            }
            StepFailure::Io { op, source } => {
                self.u8(8);
                self.str(op);
                self.io(source.get());
            }
            StepFailure::Other { message } => {
                self.u8(9);
                self.str(message);
            }
        }
    }
    fn io(&mut self, e: &io::Error) {
        self.u8(io_kind_tag(e.kind()));
        self.str(&e.to_string());
    }
    fn step_error(&mut self, e: &StepError) {
        self.u8(e.side as u8);
        self.u32(e.step.0);
        self.u32(e.device.0);
        self.str(&e.device_name);
        self.opt_u32(e.ring);
        self.kind(&e.kind);
        self.failure(&e.failure);
    }
    fn path_error(&mut self, e: &PathError) {
        match e {
            PathError::Timeout => self.u8(0),
            PathError::Closed => self.u8(1),
            PathError::Decode(d) => {
                self.u8(2);
                self.u64(d.offset as u64);
                self.str(&d.what);
            }
            PathError::Io(c) => {
                self.u8(3);
                self.io(c.get());
            }
            PathError::FrameTooLarge { len } => {
                self.u8(4);
                self.u64(*len as u64);
            }
        }
    }
    fn cause(&mut self, c: &SwitchoverError) {
        match c {
            SwitchoverError::Step(e) => {
                self.u8(0);
                self.step_error(e);
            }
            SwitchoverError::ReturnPath { side, op, source } => {
                self.u8(1);
                self.u8(*side as u8);
                self.op(*op);
                self.path_error(source);
            }
            SwitchoverError::Unexpected { side, waiting_for, got } => {
                self.u8(2);
                self.u8(*side as u8);
                self.u8(*waiting_for as u8);
                self.u8(*got as u8);
            }
            SwitchoverError::Refused { side, problem } => {
                self.u8(3);
                self.u8(*side as u8);
                match problem {
                    Refusal::Session { expected, got } => {
                        self.u8(0);
                        self.u64(*expected);
                        self.u64(*got);
                    }
                    Refusal::Sequence { expected, got } => {
                        self.u8(1);
                        self.u32(*expected);
                        self.u32(*got);
                    }
                    Refusal::Fingerprint { expected, got } => {
                        self.u8(2);
                        self.u64(*expected);
                        self.u64(*got);
                    }
                }
            }
            SwitchoverError::Hook { side, hook, source } => {
                self.u8(4);
                self.u8(*side as u8);
                self.u8(*hook as u8);
                self.str(&source.to_string());
            }
            SwitchoverError::Invariant { side, what } => {
                self.u8(5);
                self.u8(*side as u8);
                self.str(what);
            }
            SwitchoverError::AlreadyRan { side } => {
                self.u8(6);
                self.u8(*side as u8);
            }
        }
    }
    fn op(&mut self, op: PathOp) {
        match op {
            PathOp::Send(k) => {
                self.u8(0);
                self.u8(k as u8);
            }
            PathOp::Wait(k) => {
                self.u8(1);
                self.u8(k as u8);
            }
        }
    }
}

const IO_KINDS: [io::ErrorKind; 12] = [
    io::ErrorKind::Other,
    io::ErrorKind::NotFound,
    io::ErrorKind::PermissionDenied,
    io::ErrorKind::ConnectionRefused,
    io::ErrorKind::ConnectionReset,
    io::ErrorKind::BrokenPipe,
    io::ErrorKind::WouldBlock,
    io::ErrorKind::InvalidInput,
    io::ErrorKind::InvalidData,
    io::ErrorKind::TimedOut,
    io::ErrorKind::UnexpectedEof,
    io::ErrorKind::Interrupted,
];

fn io_kind_tag(k: io::ErrorKind) -> u8 {
    IO_KINDS.iter().position(|x| *x == k).unwrap_or(0) as u8
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn bad(&self, what: impl Into<String>) -> DecodeError {
        DecodeError { offset: self.at, what: what.into() }
    }
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let left = self.b.len() - self.at;
        if left < n {
            return Err(self.bad(format!("needs {n} more byte(s), has {left}")));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.u64()?))
    }
    /// A count of items of at least `min_size` bytes each: never more than the
    /// bytes left could hold, so a lying count cannot make a huge allocation.
    fn len(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        let left = self.b.len() - self.at;
        if n.saturating_mul(min_size) > left {
            return Err(self.bad(format!("{n} item(s) of {min_size} byte(s) do not fit in the {left} byte(s) left")));
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.len(1)?;
        let at = self.at;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError { offset: at, what: "a string that is not UTF-8".into() })
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.at != self.b.len() {
            return Err(self.bad(format!("{} trailing byte(s)", self.b.len() - self.at)));
        }
        Ok(())
    }
    fn blobs(&mut self) -> Result<Vec<DeviceBlob>, DecodeError> {
        let n = self.len(16)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let (device, generation) = (self.u32()?, self.u64()?);
            let len = self.len(1)?;
            v.push(DeviceBlob { device, generation, bytes: self.take(len)?.to_vec() });
        }
        Ok(v)
    }
    fn opt_u32(&mut self) -> Result<Option<u32>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u32()?)),
            t => Err(self.bad(format!("option tag {t}"))),
        }
    }
    fn side(&mut self) -> Result<Side, DecodeError> {
        match self.u8()? {
            0 => Ok(Side::Source),
            1 => Ok(Side::Destination),
            t => Err(self.bad(format!("unknown side {t}"))),
        }
    }
    fn message_kind(&mut self) -> Result<MessageKind, DecodeError> {
        let t = self.u8()?;
        MessageKind::ALL.get(t as usize).copied().ok_or(self.bad(format!("unknown message tag {t}")))
    }
    fn kind(&mut self) -> Result<StepKind, DecodeError> {
        let t = self.u8()?;
        if t == u8::MAX {
            let at = self.at;
            let name = self.str()?;
            // A built-in kind has its own tag: under the custom tag it is not a
            // well-formed message (and would not encode back to these bytes).
            if StepKind::parse(&name).is_some() {
                return Err(DecodeError { offset: at, what: format!("built-in step kind '{name}' under the custom tag") });
            }
            return Ok(StepKind::Custom(Arc::from(name.as_str())));
        }
        StepKind::BUILTIN.get(t as usize).cloned().ok_or(self.bad(format!("unknown step kind {t}")))
    }
    fn io(&mut self) -> Result<IoCause, DecodeError> {
        let t = self.u8()?;
        let kind = *IO_KINDS.get(t as usize).ok_or(self.bad(format!("unknown I/O error kind {t}")))?;
        Ok(IoCause::from(io::Error::new(kind, self.str()?)))
    }
    fn failure(&mut self) -> Result<StepFailure, DecodeError> {
        Ok(match self.u8()? {
            0 => StepFailure::Backend { message: self.str()? },
            1 => StepFailure::Timeout { after: Duration::from_nanos(self.u64()?) },
            2 => StepFailure::Disconnected,
            3 => StepFailure::Garbage { what: self.str()? },
            4 => StepFailure::MissingState { what: self.str()? },
            5 => StepFailure::Abandoned,
            6 => StepFailure::Panicked { message: self.str()? },
            7 => StepFailure::Injected { what: self.str()? },
            8 => StepFailure::Io { op: self.str()?, source: self.io()? },
            9 => StepFailure::Other { message: self.str()? },
            t => return Err(self.bad(format!("unknown step failure {t}"))),
        })
    }
    fn step_error(&mut self) -> Result<StepError, DecodeError> {
        Ok(StepError {
            side: self.side()?,
            step: StepId(self.u32()?),
            device: DeviceId(self.u32()?),
            device_name: Arc::from(self.str()?.as_str()),
            ring: self.opt_u32()?,
            kind: self.kind()?,
            failure: self.failure()?,
        })
    }
    fn path_error(&mut self) -> Result<PathError, DecodeError> {
        Ok(match self.u8()? {
            0 => PathError::Timeout,
            1 => PathError::Closed,
            2 => PathError::Decode(DecodeError { offset: self.u64()? as usize, what: self.str()? }),
            3 => PathError::Io(self.io()?),
            4 => PathError::FrameTooLarge { len: self.u64()? as usize },
            t => return Err(self.bad(format!("unknown path error {t}"))),
        })
    }
    fn op(&mut self) -> Result<PathOp, DecodeError> {
        match self.u8()? {
            0 => Ok(PathOp::Send(self.message_kind()?)),
            1 => Ok(PathOp::Wait(self.message_kind()?)),
            t => Err(self.bad(format!("unknown path operation {t}"))),
        }
    }
    fn cause(&mut self) -> Result<SwitchoverError, DecodeError> {
        Ok(match self.u8()? {
            0 => SwitchoverError::Step(self.step_error()?),
            1 => SwitchoverError::ReturnPath { side: self.side()?, op: self.op()?, source: self.path_error()? },
            2 => SwitchoverError::Unexpected { side: self.side()?, waiting_for: self.message_kind()?, got: self.message_kind()? },
            3 => {
                let side = self.side()?;
                let problem = match self.u8()? {
                    0 => Refusal::Session { expected: self.u64()?, got: self.u64()? },
                    1 => Refusal::Sequence { expected: self.u32()?, got: self.u32()? },
                    2 => Refusal::Fingerprint { expected: self.u64()?, got: self.u64()? },
                    t => return Err(self.bad(format!("unknown refusal {t}"))),
                };
                SwitchoverError::Refused { side, problem }
            }
            4 => {
                let side = self.side()?;
                let t = self.u8()?;
                let hook = HookKind::from_index(t).ok_or(self.bad(format!("unknown hook {t}")))?;
                SwitchoverError::Hook { side, hook, source: HookError::msg(self.str()?) }
            }
            5 => SwitchoverError::Invariant { side: self.side()?, what: self.str()? },
            6 => SwitchoverError::AlreadyRan { side: self.side()? },
            t => return Err(self.bad(format!("unknown cause {t}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes() -> Vec<SwitchoverError> {
        let step = StepError {
            side: Side::Destination,
            step: StepId(7),
            device: DeviceId(3),
            device_name: "blk1".into(),
            ring: Some(2),
            kind: StepKind::Custom("attach".into()),
            failure: StepFailure::io("writing", io::Error::from(io::ErrorKind::BrokenPipe)),
        };
        let mut v = vec![SwitchoverError::Step(step.clone())];
        for f in [
            StepFailure::Backend { message: "EIO".into() },
            StepFailure::Timeout { after: Duration::from_millis(250) },
            StepFailure::Disconnected,
            StepFailure::Garbage { what: "x".into() },
            StepFailure::MissingState { what: "y".into() },
            StepFailure::Abandoned,
            StepFailure::Panicked { message: "boom".into() },
            StepFailure::Injected { what: "z".into() },
            StepFailure::Other { message: "w".into() },
        ] {
            v.push(SwitchoverError::Step(StepError { failure: f, kind: StepKind::GetVringBase, ring: None, ..step.clone() }));
        }
        for e in [
            PathError::Timeout,
            PathError::Closed,
            PathError::Decode(DecodeError { offset: 3, what: "bad".into() }),
            PathError::Io(IoCause::from(io::Error::other("gone"))),
            PathError::FrameTooLarge { len: 1 << 30 },
        ] {
            v.push(SwitchoverError::ReturnPath { side: Side::Source, op: PathOp::Wait(MessageKind::Running), source: e });
        }
        v.push(SwitchoverError::Unexpected { side: Side::Source, waiting_for: MessageKind::Ready, got: MessageKind::State });
        v.push(SwitchoverError::Refused { side: Side::Destination, problem: Refusal::Session { expected: 1, got: 2 } });
        v.push(SwitchoverError::Refused { side: Side::Destination, problem: Refusal::Sequence { expected: 1, got: 5 } });
        v.push(SwitchoverError::Refused { side: Side::Source, problem: Refusal::Fingerprint { expected: 3, got: 4 } });
        v.push(SwitchoverError::Hook { side: Side::Source, hook: HookKind::SaveState, source: HookError::msg("no state") });
        v.push(SwitchoverError::Invariant { side: Side::Destination, what: "ring 3".into() });
        v.push(SwitchoverError::AlreadyRan { side: Side::Source });
        v
    }

    #[test]
    fn every_message_and_cause_round_trips() {
        let mut msgs = vec![
            Message::Ready { prepare_ms: 12.5, estimate_ms: None },
            Message::Ready { prepare_ms: 12.5, estimate_ms: Some(3.25) },
            Message::Running { blackout_ms: 0.125, unverified: vec![] },
            Message::Running { blackout_ms: 0.125, unverified: vec![DeviceId(3), DeviceId(9)] },
            Message::State {
                bases: vec![VringBase { device: 1, ring: 2, base: 65535 }],
                inflight: vec![InflightReq { device: 3, ring: 0, id: u64::MAX }],
                devices: vec![
                    DeviceBlob { device: 1, generation: 7, bytes: vec![1, 2, 3] },
                    DeviceBlob { device: 2, generation: 0, bytes: vec![] },
                ],
            },
            Message::Config { devices: vec![DeviceBlob { device: 0, generation: u64::MAX, bytes: b"config".to_vec() }] },
            Message::Query,
            Message::Verdict { running: true, cause: None },
        ];
        for c in causes() {
            msgs.push(Message::NotReady { cause: c.clone() });
            msgs.push(Message::Abort { cause: c.clone() });
            msgs.push(Message::WillNotRun { cause: c.clone() });
            msgs.push(Message::Verdict { running: false, cause: Some(c.clone()) });
            msgs.push(Message::StartFailed { cause: c });
        }
        for m in msgs {
            let e = Envelope { session: 9, seq: 3, fingerprint: 0xabcd, message: m.clone() };
            assert_eq!(Envelope::decode(&e.encode()).as_ref(), Ok(&e));
            let b = m.encode();
            assert_eq!(Message::decode(&b).as_ref(), Ok(&m));
            // Every strict prefix is refused, never accepted or a panic.
            for n in 0..b.len() {
                assert!(Message::decode(&b[..n]).is_err(), "{m:?} cut at {n}");
            }
        }
    }

    #[test]
    fn a_built_in_kind_under_the_custom_tag_is_refused() {
        // A custom kind named like a built-in one encodes under the custom tag;
        // decoding it as the built-in kind would not give the same bytes back.
        let e = StepError {
            side: Side::Source,
            step: StepId(0),
            device: DeviceId(0),
            device_name: "net0".into(),
            ring: None,
            kind: StepKind::Custom("get_vring_base".into()),
            failure: StepFailure::Disconnected,
        };
        let b = Message::Abort { cause: SwitchoverError::Step(e) }.encode();
        assert!(Message::decode(&b).unwrap_err().what.contains("built-in step kind"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4000, ..Default::default() })]
        /// Whatever decodes, encodes back to the same bytes (and nothing panics).
        #[test]
        fn decoding_is_the_inverse_of_encoding(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), tag in 0u8..10) {
            let mut b = vec![tag];
            b.extend_from_slice(&bytes);
            if let Ok(m) = Message::decode(&b) {
                proptest::prop_assert_eq!(m.encode(), b);
            }
        }
    }

    #[test]
    fn a_lying_count_is_refused_before_allocating() {
        let mut b = vec![MessageKind::State as u8];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = Message::decode(&b).unwrap_err();
        assert!(e.what.contains("do not fit"), "{e}");
    }
}
