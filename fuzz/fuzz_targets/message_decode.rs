//! Arbitrary bytes as a frame from the other role: `Message::decode` refuses it
//! with an error or accepts it, never a panic or an unbounded allocation, and what
//! it accepts encodes back to exactly the same bytes (the encoding has one form per
//! message, so nothing a peer sends is read two ways).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchover::roles::message::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(m.encode(), data, "{m:?}");
    }
});
