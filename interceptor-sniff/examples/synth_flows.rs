//! Writes a pcap with N concurrent, never-closed HTTP flows, for measuring the sniffer's
//! memory with a full flow table (scripts/bench-sniff.sh):
//!
//!     cargo run --release --example synth_flows -- OUT.pcap [FLOWS]
//!
//! Every flow does the handshake, sends a complete request and receives the first half of
//! a response head, so both directions hold parser state when the capture ends.

use std::io::BufWriter;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use interceptor_sniff::wire::packet::build::ethernet_tcp;
use interceptor_sniff::wire::packet::flags::{ACK, PSH, SYN};
use interceptor_sniff::wire::pcap;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: synth_flows OUT.pcap [FLOWS]");
        std::process::exit(2);
    };
    let flows: u32 = match args.next().map(|n| n.parse()) {
        None => 100_000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("synth_flows: FLOWS must be a number");
            std::process::exit(2);
        }
    };
    let file = BufWriter::new(std::fs::File::create(&path)?);
    let mut w = pcap::Writer::new(file, pcap::LINKTYPE_ETHERNET, 65535)?;
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)), 80);
    let mut usec: u64 = 1_700_000_000_000_000;
    let mut packet = |w: &mut pcap::Writer<_>, frame: Vec<u8>| -> std::io::Result<()> {
        usec += 3;
        w.packet(usec, &frame)
    };
    for i in 0..flows {
        let client = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(
                10,
                100 + (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            )),
            10_000 + (i % 50_000) as u16,
        );
        let (c, s) = (1000u32.wrapping_mul(i), 7_000_000u32.wrapping_add(i));
        let req = format!(
            "GET /items/{i} HTTP/1.1\r\nHost: catalog.istioinaction:80\r\nUser-Agent: synth\r\nx-request-id: {i:08x}-aaaa-bbbb\r\n\r\n"
        );
        let resp = b"HTTP/1.1 200 OK\r\nContent-Type: appl";
        packet(&mut w, ethernet_tcp(client, server, c, 0, SYN, b""))?;
        packet(
            &mut w,
            ethernet_tcp(server, client, s, c + 1, SYN | ACK, b""),
        )?;
        packet(&mut w, ethernet_tcp(client, server, c + 1, s + 1, ACK, b""))?;
        packet(
            &mut w,
            ethernet_tcp(client, server, c + 1, s + 1, ACK | PSH, req.as_bytes()),
        )?;
        packet(
            &mut w,
            ethernet_tcp(
                server,
                client,
                s + 1,
                c + 1 + req.len() as u32,
                ACK | PSH,
                resp,
            ),
        )?;
    }
    w.flush()
}
