//! sk_lookup on the pod's network namespace: a TCP connection arriving from outside for a
//! local port that is captured goes to the inbound capture listener, keeping its original
//! local address (the proxy reads it with getsockname, as under TPROXY).

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{bindings::sk_action::SK_PASS, macros::sk_lookup, programs::SkLookupContext};
use aya_log_ebpf::debug;
use interceptor_common::{
    counter, ListenerKey, AF_INET, FLAG_INBOUND_ALL_PORTS, PORT_IN_EXCLUDE, PORT_IN_INCLUDE,
};

use crate::{
    addr::{self, IPPROTO_TCP},
    maps::{self, LISTENER},
};

/// Every network namespace numbers its loopback device 1.
const LOOPBACK_IFINDEX: u32 = 1;

#[sk_lookup]
pub fn sklookup(ctx: SkLookupContext) -> u32 {
    let _ = capture(&ctx);
    SK_PASS
}

fn capture(ctx: &SkLookupContext) -> Option<()> {
    let l = ctx.lookup;
    let (protocol, ifindex, family, port) = unsafe {
        (
            read_volatile(addr_of!((*l).protocol)),
            read_volatile(addr_of!((*l).ingress_ifindex)),
            read_volatile(addr_of!((*l).family)),
            read_volatile(addr_of!((*l).local_port)) as u16,
        )
    };
    if protocol != IPPROTO_TCP || ifindex == LOOPBACK_IFINDEX || from_this_host(ctx, family) {
        return None;
    }
    // sk_lookup programs cannot ask for their namespace's cookie: the address the
    // connection arrives at says which served namespace this is.
    let netns = if family == u32::from(AF_INET) {
        maps::netns_of_v4(unsafe { read_volatile(addr_of!((*l).local_ip4)) })?
    } else {
        let local = unsafe { addr::read_ip6(addr_of!((*l).local_ip6)) };
        if addr::is_v4_mapped(&local) {
            maps::netns_of_v4(local[3])?
        } else {
            maps::netns_of_v6(&local)?
        }
    };
    let s = maps::settings(netns)?;
    if port == s.inbound_port {
        return None;
    }
    let ports = maps::port_bits(netns, port);
    if ports & PORT_IN_EXCLUDE != 0
        || (s.flags & FLAG_INBOUND_ALL_PORTS == 0 && ports & PORT_IN_INCLUDE == 0)
    {
        return None;
    }
    // An IPv4 connection may go to an IPv4 listener or a dual-stack IPv6 one.
    let key = |index| ListenerKey {
        netns_cookie: netns,
        index,
        _pad: 0,
    };
    let assigned = if family == u32::from(AF_INET) {
        LISTENER.redirect_sk_lookup(ctx, key(0), 0).is_ok()
            || LISTENER.redirect_sk_lookup(ctx, key(1), 0).is_ok()
    } else {
        LISTENER.redirect_sk_lookup(ctx, key(1), 0).is_ok()
    };
    if !assigned {
        return None;
    }
    maps::count(netns, counter::INBOUND_ASSIGNED, 1);
    debug!(ctx, "inbound connection to port {} captured", port);
    Some(())
}

/// Connections made inside the namespace (the proxy forwarding to the app on the pod's
/// address, the app calling itself) are never captured, as iptables' PREROUTING never
/// sees them. Such a connection's source is the local address it goes to, or loopback;
/// the arrival interface does not tell, as the kernel reports the address's device.
#[inline(always)]
fn from_this_host(ctx: &SkLookupContext, family: u32) -> bool {
    let l = ctx.lookup;
    if family == u32::from(AF_INET) {
        let (remote, local) = unsafe {
            (
                read_volatile(addr_of!((*l).remote_ip4)),
                read_volatile(addr_of!((*l).local_ip4)),
            )
        };
        remote == local || addr::is_loopback_v4(remote)
    } else {
        let remote = unsafe { addr::read_ip6(addr_of!((*l).remote_ip6)) };
        let local = unsafe { addr::read_ip6(addr_of!((*l).local_ip6)) };
        remote == local || remote == addr::LOOPBACK_V6
    }
}
