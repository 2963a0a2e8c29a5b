//! Any bytes as a capture file (pcap or pcapng): the reader must return packets inside the
//! file or an error, never panic (a timestamp no clock holds was one); reading the same
//! bytes from a pipe, in reads of odd sizes, must give the same packets and end the same
//! way. What it returns goes on through the decoder, the reassembler and the HTTP layer,
//! with the file's timestamps, and through the timestamp formatting of the output.
#![no_main]

use std::io::Read;
use std::time::SystemTime;

use interceptor_sniff::capture::file::{Reader, Stream};
use interceptor_sniff::http::stream::Limits;
use interceptor_sniff::output::json::Json;
use interceptor_sniff::output::rfc3339;
use interceptor_sniff::pipeline::flow::{Ctx, HttpFlow};
use interceptor_sniff::reassembly::{Config, Table};
use interceptor_sniff::wire::packet::{decode, LinkType};
use libfuzzer_sys::fuzz_target;

type Packet = (SystemTime, Vec<u8>, u32, i32);

/// A pipe that hands over 1 to 13 bytes per read.
struct Dribble<'a> {
    b: &'a [u8],
    reads: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.reads += 1;
        let n = (1 + self.reads * 7 % 13).min(out.len()).min(self.b.len());
        out[..n].copy_from_slice(&self.b[..n]);
        self.b = &self.b[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut mapped: Vec<Packet> = Vec::new();
    let map_ok = match Reader::new(data) {
        Err(_) => false,
        Ok(mut r) => {
            let _ = r.first_linktype(data);
            loop {
                match r.next(data) {
                    Ok(Some(p)) => {
                        // Borrowed from the file, inside it.
                        let (start, end) =
                            (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
                        let at = p.data.as_ptr() as usize;
                        assert!(at >= start && at + p.data.len() <= end);
                        mapped.push((p.ts, p.data.to_vec(), p.len, p.linktype));
                    }
                    Ok(None) => break true,
                    Err(_) => break false,
                }
            }
        }
    };

    let mut streamed: Vec<Packet> = Vec::new();
    let stream_ok = match Stream::open(Dribble { b: data, reads: 0 }) {
        Err(_) => false,
        Ok(mut s) => {
            let _ = s.first_linktype();
            loop {
                match s.next_packet() {
                    Ok(Some(p)) => streamed.push((p.ts, p.data.to_vec(), p.len, p.linktype)),
                    Ok(None) => break true,
                    Err(_) => break false,
                }
            }
        }
    };
    assert_eq!(streamed, mapped);
    assert_eq!(stream_ok, map_ok);

    let cfg = Config {
        max_flows: 3,
        max_buffered_bytes: 4096,
        max_buffered_segments: 8,
        ..Config::default()
    };
    let mut table: Table<HttpFlow> = Table::new(cfg);
    let mut ctx = Ctx::new(
        Limits {
            max_body: 256,
            ..Limits::default()
        },
        Box::new(Json::new(std::io::sink())),
        None,
        false,
    );
    let mut last = SystemTime::UNIX_EPOCH;
    for (ts, bytes, _, linktype) in &mapped {
        let _ = rfc3339(*ts);
        last = *ts;
        let Some(link) = LinkType::from_pcap(*linktype) else {
            continue;
        };
        if let Ok(seg) = decode(link, bytes) {
            table.segment(&mut ctx, &seg, *ts);
        }
    }
    table.finish(&mut ctx, last);
});
