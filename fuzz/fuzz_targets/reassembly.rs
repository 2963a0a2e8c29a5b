//! A stream of arbitrary TCP segments (4 flows, any flags, sequence numbers, payloads) fed
//! through the reassembler and the HTTP layer: no panic, and the table stays bounded.
#![no_main]

use std::time::{Duration, SystemTime};

use interceptor_sniff::wire::packet::{build::ethernet_tcp, decode, LinkType};
use interceptor_sniff::http::stream::Limits;
use interceptor_sniff::reassembly::{Config, Table};
use interceptor_sniff::pipeline::flow::{Ctx, HttpFlow};
use interceptor_sniff::output::json::Json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = Config { max_flows: 3, max_buffered_bytes: 4096, max_buffered_segments: 8, ..Config::default() };
    let mut table: Table<HttpFlow> = Table::new(cfg);
    let mut ctx = Ctx::new(Limits { max_body: 256, ..Limits::default() }, Box::new(Json::new(std::io::sink())), None, false);
    let mut rest = data;
    let mut t = SystemTime::UNIX_EPOCH;
    while rest.len() >= 8 {
        let (hdr, tail) = rest.split_at(8);
        let len = usize::from(hdr[7]).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        let flow = hdr[0] & 3;
        let (a, b) = (format!("10.0.0.{flow}:1000"), "10.0.1.1:80".to_string());
        let (src, dst) = if hdr[0] & 4 == 0 { (a, b) } else { (b, a) };
        let seq = u32::from_le_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]);
        let frame = ethernet_tcp(src.parse().unwrap(), dst.parse().unwrap(), seq, 0, hdr[5], payload);
        t += Duration::from_millis(u64::from(hdr[6]) * 10);
        if let Ok(seg) = decode(LinkType::Ethernet, &frame) {
            table.segment(&mut ctx, &seg, t);
        }
        assert!(table.len() <= 3);
    }
    table.finish(&mut ctx, t);
});
