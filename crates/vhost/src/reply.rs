//! The trust model's reply rules: what a backend's reply must be for the frontend
//! to believe it (docs/trust-model.md).
//!
//! 1. no file descriptors (the reader closes any that come, at once) — except the
//!    reply to `GET_INFLIGHT_FD`, which carries exactly one (the inflight region);
//! 2. a body of exactly the size the message defines (checked from the header,
//!    before the body is read): 8 bytes; 24 for `GET_INFLIGHT_FD`; for
//!    `SET_LOG_BASE` 8 or 16 (backends answer it with a `u64` or with the log
//!    region; the answer only acknowledges);
//! 3. a request must be pending;
//! 4. the reply's request type must be the pending request's;
//! 5. the REPLY flag and protocol version 1 set;
//! 6. `GET_VRING_BASE` must name the ring asked about;
//! 7. its base must fit 16 bits;
//! 8. its base must be possible in guest memory ([`check_base`]).
//!
//! Rules 1–7 fail every request queued on that channel and shut its socket (the
//! stream can no longer be trusted to be in step); rule 8 fails that one step
//! before the base can be recorded or forwarded.
//!
//! # Examples
//!
//! ```
//! use switchover_vhost::reply::{parse_replies, Reply};
//! use vhost::vhost_user::message::FrontendReq;
//! let get_base = u32::from(FrontendReq::GET_VRING_BASE);
//! // One reply frame: request, flags (REPLY | version 1), body size, then ring 0, base 5.
//! let frame: Vec<u8> = [get_base, 0x5, 8, 0, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
//! assert_eq!(parse_replies(&frame, &[(get_base, Some(0))]), (vec![Reply::State(0, 5)], None));
//! ```

use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag};

/// A reply's body.
///
/// ```
/// use switchover_vhost::reply::{validate_reply, Reply};
/// use vhost::vhost_user::message::FrontendReq;
/// let set_features = u32::from(FrontendReq::SET_FEATURES);
/// // A REPLY_ACK with status 0 (success).
/// assert_eq!(validate_reply(set_features, None, set_features, 0x5, &[0; 8]), Ok(Reply::U64(0)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The `u64` of a `REPLY_ACK` (0 = success) or of a `GET_*` returning a u64.
    U64(u64),
    /// A vring state (`GET_VRING_BASE`): index and number.
    State(u32, u32),
}

/// The body size every reply the frontend asks for has: a `u64` (`REPLY_ACK`
/// status, `GET_FEATURES`) or a `VhostUserVringState` (`GET_VRING_BASE`).
pub const REPLY_BODY: u32 = 8;

/// Header flags: bits 0-1 are the protocol version (1), bit 2 is REPLY.
const VERSION_MASK: u32 = 0x3;

/// A reply that breaks a rule of the trust model.
///
/// ```
/// use switchover_vhost::reply::{check_base, ReplyError};
/// let e = check_base(261, 4, 10, 256).unwrap_err();
/// assert!(matches!(e, ReplyError::BaseBeyondRing { .. }));
/// assert_eq!(e.to_string(), "vring base 261 is 257 past the used index 4, more than the ring size 256 (impossible)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// Rule 1.
    #[error("{} came with {count} file descriptor(s), none expected (closed)", reply_name(*.code))]
    FileDescriptors {
        /// The reply's request code.
        code: u32,
        /// How many.
        count: usize,
    },
    /// Rule 2.
    #[error("{} has a {size}-byte body, the message defines {REPLY_BODY}", reply_name(*.code))]
    BodySize {
        /// The reply's request code.
        code: u32,
        /// The size it announced.
        size: u32,
    },
    /// Rule 3.
    #[error("unsolicited {} (no request pending)", reply_name(*.code))]
    Unsolicited {
        /// The reply's request code.
        code: u32,
    },
    /// Rule 4.
    #[error("expected the reply to {}, got {} (out of order, duplicated or wrong type)", request_name(*.expected), reply_name(*.got))]
    WrongRequest {
        /// The pending request's code.
        expected: u32,
        /// The reply's.
        got: u32,
    },
    /// Rule 5.
    #[error("{} with flags {flags:#x} (REPLY and version 1 expected)", reply_name(*.code))]
    Flags {
        /// The reply's request code.
        code: u32,
        /// Its flags.
        flags: u32,
    },
    /// Rule 6.
    #[error("GET_VRING_BASE for ring {asked} answered for ring {answered} (out of order or duplicated)")]
    WrongRing {
        /// The ring asked about.
        asked: u32,
        /// The ring the reply names.
        answered: u32,
    },
    /// Rule 7.
    #[error("GET_VRING_BASE base {base} is not a 16-bit ring index")]
    BaseTooWide {
        /// The base.
        base: u32,
    },
    /// Rule 8: further ahead of the used index than a ring can hold.
    #[error("vring base {base} is {ahead} past the used index {used}, more than the ring size {size} (impossible)")]
    BaseBeyondRing {
        /// The base.
        base: u16,
        /// How far ahead of `used`.
        ahead: u16,
        /// The used ring's index in guest memory.
        used: u16,
        /// The ring's size.
        size: u16,
    },
    /// Rule 8: ahead of what the guest published.
    #[error("vring base {base} is past the guest's avail index {avail} (used {used}): requests never published (impossible)")]
    BaseBeyondAvail {
        /// The base.
        base: u16,
        /// The avail ring's index in guest memory.
        avail: u16,
        /// The used ring's index.
        used: u16,
    },
    /// The stream ended inside a header.
    #[error("partial header")]
    PartialHeader,
    /// The stream ended inside a body.
    #[error("partial body")]
    PartialBody,
}

/// The name of a request code, for messages.
///
/// ```
/// use switchover_vhost::reply::request_name;
/// use vhost::vhost_user::message::FrontendReq;
/// assert_eq!(request_name(u32::from(FrontendReq::GET_VRING_BASE)), "GET_VRING_BASE");
/// assert_eq!(request_name(9999), "request 9999");
/// ```
pub fn request_name(code: u32) -> String {
    match FrontendReq::try_from(code) {
        Ok(r) => format!("{r:?}"),
        Err(_) => format!("request {code}"),
    }
}

fn reply_name(code: u32) -> String {
    format!("reply {}", request_name(code))
}

/// Checks a well-framed reply against the request it answers (rules 4–7): same
/// request, REPLY flag and protocol version 1, and for `GET_VRING_BASE` the ring
/// asked about and a 16-bit index.
///
/// # Errors
/// The rule broken.
///
/// ```
/// use switchover_vhost::reply::{validate_reply, Reply, ReplyError};
/// use vhost::vhost_user::message::FrontendReq;
/// let get_base = u32::from(FrontendReq::GET_VRING_BASE);
/// let body: [u8; 8] = [2u32.to_le_bytes(), 9u32.to_le_bytes()].concat().try_into().unwrap();
/// assert_eq!(validate_reply(get_base, Some(2), get_base, 0x5, &body), Ok(Reply::State(2, 9)));
/// let e = validate_reply(get_base, Some(1), get_base, 0x5, &body).unwrap_err();
/// assert_eq!(e, ReplyError::WrongRing { asked: 1, answered: 2 });
/// assert!(validate_reply(get_base, Some(2), get_base, 0x1, &body).is_err()); // REPLY flag missing
/// let set_features = u32::from(FrontendReq::SET_FEATURES);
/// assert!(validate_reply(set_features, None, get_base, 0x5, &body).is_err()); // wrong request
/// ```
pub fn validate_reply(p_code: u32, p_ring: Option<u32>, code: u32, flags: u32, body: &[u8; 8]) -> Result<Reply, ReplyError> {
    if code != p_code {
        return Err(ReplyError::WrongRequest { expected: p_code, got: code });
    }
    if flags & VhostUserHeaderFlag::REPLY.bits() == 0 || flags & VERSION_MASK != 1 {
        return Err(ReplyError::Flags { code, flags });
    }
    if code == u32::from(FrontendReq::GET_VRING_BASE) {
        let index = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
        let num = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
        if let Some(r) = p_ring {
            if index != r {
                return Err(ReplyError::WrongRing { asked: r, answered: index });
            }
        }
        if num > u32::from(u16::MAX) {
            return Err(ReplyError::BaseTooWide { base: num });
        }
        return Ok(Reply::State(index, num));
    }
    Ok(Reply::U64(u64::from_le_bytes(*body)))
}

/// Parses a byte stream of replies against `expected` requests (code, ring) the
/// way the reader does, without a socket: for tests that throw arbitrary bytes at
/// it. Returns the replies accepted and, if the stream was given up, why.
///
/// ```
/// use switchover_vhost::reply::{parse_replies, Reply, ReplyError};
/// use vhost::vhost_user::message::FrontendReq;
/// let enable = u32::from(FrontendReq::SET_VRING_ENABLE);
/// let ack: Vec<u8> = [enable, 0x5, 8, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let twice = [ack.clone(), ack.clone()].concat();
/// let (ok, err) = parse_replies(&twice, &[(enable, None)]);
/// assert_eq!(ok, vec![Reply::U64(0)]);
/// assert!(matches!(err, Some(ReplyError::Unsolicited { .. }))); // a duplicated reply is refused
/// assert_eq!(parse_replies(&ack[..7], &[(enable, None)]).1, Some(ReplyError::PartialHeader));
/// ```
pub fn parse_replies(bytes: &[u8], expected: &[(u32, Option<u32>)]) -> (Vec<Reply>, Option<ReplyError>) {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut pending = expected.iter();
    while !rest.is_empty() {
        if rest.len() < 12 {
            return (out, Some(ReplyError::PartialHeader));
        }
        let (h, tail) = rest.split_at(12);
        let code = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let flags = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let size = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        let log_base = code == u32::from(FrontendReq::SET_LOG_BASE);
        if size != REPLY_BODY && !(log_base && size == 16) {
            return (out, Some(ReplyError::BodySize { code, size }));
        }
        if tail.len() < size as usize {
            return (out, Some(ReplyError::PartialBody));
        }
        let (b, tail) = tail.split_at(size as usize);
        // SET_LOG_BASE's answer is no status (see the reader).
        let body: [u8; 8] = if log_base { [0; 8] } else { b.try_into().expect("8 bytes") };
        let Some(&(pc, pr)) = pending.next() else {
            return (out, Some(ReplyError::Unsolicited { code }));
        };
        match validate_reply(pc, pr, code, flags, &body) {
            Ok(r) => out.push(r),
            Err(e) => return (out, Some(e)),
        }
        rest = tail;
    }
    (out, None)
}

/// Rule 8: whether a `GET_VRING_BASE` base is possible on a ring of `size`
/// descriptors whose guest memory shows `used` (the used ring's index) and `avail`
/// (the avail ring's index).
///
/// A base is the backend's next avail index, a free-running `u16`. It cannot be
/// behind what the backend already completed (`used`), nor ahead of what the guest
/// published (`avail`), nor more than a ring's worth of descriptors ahead of
/// `used` (at most `size` requests can be outstanding). All three in wrapping
/// arithmetic: `base - used <= min(avail - used, size)`.
///
/// # Errors
/// What is impossible about it.
///
/// ```
/// use switchover_vhost::reply::check_base;
/// assert_eq!(check_base(7, 5, 9, 256), Ok(7)); // two requests in flight
/// assert_eq!(check_base(5, 5, 5, 256), Ok(5)); // nothing in flight
/// assert_eq!(check_base(1, 65534, 2, 256), Ok(1)); // across the 16-bit wrap
/// assert!(check_base(10, 5, 9, 256).is_err()); // past what the guest published
/// ```
pub fn check_base(base: u16, used: u16, avail: u16, size: u16) -> Result<u16, ReplyError> {
    let ahead = base.wrapping_sub(used);
    let published = avail.wrapping_sub(used);
    if ahead > size {
        return Err(ReplyError::BaseBeyondRing { base, ahead, used, size });
    }
    if ahead > published {
        return Err(ReplyError::BaseBeyondAvail { base, avail, used });
    }
    Ok(base)
}
