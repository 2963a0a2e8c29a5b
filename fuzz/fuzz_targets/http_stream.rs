//! Arbitrary bytes as either side of an HTTP/1.1 connection, cut at an arbitrary point
//! and with an optional gap: no panic, parser memory bounded by the head limit.
#![no_main]

use std::collections::VecDeque;
use std::time::SystemTime;

use interceptor_sniff::http::head::Role;
use interceptor_sniff::http::stream::{Asked, Limits, Parser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, body)) = data.split_first() else { return };
    let role = if ctl & 1 == 0 { Role::Request } else { Role::Response };
    let limits = Limits { max_head: 4096, max_body: 64, ..Limits::default() };
    let mut p = Parser::new(role, limits);
    let pending: VecDeque<Asked> = [Asked::Head, Asked::Connect, Asked::Other].into_iter().collect();
    let mut out = Vec::new();
    let cut = if body.is_empty() { 0 } else { usize::from(ctl) % body.len() };
    p.feed(&body[..cut], SystemTime::UNIX_EPOCH, &pending, &mut out);
    if ctl & 2 != 0 {
        p.gap(u64::from(ctl >> 2), &mut out);
    }
    p.feed(&body[cut..], SystemTime::UNIX_EPOCH, &pending, &mut out);
    assert!(p.buffered() <= 2 * 4096 + 1024);
    p.end(&mut out);
});
