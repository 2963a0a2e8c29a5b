//! Outbound: connects (and DNS datagrams) of the app go to the proxy on loopback; the
//! original destination is kept by socket cookie. The checks mirror istio's ISTIO_OUTPUT
//! chain: proxy uid/gid, source 127.0.0.6, loopback destinations, excluded ports, excluded
//! CIDRs return; included ports, included CIDRs (or all) redirect.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    helpers::{bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
    EbpfContext,
};
use aya_log_ebpf::debug;
use interceptor_common::{
    counter, Settings, SockAddr, COOKIE_PREFIX_BITS, FLAG_OUTBOUND_ALL_CIDRS, FLAG_REDIRECT_DNS,
    PORT_OUT_EXCLUDE, PORT_OUT_INCLUDE,
};

use crate::{
    addr::{self, IPPROTO_TCP, IPPROTO_UDP},
    maps::{self, ORIG_BY_COOKIE, OUT_EXCLUDE_V4, OUT_EXCLUDE_V6, OUT_INCLUDE_V4, OUT_INCLUDE_V6},
};

const DNS_PORT: u16 = 53;
/// Verdict of a cgroup sock_addr program that lets the call proceed.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, Family::V4, Call::Connect);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, Family::V6, Call::Connect);
    ALLOW
}

/// Unconnected UDP sends: only DNS is redirected.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, Family::V4, Call::Sendmsg);
    ALLOW
}

/// Replies from the proxy's DNS port get the server the app asked as their source again,
/// as resolvers drop answers from an address they did not query.
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let _ = restore_dns_source(&ctx);
    ALLOW
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Connect,
    Sendmsg,
}

// Inlined into each program, so `family` and `call` are constants there and the checks
// that do not apply to it go away.
#[inline(always)]
fn redirect(ctx: &SockAddrContext, family: Family, call: Call) -> Option<()> {
    let sa = ctx.sock_addr;
    // The context's own fields first, map lookups after: these programs run on every
    // connect and every unconnected UDP send of the cgroup, most of which are not ours
    // (sendmsg4 for a datagram that is not DNS: 66 ns instead of 210 with bpf_stats).
    // SAFETY: `sa` is the kernel's context pointer, valid for the program's run; the
    // fields are read whole, one 32-bit word each, as the verifier wants.
    let (protocol, user_port) = unsafe {
        (
            read_volatile(addr_of!((*sa).protocol)),
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    let port = u16::from_be(user_port as u16);
    match (protocol, call) {
        (IPPROTO_TCP, Call::Connect) => {}
        // UDP: only DNS is ever redirected.
        (IPPROTO_UDP, _) if port == DNS_PORT => {}
        _ => return None,
    }
    // SAFETY: the helper only reads the socket the context points at.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let s = maps::settings(netns)?;
    if is_proxy(s) {
        return None;
    }
    // SAFETY: context fields, as above; user_ip6 is four readable words.
    let dst = match family {
        Family::V4 => addr::v4(unsafe { read_volatile(addr_of!((*sa).user_ip4)) }, port),
        Family::V6 => addr::v6(unsafe { addr::read_ip6(addr_of!((*sa).user_ip6)) }, port),
    };
    let loopback = is_loopback(netns, &dst);

    let to_port = if s.flags & FLAG_REDIRECT_DNS != 0 && port == DNS_PORT && !loopback {
        s.dns_port
    } else if protocol == IPPROTO_TCP && call == Call::Connect && !loopback {
        if from_passthrough(ctx, family) || !outbound_redirected(netns, s, &dst) {
            return None;
        }
        s.proxy_port
    } else {
        return None;
    };

    // SAFETY: the helper only reads the socket the context points at.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ORIG_BY_COOKIE.insert(cookie, dst, 0).ok()?;
    // A v4-mapped destination stays v4-mapped so the socket's family still fits.
    // SAFETY: connect4/6 and sendmsg4 may rewrite the destination fields of their
    // context, one 32-bit word at a time.
    unsafe {
        match family {
            Family::V4 => write_volatile(addr_of_mut!((*sa).user_ip4), addr::LOOPBACK_V4),
            Family::V6 if dst.family == interceptor_common::AF_INET => {
                addr::write_ip6(addr_of_mut!((*sa).user_ip6), addr::LOOPBACK_MAPPED)
            }
            Family::V6 => addr::write_ip6(addr_of_mut!((*sa).user_ip6), addr::LOOPBACK_V6),
        }
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(to_port.to_be()));
    }
    if to_port == s.dns_port && port == DNS_PORT {
        maps::count(netns, counter::DNS_REDIRECTED, 1);
    } else {
        maps::count(netns, counter::CONNECT_REDIRECTED, 1);
    }
    debug!(
        ctx,
        "redirect {:i}:{} to port {}",
        u32::from_be(dst.addr[0]),
        port,
        to_port
    );
    Some(())
}

/// The caller runs as one of the proxy's uids or gids.
#[inline(always)]
fn is_proxy(s: &Settings) -> bool {
    let ids = bpf_get_current_uid_gid();
    let (uid, gid) = (ids as u32, (ids >> 32) as u32);
    let mut i = 0;
    while i < interceptor_common::MAX_IDS {
        if (i < usize::from(s.n_uids) && s.proxy_uids[i] == uid)
            || (i < usize::from(s.n_gids) && s.proxy_gids[i] == gid)
        {
            return true;
        }
        i += 1;
    }
    false
}

/// Loopback, or one of the namespace's own addresses: the connection never leaves.
#[inline(always)]
fn is_loopback(netns: u64, dst: &SockAddr) -> bool {
    if dst.family == interceptor_common::AF_INET {
        addr::is_loopback_v4(dst.addr[0]) || maps::netns_of_v4(dst.addr[0]) == Some(netns)
    } else {
        dst.addr == addr::LOOPBACK_V6 || maps::netns_of_v6(&dst.addr) == Some(netns)
    }
}

/// The socket is bound to the proxy's inbound passthrough source (127.0.0.6).
#[inline(always)]
fn from_passthrough(ctx: &SockAddrContext, family: Family) -> bool {
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return false;
    }
    match family {
        Family::V4 => (unsafe { read_volatile(addr_of!((*sk).src_ip4)) }) == addr::PASSTHROUGH_V4,
        Family::V6 => addr::is_passthrough_v6(&unsafe { addr::read_ip6(addr_of!((*sk).src_ip6)) }),
    }
}

/// Whether a TCP connect to `dst` goes to the proxy, by ports and CIDRs. The include
/// trie is only asked when neither `-i '*'` nor a `-q` port already decides.
#[inline(always)]
fn outbound_redirected(netns: u64, s: &Settings, dst: &SockAddr) -> bool {
    let ports = maps::port_bits(netns, dst.port);
    if ports & PORT_OUT_EXCLUDE != 0 {
        return false;
    }
    if in_trie(netns, dst, Trie::Exclude) {
        return false;
    }
    ports & PORT_OUT_INCLUDE != 0
        || s.flags & FLAG_OUTBOUND_ALL_CIDRS != 0
        || in_trie(netns, dst, Trie::Include)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Trie {
    Include,
    Exclude,
}

/// Whether `dst` is in one of the namespace's outbound CIDR tries (`-i` or `-x`).
#[inline(always)]
fn in_trie(netns: u64, dst: &SockAddr, trie: Trie) -> bool {
    if dst.family == interceptor_common::AF_INET {
        let key = Key::new(COOKIE_PREFIX_BITS + 32, maps::v4_key(netns, dst.addr[0]));
        match trie {
            Trie::Include => OUT_INCLUDE_V4.get(&key).is_some(),
            Trie::Exclude => OUT_EXCLUDE_V4.get(&key).is_some(),
        }
    } else {
        let key = Key::new(COOKIE_PREFIX_BITS + 128, maps::v6_key(netns, &dst.addr));
        match trie {
            Trie::Include => OUT_INCLUDE_V6.get(&key).is_some(),
            Trie::Exclude => OUT_EXCLUDE_V6.get(&key).is_some(),
        }
    }
}

fn restore_dns_source(ctx: &SockAddrContext) -> Option<()> {
    // Every UDP receive of the cgroup comes here: only a datagram from loopback can be an
    // answer of the proxy's DNS port, so that is checked before any map lookup.
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's context pointer, valid for the program's run; the
    // fields are read whole, one 32-bit word each.
    let (ip, user_port) = unsafe {
        (
            read_volatile(addr_of!((*sa).user_ip4)),
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    if ip != addr::LOOPBACK_V4 {
        return None;
    }
    let port = u16::from_be(user_port as u16);
    // SAFETY: the helper only reads the socket the context points at.
    let s = maps::settings(unsafe { bpf_get_netns_cookie(ctx.as_ptr()) })?;
    if s.flags & FLAG_REDIRECT_DNS == 0 || port != s.dns_port {
        return None;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once; an LRU entry may go at any time after.
    let orig = *unsafe { ORIG_BY_COOKIE.get(cookie) }?;
    if orig.family != interceptor_common::AF_INET || orig.port != DNS_PORT {
        return None;
    }
    // SAFETY: recvmsg4 may rewrite the source address fields of its context.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), orig.addr[0]);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(orig.port.to_be()));
    }
    Some(())
}
