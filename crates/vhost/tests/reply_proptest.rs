//! Property tests: arbitrary bytes at the vhost-user reply handling. It may not
//! panic; it gives an error or a valid reply.
//!
//! Beside the cargo-fuzz target `fuzz/fuzz_targets/reply_stream.rs`;
//! `PROPTEST_CASES=200000 cargo test --release -p switchover-vhost --test reply_proptest`
//! runs a longer search (the variable overrides the case counts below).

use std::io::Write;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use switchover::error::StepFailure;
use switchover_vhost::channel::Channel;
use switchover_vhost::reply::{check_base, parse_replies, validate_reply, Reply};
use vhost::vhost_user::message::FrontendReq;

const QSIZE: u16 = 256;

const GET_VRING_BASE: u32 = 11;
const SET_VRING_ENABLE: u32 = 18;

/// A well-formed reply frame, to mix with garbage.
fn frame(code: u32, flags: u32, a: u32, b: u32) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [code, flags, 8, a, b] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        (
            prop_oneof![Just(GET_VRING_BASE), Just(SET_VRING_ENABLE), any::<u32>()],
            prop_oneof![Just(5u32), any::<u32>()],
            0u32..4,
            any::<u32>()
        )
            .prop_map(|(c, f, a, b)| frame(c, f, a, b)),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

fn expected() -> impl Strategy<Value = Vec<(u32, Option<u32>)>> {
    proptest::collection::vec(prop_oneof![(0u32..4).prop_map(|r| (GET_VRING_BASE, Some(r))), Just((SET_VRING_ENABLE, None))], 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The reply parser never panics; what it accepts answers the requests in
    /// order, names the ring asked about and has a 16-bit base.
    #[test]
    fn reply_parser_accepts_only_valid_replies(bytes in stream(), exp in expected()) {
        let (ok, err) = parse_replies(&bytes, &exp);
        prop_assert!(ok.len() <= exp.len());
        for (r, (code, ring)) in ok.iter().zip(&exp) {
            match r {
                Reply::State(i, num) => {
                    prop_assert_eq!(*code, GET_VRING_BASE);
                    prop_assert_eq!(Some(*i), *ring);
                    prop_assert!(*num <= u32::from(u16::MAX));
                }
                Reply::U64(_) => prop_assert_ne!(*code, GET_VRING_BASE),
            }
        }
        if err.is_none() {
            prop_assert_eq!(bytes.len(), ok.len() * 20);
        }
    }

    /// A single reply is accepted only when it answers the request.
    #[test]
    fn validate_reply_matches_the_request(pc in prop_oneof![Just(GET_VRING_BASE), Just(SET_VRING_ENABLE)], pr in 0u32..4,
                                          code in prop_oneof![Just(GET_VRING_BASE), Just(SET_VRING_ENABLE), any::<u32>()],
                                          flags in any::<u32>(), body in any::<[u8; 8]>()) {
        let ring = (pc == GET_VRING_BASE).then_some(pr);
        if validate_reply(pc, ring, code, flags, &body).is_ok() {
            prop_assert_eq!(code, pc);
            prop_assert_eq!(flags & 0x7, 0x5);
        }
    }

    /// A base is accepted only between the used and the avail index (wrapping),
    /// and never more than a ring ahead of the used index.
    #[test]
    fn check_base_accepts_only_possible_bases(base in any::<u16>(), used in any::<u16>(), pending in 0u16..600) {
        let avail = used.wrapping_add(pending);
        match check_base(base, used, avail, QSIZE) {
            Ok(b) => {
                prop_assert_eq!(b, base);
                let ahead = base.wrapping_sub(used);
                prop_assert!(ahead <= pending && ahead <= QSIZE);
            }
            Err(e) => prop_assert!(e.to_string().contains("impossible"), "{}", e),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The same bytes through the real reader thread on a socket: every pending
    /// request is completed (reply or failure) promptly, so the reader neither
    /// panicked nor lost a completion.
    #[test]
    fn channel_reader_completes_every_request_on_arbitrary_bytes(bytes in stream(), n in 1usize..4) {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let ch = Channel::start("prop0", a).expect("channel");
        let (tx, rx) = crossbeam_channel::unbounded();
        for r in 0..n as u32 {
            let tx = tx.clone();
            let mut body = [0u8; 8];
            body[..4].copy_from_slice(&r.to_le_bytes());
            ch.send(FrontendReq::GET_VRING_BASE, &body, &[], Duration::from_secs(5), Box::new(move |res| { let _ = tx.send(res); }));
        }
        let _ = b.write_all(&bytes);
        drop(b); // then the backend goes away
        let t = Instant::now();
        let mut got = Vec::new();
        while got.len() < n && t.elapsed() < Duration::from_secs(3) {
            if let Ok(r) = rx.recv_timeout(Duration::from_millis(100)) {
                got.push(r);
            }
        }
        prop_assert_eq!(got.len(), n, "completions missing");
        for r in &got {
            match r {
                Ok(Reply::State(_, num)) => prop_assert!(*num <= u32::from(u16::MAX)),
                Ok(other) => prop_assert!(false, "{:?}", other),
                Err(StepFailure::Garbage { .. } | StepFailure::Disconnected | StepFailure::Backend { .. }) => {}
                Err(e) => prop_assert!(false, "{:?}", e),
            }
        }
        ch.close();
    }
}
