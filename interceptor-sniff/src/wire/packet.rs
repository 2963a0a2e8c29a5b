//! Link, network and transport decoding down to a TCP segment, without copying.
//!
//! Hand-written rather than etherparse: the sniffer needs only the path to TCP, must take
//! truncated captures (snaplen) and TSO-sized frames as they come, and this runs once per
//! packet on the hot path, so it borrows the payload and allocates nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Data-link types (pcap LINKTYPE_*) the decoder understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    /// Linux cooked capture v1 (`any` on older libpcap).
    LinuxSll,
    /// Linux cooked capture v2: carries the interface index.
    LinuxSll2,
    /// Raw IPv4 or IPv6, no link header.
    RawIp,
    /// BSD loopback: a 4-byte host-order address family.
    Null,
}

impl LinkType {
    pub fn from_pcap(linktype: i32) -> Option<LinkType> {
        match linktype {
            1 => Some(LinkType::Ethernet),
            113 => Some(LinkType::LinuxSll),
            276 => Some(LinkType::LinuxSll2),
            12 | 14 | 101 => Some(LinkType::RawIp),
            0 => Some(LinkType::Null),
            _ => None,
        }
    }

    pub fn to_pcap(self) -> i32 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::LinuxSll => 113,
            LinkType::LinuxSll2 => 276,
            LinkType::RawIp => 101,
            LinkType::Null => 0,
        }
    }
}

pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub(crate) const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// A TCP segment borrowed from a captured frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The payload bytes present in the capture.
    pub payload: &'a [u8],
    /// Payload bytes the IP header announces but the capture cut off (snaplen).
    pub missing: u32,
    /// Interface index from a Linux cooked v2 header.
    pub ifindex: Option<u32>,
}

impl Segment<'_> {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Why a frame yielded no TCP segment; counted, never fatal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Shorter than the headers it announces.
    Truncated,
    /// Not IP, or IP but not TCP.
    NotTcp,
    /// A non-first IPv4/IPv6 fragment: no TCP header in it.
    Fragment,
    /// Header fields that cannot be right (IHL < 5, data offset < 5, ...).
    Malformed,
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
const ETH_VLAN_OLD_QINQ: u16 = 0x9100;

/// Field offsets of the headers decoded here, in bytes from each header's start.
mod offset {
    /// Ethernet II: two addresses, then the ethertype.
    pub mod eth {
        pub(crate) const ETHERTYPE: usize = 12;
        pub const LEN: usize = 14;
        /// An 802.1Q/802.1ad tag: TCI, then the inner ethertype.
        pub(crate) const TAG_ETHERTYPE: usize = 2;
        pub(crate) const TAG_LEN: usize = 4;
    }
    /// Linux cooked capture v1 (`any`).
    pub mod sll {
        pub(crate) const PROTOCOL: usize = 14;
        pub const LEN: usize = 16;
    }
    /// Linux cooked capture v2: the protocol first, then the interface index.
    pub mod sll2 {
        pub(crate) const PROTOCOL: usize = 0;
        pub(crate) const IFINDEX: usize = 4;
        pub const LEN: usize = 20;
    }
    /// BSD loopback: the address family, 4 bytes.
    pub mod null {
        pub const LEN: usize = 4;
    }
    pub mod ipv4 {
        pub(crate) const TOTAL_LEN: usize = 2;
        pub(crate) const FRAGMENT: usize = 6;
        pub(crate) const PROTOCOL: usize = 9;
        pub(crate) const SRC: usize = 12;
        pub(crate) const DST: usize = 16;
        pub(crate) const MIN_LEN: usize = 20;
    }
    pub mod ipv6 {
        pub(crate) const PAYLOAD_LEN: usize = 4;
        pub(crate) const NEXT_HEADER: usize = 6;
        pub(crate) const SRC: usize = 8;
        pub(crate) const DST: usize = 24;
        pub const LEN: usize = 40;
    }
    pub mod tcp {
        pub(crate) const SRC_PORT: usize = 0;
        pub(crate) const DST_PORT: usize = 2;
        pub(crate) const SEQ: usize = 4;
        pub const ACK: usize = 8;
        pub(crate) const DATA_OFFSET: usize = 12;
        pub(crate) const FLAGS: usize = 13;
        pub(crate) const MIN_LEN: usize = 20;
    }
}

/// IP protocol / IPv6 next-header numbers.
const PROTO_TCP: u8 = 6;
const V6_HOP_BY_HOP: u8 = 0;
const V6_ROUTING: u8 = 43;
const V6_FRAGMENT: u8 = 44;
const V6_DEST_OPTIONS: u8 = 60;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes one captured frame down to its TCP segment.
pub fn decode(link: LinkType, frame: &[u8]) -> Result<Segment<'_>, Skip> {
    let mut ifindex = None;
    let (ethertype, rest) = match link {
        LinkType::Ethernet => {
            let mut ethertype = be16(frame, offset::eth::ETHERTYPE).ok_or(Skip::Truncated)?;
            let mut at = offset::eth::LEN;
            // Up to two stacked tags (802.1Q inside 802.1ad) are plenty for a node's veths.
            for _ in 0..2 {
                if matches!(ethertype, ETH_VLAN | ETH_QINQ | ETH_VLAN_OLD_QINQ) {
                    ethertype =
                        be16(frame, at + offset::eth::TAG_ETHERTYPE).ok_or(Skip::Truncated)?;
                    at += offset::eth::TAG_LEN;
                }
            }
            (ethertype, frame.get(at..).ok_or(Skip::Truncated)?)
        }
        LinkType::LinuxSll => {
            let ethertype = be16(frame, offset::sll::PROTOCOL).ok_or(Skip::Truncated)?;
            (
                ethertype,
                frame.get(offset::sll::LEN..).ok_or(Skip::Truncated)?,
            )
        }
        LinkType::LinuxSll2 => {
            let ethertype = be16(frame, offset::sll2::PROTOCOL).ok_or(Skip::Truncated)?;
            ifindex = Some(be32(frame, offset::sll2::IFINDEX).ok_or(Skip::Truncated)?);
            (
                ethertype,
                frame.get(offset::sll2::LEN..).ok_or(Skip::Truncated)?,
            )
        }
        LinkType::RawIp => match frame.first().map(|b| b >> 4) {
            Some(4) => (ETH_IPV4, frame),
            Some(6) => (ETH_IPV6, frame),
            Some(_) => return Err(Skip::NotTcp),
            None => return Err(Skip::Truncated),
        },
        LinkType::Null => {
            let fam = frame.get(0..offset::null::LEN).ok_or(Skip::Truncated)?;
            // Written in the capturing host's byte order: accept both.
            let fam = u32::from_le_bytes(fam.try_into().map_err(|_| Skip::Truncated)?);
            let fam = if fam > 0xffff { fam.swap_bytes() } else { fam };
            let ethertype = match fam {
                2 => ETH_IPV4,
                10 | 24 | 28 | 30 => ETH_IPV6,
                _ => return Err(Skip::NotTcp),
            };
            (ethertype, &frame[offset::null::LEN..])
        }
    };
    let mut seg = match ethertype {
        ETH_IPV4 => ipv4(rest)?,
        ETH_IPV6 => ipv6(rest)?,
        _ => return Err(Skip::NotTcp),
    };
    seg.ifindex = ifindex;
    Ok(seg)
}

fn ipv4(p: &[u8]) -> Result<Segment<'_>, Skip> {
    let vihl = *p.first().ok_or(Skip::Truncated)?;
    if vihl >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < offset::ipv4::MIN_LEN {
        return Err(Skip::Malformed);
    }
    if p.len() < ihl {
        return Err(Skip::Truncated);
    }
    let total = usize::from(be16(p, offset::ipv4::TOTAL_LEN).ok_or(Skip::Truncated)?);
    let frag = be16(p, offset::ipv4::FRAGMENT).ok_or(Skip::Truncated)?;
    if frag & 0x1fff != 0 {
        return Err(Skip::Fragment);
    }
    if p[offset::ipv4::PROTOCOL] != PROTO_TCP {
        return Err(Skip::NotTcp);
    }
    let addr = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let (src, dst) = (addr(offset::ipv4::SRC), addr(offset::ipv4::DST));
    // TSO/GSO frames captured before segmentation carry total length 0.
    let ip_len = if total == 0 { p.len() } else { total };
    if ip_len < ihl {
        return Err(Skip::Malformed);
    }
    tcp(IpAddr::V4(src), IpAddr::V4(dst), &p[ihl..], ip_len - ihl)
}

fn ipv6(p: &[u8]) -> Result<Segment<'_>, Skip> {
    if p.len() < offset::ipv6::LEN {
        return Err(Skip::Truncated);
    }
    if p[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let payload_len = usize::from(be16(p, offset::ipv6::PAYLOAD_LEN).ok_or(Skip::Truncated)?);
    let mut next = p[offset::ipv6::NEXT_HEADER];
    let addr = |at: usize| -> Result<[u8; 16], Skip> {
        p[at..at + 16].try_into().map_err(|_| Skip::Truncated)
    };
    let (src, dst) = (addr(offset::ipv6::SRC)?, addr(offset::ipv6::DST)?);
    // Payload length 0 means a jumbogram or a GSO frame: take what was captured.
    let mut remaining = if payload_len == 0 {
        p.len() - offset::ipv6::LEN
    } else {
        payload_len
    };
    let mut at = offset::ipv6::LEN;
    // Extension headers before TCP; a bounded walk so hostile chains cost little.
    for _ in 0..8 {
        match next {
            PROTO_TCP => {
                let body = p.get(at..).ok_or(Skip::Truncated)?;
                return tcp(
                    IpAddr::V6(Ipv6Addr::from(src)),
                    IpAddr::V6(Ipv6Addr::from(dst)),
                    body,
                    remaining,
                );
            }
            // Hop-by-hop, routing, destination options.
            V6_HOP_BY_HOP | V6_ROUTING | V6_DEST_OPTIONS => {
                let nh = *p.get(at).ok_or(Skip::Truncated)?;
                let len = (usize::from(*p.get(at + 1).ok_or(Skip::Truncated)?) + 1) * 8;
                next = nh;
                at += len;
                remaining = remaining.checked_sub(len).ok_or(Skip::Malformed)?;
            }
            V6_FRAGMENT => {
                let nh = *p.get(at).ok_or(Skip::Truncated)?;
                let off = be16(p, at + 2).ok_or(Skip::Truncated)?;
                if off >> 3 != 0 {
                    return Err(Skip::Fragment);
                }
                next = nh;
                at += 8;
                remaining = remaining.checked_sub(8).ok_or(Skip::Malformed)?;
            }
            _ => return Err(Skip::NotTcp),
        }
    }
    Err(Skip::NotTcp)
}

/// `seg_len` is the TCP header + payload length announced by the IP layer.
fn tcp(src: IpAddr, dst: IpAddr, t: &[u8], seg_len: usize) -> Result<Segment<'_>, Skip> {
    if t.len() < offset::tcp::MIN_LEN {
        return Err(Skip::Truncated);
    }
    let sport = be16(t, offset::tcp::SRC_PORT).ok_or(Skip::Truncated)?;
    let dport = be16(t, offset::tcp::DST_PORT).ok_or(Skip::Truncated)?;
    let seq = be32(t, offset::tcp::SEQ).ok_or(Skip::Truncated)?;
    let ack = be32(t, offset::tcp::ACK).ok_or(Skip::Truncated)?;
    let off = usize::from(t[offset::tcp::DATA_OFFSET] >> 4) * 4;
    if off < offset::tcp::MIN_LEN || off > seg_len {
        return Err(Skip::Malformed);
    }
    if t.len() < off {
        return Err(Skip::Truncated);
    }
    let flags = t[offset::tcp::FLAGS];
    let announced = seg_len - off;
    // Ethernet pads short frames: never take bytes beyond what IP announced.
    let present = (t.len() - off).min(announced);
    let payload = &t[off..off + present];
    Ok(Segment {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        seq,
        ack,
        flags,
        payload,
        missing: (announced - present) as u32,
        ifindex: None,
    })
}

/// Builds frames for tests, fuzz seeds and the synthetic benchmark captures.
pub mod build {
    use std::net::{IpAddr, SocketAddr};

    /// An Ethernet frame carrying one TCP segment (checksums left zero: nothing checks them).
    pub fn ethernet_tcp(
        src: SocketAddr,
        dst: SocketAddr,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + 40 + 20 + payload.len());
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
        let tcp_len = 20 + payload.len();
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let total = (20 + tcp_len) as u16;
                f.extend_from_slice(&[0x45, 0]);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (s, d) => {
                let to6 = |a: IpAddr| match a {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
                f.extend_from_slice(&[6, 64]);
                f.extend_from_slice(&to6(s).octets());
                f.extend_from_slice(&to6(d).octets());
            }
        }
        f.extend_from_slice(&src.port().to_be_bytes());
        f.extend_from_slice(&dst.port().to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&ack.to_be_bytes());
        f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn decodes_ipv4_and_ipv6_over_ethernet() {
        let f = build::ethernet_tcp(
            addr("10.0.0.1:1234"),
            addr("10.0.0.2:80"),
            7,
            9,
            flags::ACK | flags::PSH,
            b"GET",
        );
        let s = decode(LinkType::Ethernet, &f).unwrap();
        assert_eq!(
            (s.src, s.dst, s.seq, s.ack, s.payload, s.missing),
            (
                addr("10.0.0.1:1234"),
                addr("10.0.0.2:80"),
                7,
                9,
                &b"GET"[..],
                0
            )
        );
        let f = build::ethernet_tcp(
            addr("[fd00::1]:1234"),
            addr("[fd00::2]:80"),
            1,
            2,
            flags::SYN,
            b"",
        );
        let s = decode(LinkType::Ethernet, &f).unwrap();
        assert_eq!(s.dst, addr("[fd00::2]:80"));
        assert!(s.has(flags::SYN));
    }

    #[test]
    fn vlan_sll_sll2_and_raw() {
        let f = build::ethernet_tcp(addr("10.0.0.1:1"), addr("10.0.0.2:2"), 1, 1, 0, b"x");
        let mut vlan = f[..12].to_vec();
        vlan.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        vlan.extend_from_slice(&f[12..]);
        assert_eq!(decode(LinkType::Ethernet, &vlan).unwrap().payload, b"x");
        let ip = &f[14..];
        assert_eq!(decode(LinkType::RawIp, ip).unwrap().payload, b"x");
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&[0x08, 0x00]);
        sll.extend_from_slice(ip);
        assert_eq!(decode(LinkType::LinuxSll, &sll).unwrap().payload, b"x");
        let mut sll2 = vec![0x08, 0x00, 0, 0, 0, 0, 0, 7];
        sll2.extend_from_slice(&[0u8; 12]);
        sll2.extend_from_slice(ip);
        let s = decode(LinkType::LinuxSll2, &sll2).unwrap();
        assert_eq!((s.payload, s.ifindex), (&b"x"[..], Some(7)));
    }

    #[test]
    fn snaplen_cut_is_reported_as_missing_and_padding_ignored() {
        let f = build::ethernet_tcp(
            addr("10.0.0.1:1"),
            addr("10.0.0.2:2"),
            1,
            1,
            0,
            b"hello world",
        );
        let s = decode(LinkType::Ethernet, &f[..f.len() - 6]).unwrap();
        assert_eq!((s.payload, s.missing), (&b"hello"[..], 6));
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(
            decode(LinkType::Ethernet, &padded).unwrap().payload,
            b"hello world"
        );
    }

    #[test]
    fn every_prefix_of_a_frame_decodes_or_skips_without_panic() {
        let f = build::ethernet_tcp(addr("[fd00::1]:1"), addr("[fd00::2]:2"), 1, 1, 0, b"abc");
        for n in 0..f.len() {
            let _ = decode(LinkType::Ethernet, &f[..n]);
            let _ = decode(LinkType::RawIp, &f[14..14 + n.min(f.len() - 14)]);
            let _ = decode(LinkType::LinuxSll2, &f[..n]);
            let _ = decode(LinkType::Null, &f[..n]);
        }
        // Bad header lengths are rejected, not trusted.
        let mut bad = build::ethernet_tcp(addr("10.0.0.1:1"), addr("10.0.0.2:2"), 1, 1, 0, b"abc");
        bad[14] = 0x41;
        assert_eq!(decode(LinkType::Ethernet, &bad), Err(Skip::Malformed));
    }
}
