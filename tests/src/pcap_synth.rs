//! Synthetic captures of mirrored traffic, written as classic pcap (Ethernet link type):
//! a sidecar at 10.123.1.2 sends each request to catalog v1 (10.123.2.2:3000) and its
//! mirror, Host `catalog.istioinaction-shadow:80` and the same `x-request-id`, to the shadow
//! (10.123.3.2:3000), over a few keep-alive connections per side, answers in either order.
//! Used by the pcap integration test and by `cargo xtask shadow-pcap` for the benchmark.

use std::io::{self, Write};

use interceptor_sniff::wire::pcap;

/// What to synthesise.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Primary requests.
    pub requests: usize,
    /// Keep-alive connections per side; request i goes over connection i % connections.
    pub connections: usize,
    /// Every Nth request (N > 0) is not mirrored: its primary stays alone.
    pub unmirrored_every: Option<usize>,
    /// The shadow serves v2 (adds imageUrl) rather than the same v1 catalog.
    pub shadow_v2: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            requests: 100,
            connections: 4,
            unmirrored_every: None,
            shadow_v2: true,
        }
    }
}

/// What was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub pairs: usize,
    pub unmirrored: usize,
    pub packets: usize,
    pub bytes: usize,
}

const ITEMS: [(u32, &str, &str, &str, &str); 4] = [
    (1, "amber", "Eyewear", "Elinor Glasses", "282.00"),
    (2, "cyan", "Clothing", "Atlas Shirt", "127.00"),
    (3, "teal", "Clothing", "Small Metal Shoes", "232.00"),
    (4, "red", "Watches", "Red Dragon Watch", "232.00"),
];

/// The catalog's answer to GET /items, laid out as scripts/lab/catalog.py lays it out.
pub fn catalog_json(v2: bool) -> String {
    let mut s = String::from("[\n");
    for (i, (id, color, dept, name, price)) in ITEMS.iter().enumerate() {
        s.push_str(&format!(
            "  {{\n    \"id\": {id},\n    \"color\": \"{color}\",\n    \"department\": \"{dept}\",\n    \"name\": \"{name}\",\n    \"price\": \"{price}\""
        ));
        if v2 {
            s.push_str(",\n    \"imageUrl\": \"http://lorempixel.com/640/480\"");
        }
        s.push_str(if i + 1 < ITEMS.len() {
            "\n  },\n"
        } else {
            "\n  }\n"
        });
    }
    s.push(']');
    s
}

const CLIENT: [u8; 4] = [10, 123, 1, 2];
const PRIMARY: [u8; 4] = [10, 123, 2, 2];
const SHADOW: [u8; 4] = [10, 123, 3, 2];
const MSS: usize = 1448;
const T0_SECS: u64 = 1_700_000_000;

/// One TCP connection's state: addresses and next sequence numbers.
struct Conn {
    client: ([u8; 4], u16),
    server: ([u8; 4], u16),
    cseq: u32,
    sseq: u32,
    open: bool,
}

struct Writer<W: Write> {
    out: pcap::Writer<W>,
    written: Written,
    buf: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Writes one segment; `from_client` picks the direction.
    #[allow(clippy::too_many_arguments)]
    fn segment(
        &mut self,
        ts_us: u64,
        c: &mut Conn,
        from_client: bool,
        flags: u8,
        payload: &[u8],
    ) -> io::Result<()> {
        let ((src, sport), (dst, dport)) = if from_client {
            (c.client, c.server)
        } else {
            (c.server, c.client)
        };
        let (seq, ack) = if from_client {
            (c.cseq, c.sseq)
        } else {
            (c.sseq, c.cseq)
        };
        let ack = if flags & ACK != 0 { ack } else { 0 };
        let b = &mut self.buf;
        b.clear();
        // Ethernet: made-up locally administered MACs, IPv4.
        let mac = |ip: [u8; 4]| [0x02, 0, ip[0], ip[1], ip[2], ip[3]];
        b.extend_from_slice(&mac(dst));
        b.extend_from_slice(&mac(src));
        b.extend_from_slice(&0x0800u16.to_be_bytes());
        // IPv4
        let ip_start = b.len();
        let total = 20 + 20 + payload.len();
        b.extend_from_slice(&[0x45, 0]);
        b.extend_from_slice(&(total as u16).to_be_bytes());
        b.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        let ck = checksum(&b[ip_start..ip_start + 20], 0);
        b[ip_start + 10..ip_start + 12].copy_from_slice(&ck.to_be_bytes());
        // TCP
        let tcp_start = b.len();
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&ack.to_be_bytes());
        b.extend_from_slice(&[0x50, flags]);
        b.extend_from_slice(&65535u16.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(payload);
        let mut pseudo = 0u32;
        for w in [&src, &dst] {
            pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]))
                + u32::from(u16::from_be_bytes([w[2], w[3]]));
        }
        pseudo += 6 + (20 + payload.len()) as u32;
        let ck = checksum(&b[tcp_start..], pseudo);
        b[tcp_start + 16..tcp_start + 18].copy_from_slice(&ck.to_be_bytes());

        self.out.packet(T0_SECS * 1_000_000 + ts_us, b)?;
        self.written.packets += 1;
        self.written.bytes += pcap::record_header::LEN + b.len();

        let advance = payload.len() as u32 + u32::from(flags & (SYN | FIN) != 0);
        if from_client {
            c.cseq = c.cseq.wrapping_add(advance);
        } else {
            c.sseq = c.sseq.wrapping_add(advance);
        }
        Ok(())
    }

    fn open(&mut self, ts_us: u64, c: &mut Conn) -> io::Result<()> {
        if c.open {
            return Ok(());
        }
        self.segment(ts_us, c, true, SYN, &[])?;
        self.segment(ts_us + 10, c, false, SYN | ACK, &[])?;
        self.segment(ts_us + 20, c, true, ACK, &[])?;
        c.open = true;
        Ok(())
    }

    fn send(&mut self, ts_us: u64, c: &mut Conn, from_client: bool, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MSS) {
            self.segment(ts_us, c, from_client, PSH | ACK, chunk)?;
        }
        Ok(())
    }

    fn close(&mut self, ts_us: u64, c: &mut Conn) -> io::Result<()> {
        if !c.open {
            return Ok(());
        }
        self.segment(ts_us, c, true, FIN | ACK, &[])?;
        self.segment(ts_us + 10, c, false, FIN | ACK, &[])?;
        self.segment(ts_us + 20, c, true, ACK, &[])?;
        c.open = false;
        Ok(())
    }
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn http_date(secs: u64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        WD[(days % 7) as usize],
        MON[(m - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn request(host: &str, id: &str) -> Vec<u8> {
    format!(
        "GET /items HTTP/1.1\r\nHost: {host}\r\nX-Request-Id: {id}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes()
}

fn response(body: &str, ts_us: u64) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nServer: catalog\r\nDate: {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-cache\r\n\r\n{body}",
        http_date(T0_SECS + ts_us / 1_000_000),
        body.len()
    )
    .into_bytes()
}

/// Writes the capture described by `spec` to `out`.
pub fn write<W: Write>(out: W, spec: &Spec) -> io::Result<Written> {
    let conns = spec.connections.max(1);
    let mut w = Writer {
        out: pcap::Writer::new(out, pcap::LINKTYPE_ETHERNET, 65535)?,
        written: Written {
            bytes: pcap::file_header::LEN,
            ..Written::default()
        },
        buf: Vec::with_capacity(2048),
    };
    let mk = |server: [u8; 4], port: u16| Conn {
        client: (CLIENT, port),
        server: (server, 3000),
        cseq: u32::from(port).wrapping_mul(7919),
        sseq: u32::from(port).wrapping_mul(104_729),
        open: false,
    };
    let mut primaries: Vec<Conn> = (0..conns).map(|i| mk(PRIMARY, 40_000 + i as u16)).collect();
    let mut shadows: Vec<Conn> = (0..conns).map(|i| mk(SHADOW, 50_000 + i as u16)).collect();
    let v1 = catalog_json(false);
    let shadow_body = catalog_json(spec.shadow_v2);
    let mut t = 0u64;
    for i in 0..spec.requests {
        let id = format!(
            "{:016x}{:016x}",
            0x5eed_0000_0000_0000u64 + i as u64,
            i as u64 * 0x9e37_79b9
        );
        let mirrored = !matches!(spec.unmirrored_every, Some(n) if n > 0 && i % n == n - 1);
        let p = &mut primaries[i % conns];
        let s = &mut shadows[i % conns];
        w.open(t, p)?;
        if mirrored {
            w.open(t, s)?;
        }
        t += 30;
        w.send(t, p, true, &request("catalog.istioinaction:80", &id))?;
        if mirrored {
            w.send(
                t + 5,
                s,
                true,
                &request("catalog.istioinaction-shadow:80", &id),
            )?;
        }
        // The answers come back in either order.
        let (pt, st) = if i % 2 == 0 {
            (t + 300, t + 450)
        } else {
            (t + 500, t + 350)
        };
        let mut answers = vec![(pt, true)];
        if mirrored {
            answers.push((st, false));
        }
        answers.sort();
        for (at, primary) in answers {
            if primary {
                w.send(at, p, false, &response(&v1, at))?;
            } else {
                w.send(at, s, false, &response(&shadow_body, at))?;
            }
        }
        if mirrored {
            w.written.pairs += 1;
        } else {
            w.written.unmirrored += 1;
        }
        t += 600;
    }
    for c in primaries.iter_mut().chain(shadows.iter_mut()) {
        w.close(t, c)?;
        t += 30;
    }
    w.out.flush()?;
    Ok(w.written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_the_lab_catalog_lengths() {
        // The seed's catalog answers 502 bytes for v1 and 698 for v2; so does the lab's.
        assert_eq!(catalog_json(false).len(), 502);
        assert_eq!(catalog_json(true).len(), 698);
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn checksums_verify() {
        // A header with its checksum in place sums to zero.
        let mut h = [
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 123, 1, 2, 10, 123, 2, 2,
        ];
        let ck = checksum(&h, 0);
        h[10..12].copy_from_slice(&ck.to_be_bytes());
        assert_eq!(checksum(&h, 0), 0);
    }

    #[test]
    fn counts_and_layout() {
        let mut buf = Vec::new();
        let spec = Spec {
            requests: 10,
            connections: 2,
            unmirrored_every: Some(5),
            shadow_v2: true,
        };
        let w = write(&mut buf, &spec).unwrap();
        assert_eq!((w.pairs, w.unmirrored), (8, 2));
        assert_eq!(w.bytes, buf.len());
        assert_eq!(&buf[..4], &0xa1b2c3d4u32.to_le_bytes());
        // Handshakes and closes for 2 + 2 connections, a request and an answer per exchange.
        assert_eq!(w.packets, 4 * 3 * 2 + 2 * (10 + 8));
        let text = String::from_utf8_lossy(&buf);
        assert_eq!(
            text.matches("Host: catalog.istioinaction-shadow:80")
                .count(),
            8
        );
        assert_eq!(text.matches("\"imageUrl\"").count(), 8 * 4);
    }
}
