//! The one reply that carries a file descriptor (`GET_INFLIGHT_FD`): exactly one
//! descriptor and a 24-byte body, or the stream is given up; every other reply
//! still may carry none.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use switchover::error::StepFailure;
use switchover_vhost::channel::Channel;
use vhost::vhost_user::message::FrontendReq;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

fn frame(code: FrontendReq, body: &[u8]) -> Vec<u8> {
    let mut m: Vec<u8> = [u32::from(code), 0x5, body.len() as u32].iter().flat_map(|v| v.to_le_bytes()).collect();
    m.extend_from_slice(body);
    m
}

/// Sends a GET_INFLIGHT_FD (or `req`) on a fresh channel and answers it with
/// `reply` and `nfds` descriptors; returns what the waiter got.
fn answer(req: FrontendReq, with_fd: bool, reply: Vec<u8>, nfds: usize) -> (Result<(), StepFailure>, bool) {
    let (front, mut backend) = UnixStream::pair().unwrap();
    let ch = Channel::start("blk0", front).unwrap();
    let b = std::thread::spawn(move || {
        let mut h = [0u8; 12];
        backend.read_exact(&mut h).unwrap();
        let mut body = vec![0u8; u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize];
        backend.read_exact(&mut body).unwrap();
        let files: Vec<std::fs::File> = (0..nfds).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let raw: Vec<i32> = files.iter().map(AsRawFd::as_raw_fd).collect();
        backend.send_with_fds(&[&reply[..]], &raw).unwrap();
        backend
    });
    let d = Duration::from_secs(5);
    let r = if with_fd {
        ch.request_with_fd(req, &[0u8; 24], &[], d, 24).wait().map(|_| ())
    } else {
        ch.request(req, &[0u8; 8], &[], d).wait().map(|_| ())
    };
    let _backend = b.join().unwrap();
    let t = std::time::Instant::now();
    while !ch.is_closed() && t.elapsed() < Duration::from_millis(200) {
        std::thread::sleep(Duration::from_millis(1));
    }
    (r, ch.is_closed())
}

#[test]
fn inflight_reply_with_its_descriptor_is_taken() {
    let (r, closed) = answer(FrontendReq::GET_INFLIGHT_FD, true, frame(FrontendReq::GET_INFLIGHT_FD, &[0u8; 24]), 1);
    assert_eq!((r, closed), (Ok(()), false));
}

#[test]
fn inflight_reply_without_or_with_two_descriptors_is_garbage() {
    for n in [0, 2] {
        let (r, closed) = answer(FrontendReq::GET_INFLIGHT_FD, true, frame(FrontendReq::GET_INFLIGHT_FD, &[0u8; 24]), n);
        assert!(matches!(&r, Err(StepFailure::Garbage { what }) if what.contains("file descriptor")), "{n} fds: {r:?}");
        assert!(closed, "the stream is given up");
    }
}

#[test]
fn inflight_reply_of_another_size_is_garbage() {
    let (r, closed) = answer(FrontendReq::GET_INFLIGHT_FD, true, frame(FrontendReq::GET_INFLIGHT_FD, &[0u8; 8]), 1);
    assert!(matches!(&r, Err(StepFailure::Garbage { what }) if what.contains("8-byte body")), "{r:?}");
    assert!(closed);
}

#[test]
fn any_other_reply_with_a_descriptor_is_still_garbage() {
    let (r, closed) = answer(FrontendReq::SET_VRING_ENABLE, false, frame(FrontendReq::SET_VRING_ENABLE, &[0u8; 8]), 1);
    assert!(matches!(&r, Err(StepFailure::Garbage { what }) if what.contains("file descriptor")), "{r:?}");
    assert!(closed);
}
