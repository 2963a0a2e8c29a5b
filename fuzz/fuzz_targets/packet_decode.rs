//! Any bytes, under every link type the decoder knows: decode must return, never panic,
//! and a segment's payload must lie inside the frame.
#![no_main]

use interceptor_sniff::wire::packet::{decode, LinkType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for link in [LinkType::Ethernet, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::RawIp, LinkType::Null] {
        if let Ok(seg) = decode(link, data) {
            assert!(seg.payload.len() <= data.len());
        }
    }
});
