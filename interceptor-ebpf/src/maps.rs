//! The maps, all pinned by name in the instance's pin directory so that a second `init`
//! (or a restarted node agent) reuses them: settings, remembered destinations and paired
//! sockets survive a reload.
//!
//! Everything a namespace is configured with is keyed by its cookie
//! (`bpf_get_netns_cookie`), so one set of programs can serve one namespace (`init --mode
//! ebpf`) or every pod of a node (the agent's programs at the cgroup root). A namespace
//! without a `SETTINGS` entry is left alone.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuHashMap, SockHash},
};
use interceptor_common::{
    CidrV4, CidrV6, Counters, ListenerKey, NetnsPort, NetnsTuple, Settings, SockAddr,
    FLAG_ENABLED,
};

/// Most namespaces one set of programs serves (pods on a node).
const MAX_NETNS: u32 = 4096;

#[map]
pub static SETTINGS: HashMap<u64, Settings> = HashMap::pinned(MAX_NETNS, 0);

/// `PORT_*` bits by (namespace, port); ports without bits have no entry.
#[map]
pub static PORTS: HashMap<NetnsPort, u8> = HashMap::pinned(65536, BPF_F_NO_PREALLOC);

/// Outbound destination CIDRs (`-i`, `-x`) by namespace (the cookie leads the key);
/// value unused, a match is what counts.
#[map]
pub static OUT_INCLUDE_V4: LpmTrie<CidrV4, u8> = LpmTrie::pinned(16384, BPF_F_NO_PREALLOC);
#[map]
pub static OUT_EXCLUDE_V4: LpmTrie<CidrV4, u8> = LpmTrie::pinned(16384, BPF_F_NO_PREALLOC);
#[map]
pub static OUT_INCLUDE_V6: LpmTrie<CidrV6, u8> = LpmTrie::pinned(16384, BPF_F_NO_PREALLOC);
#[map]
pub static OUT_EXCLUDE_V6: LpmTrie<CidrV6, u8> = LpmTrie::pinned(16384, BPF_F_NO_PREALLOC);

/// The namespaces' own addresses (written by the loader), each with the cookie of the
/// namespace it belongs to: connects to them stay local, as istio's `-o lo ! --uid-owner`
/// RETURN rule keeps them, and sk_lookup, which cannot ask for its namespace's cookie,
/// finds it from the address a connection arrives at.
#[map]
pub static LOCAL_V4: HashMap<u32, u64> = HashMap::pinned(16384, 0);
#[map]
pub static LOCAL_V6: HashMap<[u32; 4], u64> = HashMap::pinned(16384, 0);

/// Original destination of a redirected connect, by the app socket's cookie (unique on
/// the machine), until the socket is established (its source port is unknown before).
#[map]
pub static ORIG_BY_COOKIE: LruHashMap<u64, SockAddr> = LruHashMap::pinned(65536, 0);

/// Original destination by the app socket's namespace and (local, remote) addresses: the
/// proxy's accepted socket sees the same pair reversed.
#[map]
pub static ORIG_BY_TUPLE: LruHashMap<NetnsTuple, SockAddr> = LruHashMap::pinned(65536, 0);

/// Established sockets whose both ends are in their namespace, by namespace and
/// (local, remote).
#[map]
pub static SOCKETS: SockHash<NetnsTuple> = SockHash::pinned(65536, 0);

/// Each namespace's inbound capture listener (IPv4 and IPv6 socket).
#[map]
pub static LISTENER: SockHash<ListenerKey> = SockHash::pinned(2 * MAX_NETNS, 0);

/// Counters by namespace; the loader creates a namespace's entry with its settings.
#[map]
pub static COUNTERS: PerCpuHashMap<u64, Counters> = PerCpuHashMap::pinned(MAX_NETNS, 0);

/// The settings of the namespace `cookie`, or `None` when it is not intercepted (no
/// entry, or interception disabled).
#[inline(always)]
pub fn settings(cookie: u64) -> Option<&'static Settings> {
    let s = unsafe { SETTINGS.get(&cookie) }?;
    if s.flags & FLAG_ENABLED == 0 {
        return None;
    }
    Some(s)
}

#[inline(always)]
pub fn count(cookie: u64, index: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(&cookie) {
        let i = index as usize;
        if i < interceptor_common::counter::COUNT as usize {
            // Per-CPU slot: no other CPU writes it.
            unsafe { (*c).values[i] += n };
        }
    }
}

/// The namespace an IPv4 address of a served namespace belongs to.
#[inline(always)]
pub fn netns_of_v4(addr: u32) -> Option<u64> {
    unsafe { LOCAL_V4.get(&addr) }.copied()
}

#[inline(always)]
pub fn netns_of_v6(addr: &[u32; 4]) -> Option<u64> {
    unsafe { LOCAL_V6.get(addr) }.copied()
}

#[inline(always)]
pub fn port_bits(cookie: u64, port: u16) -> u8 {
    let key = NetnsPort {
        netns_cookie: cookie,
        port,
        _pad: [0; 3],
    };
    unsafe { PORTS.get(&key) }.copied().unwrap_or(0)
}

#[inline(always)]
pub fn v4_key(cookie: u64, addr: u32) -> CidrV4 {
    let w = interceptor_common::cookie_words(cookie);
    [w[0], w[1], addr]
}

#[inline(always)]
pub fn v6_key(cookie: u64, addr: &[u32; 4]) -> CidrV6 {
    let w = interceptor_common::cookie_words(cookie);
    [w[0], w[1], addr[0], addr[1], addr[2], addr[3]]
}
