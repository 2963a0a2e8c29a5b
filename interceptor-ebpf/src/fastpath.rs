//! sockops: when a TCP socket of the pod becomes established, the original destination
//! remembered by cookie moves to a map keyed by the connection's addresses (the proxy's
//! accepted socket knows those, not the app's cookie), and sockets whose both ends are in
//! this namespace join the `SOCKETS` sockhash. When a socket starts listening on the
//! inbound capture port it becomes the sk_lookup target.
//!
//! sk_msg: data sent on a socket of `SOCKETS` goes straight to the receive queue of its
//! peer when the peer is there too, skipping the TCP/IP stack on loopback. A namespace
//! whose settings have `FLAG_NO_SOCKET_FAST_PATH` keeps its sockets out of `SOCKETS`
//! (everything else sockops does for it stays: the original destination, the listener).

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::{
        sk_action::SK_PASS, BPF_ANY, BPF_F_INGRESS, BPF_NOEXIST,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use aya_log_ebpf::debug;
use interceptor_common::{
    counter, ListenerKey, NetnsTuple, SockTuple, AF_INET, FLAG_NO_SOCKET_FAST_PATH,
};

use crate::{
    addr,
    maps::{self, LISTENER, ORIG_BY_COOKIE, ORIG_BY_TUPLE, SOCKETS},
};

#[sock_ops]
pub fn track_sockets(ctx: SockOpsContext) -> u32 {
    let _ = on_sock_op(&ctx);
    1
}

fn on_sock_op(ctx: &SockOpsContext) -> Option<()> {
    // Only three of the callbacks every TCP socket of the cgroup makes (about five each,
    // no per-packet one: no BPF_SOCK_OPS_*_CB_FLAG is ever set) concern us.
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_TCP_LISTEN_CB
    {
        return None;
    }
    let ops = ctx.ops;
    let family = ctx.family();
    let local_port = ctx.local_port() as u16;

    if op == BPF_SOCK_OPS_TCP_LISTEN_CB {
        // SAFETY: the helper only reads the socket the context points at.
        let netns = unsafe { bpf_get_netns_cookie(ops.cast()) };
        let s = maps::settings(netns)?;
        if local_port != s.inbound_port {
            return None;
        }
        let mut key = ListenerKey {
            netns_cookie: netns,
            index: if family == u32::from(AF_INET) { 0 } else { 1 },
            _pad: 0,
        };
        // SAFETY: `ops` is the kernel's context for this listening socket, which is what
        // bpf_sock_hash_update takes from sockops.
        LISTENER
            .update(&mut key, unsafe { &mut *ops }, u64::from(BPF_ANY))
            .ok()?;
        debug!(
            ctx,
            "inbound capture listener on port {} recorded", local_port
        );
        return Some(());
    }

    // remote_port holds the network-order port in its upper half.
    let remote_port = u32::from_be(ctx.remote_port()) as u16;
    // SAFETY (read_ip6): local_ip6 and remote_ip6 are four readable context words.
    let tuple = if family == u32::from(AF_INET) {
        SockTuple {
            local: addr::v4(ctx.local_ip4(), local_port),
            remote: addr::v4(ctx.remote_ip4(), remote_port),
        }
    } else {
        SockTuple {
            local: addr::v6(
                unsafe { addr::read_ip6(addr_of!((*ops).local_ip6)) },
                local_port,
            ),
            remote: addr::v6(
                unsafe { addr::read_ip6(addr_of!((*ops).remote_ip6)) },
                remote_port,
            ),
        }
    };

    // Both ends in this namespace (loopback, or the pod's own address): the sockets the
    // fast path pairs.
    let local_pair =
        tuple.local.addr == tuple.remote.addr && tuple.local.family == tuple.remote.family;
    // A redirected connect goes to the proxy on loopback (whatever source the app bound).
    let redirected = op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && addr::is_loopback(&tuple.remote);
    // Anything else (the proxy's connects upstream, the server side of connections from
    // outside, and in node mode every other socket of the node) is none of ours: done
    // before the map lookups.
    if !local_pair && !redirected {
        return None;
    }
    // SAFETY: the helper only reads the socket the context points at.
    let netns = unsafe { bpf_get_netns_cookie(ops.cast()) };
    let fast_path = maps::settings(netns)?.flags & FLAG_NO_SOCKET_FAST_PATH == 0;

    if redirected {
        // SAFETY: as above.
        let cookie = unsafe { bpf_get_socket_cookie(ops.cast()) };
        // SAFETY: the value is copied out at once; an LRU entry may go at any time after.
        if let Some(orig) = unsafe { ORIG_BY_COOKIE.get(cookie) } {
            let orig = *orig;
            let key = NetnsTuple {
                netns_cookie: netns,
                tuple,
            };
            if ORIG_BY_TUPLE.insert(key, orig, 0).is_ok() {
                let _ = ORIG_BY_COOKIE.remove(cookie);
            }
        }
    }

    // Without the fast path (`--no-socket-fast-path`) the socket stays out of the
    // sockhash: its data takes the TCP/IP stack, where splice(2) finds it.
    if !fast_path {
        return Some(());
    }
    let mut key = NetnsTuple {
        netns_cookie: netns,
        tuple,
    };
    // SAFETY: `ops` is the kernel's context for this established socket, which is what
    // bpf_sock_hash_update takes from sockops.
    if local_pair
        && SOCKETS
            .update(&mut key, unsafe { &mut *ops }, u64::from(BPF_NOEXIST))
            .is_ok()
    {
        maps::count(netns, counter::SOCKETS_PAIRED, 1);
    }
    Some(())
}

#[sk_msg]
pub fn skmsg(ctx: SkMsgContext) -> u32 {
    let msg = ctx.msg;
    let family = unsafe { read_volatile(addr_of!((*msg).family)) };
    let local_port = unsafe { read_volatile(addr_of!((*msg).local_port)) } as u16;
    let remote_port = u32::from_be(unsafe { read_volatile(addr_of!((*msg).remote_port)) }) as u16;
    let peer = if family == u32::from(AF_INET) {
        SockTuple {
            local: addr::v4(
                unsafe { read_volatile(addr_of!((*msg).remote_ip4)) },
                remote_port,
            ),
            remote: addr::v4(
                unsafe { read_volatile(addr_of!((*msg).local_ip4)) },
                local_port,
            ),
        }
    } else {
        SockTuple {
            local: addr::v6(
                unsafe { addr::read_ip6(addr_of!((*msg).remote_ip6)) },
                remote_port,
            ),
            remote: addr::v6(
                unsafe { addr::read_ip6(addr_of!((*msg).local_ip6)) },
                local_port,
            ),
        }
    };
    let size = u64::from(ctx.size());
    let netns = unsafe { bpf_get_netns_cookie(ctx.msg.cast()) };
    let key = NetnsTuple {
        netns_cookie: netns,
        tuple: peer,
    };
    // When the peer is not in the map the redirect fails and the data takes the normal path.
    if SOCKETS.redirect_msg(&ctx, key, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        maps::count(netns, counter::SKMSG_BYTES, size);
    }
    SK_PASS
}
