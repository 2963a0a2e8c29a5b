//! Addresses as the programs see them: IPv4 as a `u32` holding the network-order bytes,
//! IPv6 as four such words. Context fields are read one 32-bit word at a time with
//! volatile loads, because the verifier rejects wider (merged) loads of context fields.

use core::ptr::{read_volatile, write_volatile};

use interceptor_common::{SockAddr, AF_INET, AF_INET6};

pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;

pub const LOOPBACK_V4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// Source address of the proxy's inbound passthrough connects (istio binds 127.0.0.6).
pub const PASSTHROUGH_V4: u32 = u32::from_ne_bytes([127, 0, 0, 6]);
const MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
pub const LOOPBACK_V6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
pub const LOOPBACK_MAPPED: [u32; 4] = [0, 0, MAPPED_PREFIX, LOOPBACK_V4];
const PASSTHROUGH_V6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 6])];

#[inline(always)]
pub fn is_loopback_v4(ip: u32) -> bool {
    ip.to_ne_bytes()[0] == 127
}

/// A loopback address (127/8, ::1; a v4-mapped one has become IPv4 in [`v6`]).
#[inline(always)]
pub fn is_loopback(a: &SockAddr) -> bool {
    if a.family == AF_INET {
        is_loopback_v4(a.addr[0])
    } else {
        a.addr == LOOPBACK_V6
    }
}

#[inline(always)]
pub fn is_v4_mapped(ip6: &[u32; 4]) -> bool {
    ip6[0] == 0 && ip6[1] == 0 && ip6[2] == MAPPED_PREFIX
}

#[inline(always)]
pub fn is_passthrough_v6(ip6: &[u32; 4]) -> bool {
    (is_v4_mapped(ip6) && ip6[3] == PASSTHROUGH_V4) || *ip6 == PASSTHROUGH_V6
}

#[inline(always)]
pub fn v4(ip: u32, port: u16) -> SockAddr {
    SockAddr {
        addr: [ip, 0, 0, 0],
        port,
        family: AF_INET,
    }
}

/// An IPv6 address; a v4-mapped one becomes the IPv4 address it maps, so both ends of a
/// connection agree whatever family each socket has.
#[inline(always)]
pub fn v6(ip6: [u32; 4], port: u16) -> SockAddr {
    if is_v4_mapped(&ip6) {
        v4(ip6[3], port)
    } else {
        SockAddr {
            addr: ip6,
            port,
            family: AF_INET6,
        }
    }
}

/// Reads four 32-bit context words.
///
/// # Safety
/// `p` points at a readable `[u32; 4]` context field.
#[inline(always)]
pub unsafe fn read_ip6(p: *const [u32; 4]) -> [u32; 4] {
    let w = p as *const u32;
    unsafe {
        [
            read_volatile(w),
            read_volatile(w.add(1)),
            read_volatile(w.add(2)),
            read_volatile(w.add(3)),
        ]
    }
}

/// Writes four 32-bit context words.
///
/// # Safety
/// `p` points at a writable `[u32; 4]` context field.
#[inline(always)]
pub unsafe fn write_ip6(p: *mut [u32; 4], ip6: [u32; 4]) {
    let w = p as *mut u32;
    unsafe {
        write_volatile(w, ip6[0]);
        write_volatile(w.add(1), ip6[1]);
        write_volatile(w.add(2), ip6[2]);
        write_volatile(w.add(3), ip6[3]);
    }
}
