//! Arbitrary bytes as a message head: whatever the bitmask fast path accepts, httparse
//! must parse into the same start line and fields, and neither may panic.
#![no_main]

use interceptor_sniff::http::head::agrees_with_httparse;
use interceptor_sniff::http::head::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for role in [Role::Request, Role::Response] {
        if let Err(e) = agrees_with_httparse(data, role) {
            panic!("{role:?} {:?}\n{e}", String::from_utf8_lossy(data));
        }
    }
});
