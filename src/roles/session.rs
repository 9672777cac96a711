//! One switchover's conversation: every message sent in an [`Envelope`] carrying
//! the session id, its sequence number and the topology's fingerprint; every
//! message received checked against them.

use std::time::Instant;

use super::error::{MessageKind, PathOp, Refusal, SwitchoverError};
use super::message::{Envelope, Message};
use super::path::ReturnPath;
use crate::ids::Side;
use crate::topology::Topology;

/// What ties the two roles' messages to one switchover: the session id both VMMs
/// agree on (the migration's id), the fingerprint of the VM's topology, and the
/// sequence numbers of each direction.
///
/// ```
/// use switchover::roles::Session;
/// use switchover::topology::Topology;
/// let t = Topology::preset("small").unwrap();
/// let s = Session::new(7, &t);
/// assert_eq!((s.id(), s.fingerprint()), (7, t.fingerprint()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    id: u64,
    fingerprint: u64,
    sent: u32,
    received: u32,
}

impl Session {
    /// Session `id` of the VM with `topology`.
    pub fn new(id: u64, topology: &Topology) -> Session {
        Session { id, fingerprint: topology.fingerprint(), sent: 0, received: 0 }
    }
    /// The session id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The topology's fingerprint.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Sends `m` as the next message of this session.
    pub(super) fn send(&mut self, path: &mut dyn ReturnPath, side: Side, m: Message) -> Result<(), SwitchoverError> {
        let kind = m.kind();
        let e = Envelope { session: self.id, seq: self.sent, fingerprint: self.fingerprint, message: m };
        path.send(&e).map_err(|source| SwitchoverError::ReturnPath { side, op: PathOp::Send(kind), source })?;
        self.sent += 1;
        Ok(())
    }

    /// Receives the next message of this session, waiting at most until
    /// `deadline`; a message of another session, out of sequence or about another
    /// topology is refused (an error naming why).
    pub(super) fn recv(
        &mut self,
        path: &mut dyn ReturnPath,
        side: Side,
        deadline: Instant,
        waiting_for: MessageKind,
    ) -> Result<Message, SwitchoverError> {
        self.recv_checked(path, side, deadline, waiting_for, false)
    }

    /// The same, across a reconnection after an in-doubt outcome: messages the
    /// broken path lost may leave a gap in the sequence (never a step back).
    pub(super) fn recv_after_gap(
        &mut self,
        path: &mut dyn ReturnPath,
        side: Side,
        deadline: Instant,
        waiting_for: MessageKind,
    ) -> Result<Message, SwitchoverError> {
        self.recv_checked(path, side, deadline, waiting_for, true)
    }

    fn recv_checked(
        &mut self,
        path: &mut dyn ReturnPath,
        side: Side,
        deadline: Instant,
        waiting_for: MessageKind,
        gap: bool,
    ) -> Result<Message, SwitchoverError> {
        let e = path.recv(deadline).map_err(|source| SwitchoverError::ReturnPath { side, op: PathOp::Wait(waiting_for), source })?;
        let refuse = |problem| Err(SwitchoverError::Refused { side, problem });
        if e.session != self.id {
            return refuse(Refusal::Session { expected: self.id, got: e.session });
        }
        if e.fingerprint != self.fingerprint {
            return refuse(Refusal::Fingerprint { expected: self.fingerprint, got: e.fingerprint });
        }
        if e.seq < self.received || (e.seq > self.received && !gap) {
            return refuse(Refusal::Sequence { expected: self.received, got: e.seq });
        }
        self.received = e.seq + 1;
        Ok(e.message)
    }
}
