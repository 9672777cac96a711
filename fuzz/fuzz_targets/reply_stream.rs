//! Arbitrary bytes as a backend's reply stream, against arbitrary pending requests:
//! every reply is validated or the stream is refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchover_vhost::reply::parse_replies;

fuzz_target!(|data: &[u8]| {
    // The first byte says how many requests are pending; each takes 5 bytes
    // (request code, ring or none); the rest is what the backend sent.
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 8);
    if rest.len() < n * 5 {
        return;
    }
    let (reqs, stream) = rest.split_at(n * 5);
    let expected: Vec<(u32, Option<u32>)> = reqs
        .chunks(5)
        .map(|c| {
            let code = u32::from(c[0] % 48);
            let ring = (c[1] & 1 == 1).then(|| u32::from_le_bytes([c[1] >> 1, c[2], c[3], c[4]]) % 1024);
            (code, ring)
        })
        .collect();
    let (replies, err) = parse_replies(stream, &expected);
    assert!(replies.len() <= expected.len());
    if err.is_none() {
        // Accepted: the stream is exactly that many well-formed 20-byte replies.
        assert_eq!(stream.len(), replies.len() * 20);
    }
});
