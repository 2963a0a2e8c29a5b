//! The maps, all pinned by name in the instance's pin directory so that a second `init`
//! reuses them (settings, remembered destinations and paired sockets survive a reload).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash, SockMap},
};
use interceptor_common::{counter, Settings, SockAddr, SockTuple, FLAG_ENABLED};

#[map]
pub static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// `PORT_*` bits, indexed by port number.
#[map]
pub static PORTS: Array<u8> = Array::pinned(65536, 0);

/// Outbound destination CIDRs (`-i`, `-x`); value unused, a match is what counts.
#[map]
pub static OUT_INCLUDE_V4: LpmTrie<u32, u8> = LpmTrie::pinned(1024, BPF_F_NO_PREALLOC);
#[map]
pub static OUT_EXCLUDE_V4: LpmTrie<u32, u8> = LpmTrie::pinned(1024, BPF_F_NO_PREALLOC);
#[map]
pub static OUT_INCLUDE_V6: LpmTrie<[u32; 4], u8> = LpmTrie::pinned(1024, BPF_F_NO_PREALLOC);
#[map]
pub static OUT_EXCLUDE_V6: LpmTrie<[u32; 4], u8> = LpmTrie::pinned(1024, BPF_F_NO_PREALLOC);

/// The namespace's own addresses (written by `init`): connects to them stay local, as
/// istio's `-o lo ! --uid-owner` RETURN rule keeps them.
#[map]
pub static LOCAL_V4: HashMap<u32, u8> = HashMap::pinned(256, 0);
#[map]
pub static LOCAL_V6: HashMap<[u32; 4], u8> = HashMap::pinned(256, 0);

/// Original destination of a redirected connect, by the app socket's cookie, until the
/// socket is established (its source port is unknown before).
#[map]
pub static ORIG_BY_COOKIE: LruHashMap<u64, SockAddr> = LruHashMap::pinned(65536, 0);

/// Original destination by the app socket's (local, remote) addresses: the proxy's
/// accepted socket sees the same pair reversed.
#[map]
pub static ORIG_BY_TUPLE: LruHashMap<SockTuple, SockAddr> = LruHashMap::pinned(65536, 0);

/// Established sockets whose both ends are in this namespace, by their (local, remote).
#[map]
pub static SOCKETS: SockHash<SockTuple> = SockHash::pinned(65536, 0);

/// The inbound capture listener: index 0 an IPv4 socket, 1 an IPv6 one.
#[map]
pub static LISTENER: SockMap = SockMap::pinned(2, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

/// The settings, or `None` while interception is disabled.
#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    let s = SETTINGS.get(0)?;
    if s.flags & FLAG_ENABLED == 0 {
        return None;
    }
    Some(s)
}

#[inline(always)]
pub fn count(index: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *p += n };
    }
}
