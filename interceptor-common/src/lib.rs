//! Types shared between the eBPF programs (`interceptor-ebpf`) and the userspace loader.
//! `#![no_std]` so the eBPF side can use it; every type is `#[repr(C)]` so both sides agree
//! on layout. Map and program names live here too, so the loader cannot drift from the ELF.
#![no_std]

/// Address family numbers as the kernel spells them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Interception settings of one network namespace: the `SETTINGS` hash map's value, keyed
/// by the namespace's cookie (one entry for an `init --mode ebpf` instance, one per pod for
/// the node agent's). The loader writes it; the programs look up the cookie of the socket's
/// namespace on every call (no entry: the socket is left alone), so a change takes effect
/// without reloading.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Network namespace the programs act in (`SO_NETNS_COOKIE` of a socket made there).
    /// Sockets of the cgroup that live in another namespace are left alone.
    pub netns_cookie: u64,
    /// Outbound listener of the proxy (istio `-p`, 15001).
    pub proxy_port: u16,
    /// Inbound capture listener of the proxy (istio `-z`, 15006).
    pub inbound_port: u16,
    /// Local DNS listener of the proxy (15053); used when `flags` has [`FLAG_REDIRECT_DNS`].
    pub dns_port: u16,
    /// Number of valid entries in `proxy_uids` / `proxy_gids`.
    pub n_uids: u16,
    pub n_gids: u16,
    pub _pad: [u16; 3],
    /// Processes running as any of these uids or gids are the proxy: never redirected.
    pub proxy_uids: [u32; MAX_IDS],
    pub proxy_gids: [u32; MAX_IDS],
    /// `FLAG_*` bits.
    pub flags: u32,
    pub _pad2: u32,
}

/// Most uids (and most gids) `-u`/`-g` may name.
pub const MAX_IDS: usize = 8;

/// Redirect outbound connects to every destination not excluded (`-i '*'`).
pub const FLAG_OUTBOUND_ALL_CIDRS: u32 = 1 << 0;
/// Capture every inbound port not excluded (`-b '*'`).
pub const FLAG_INBOUND_ALL_PORTS: u32 = 1 << 1;
/// Send DNS (port 53, TCP and UDP) to `dns_port` on loopback.
pub const FLAG_REDIRECT_DNS: u32 = 1 << 2;
/// Intercept at all; cleared while settings are being rewritten so a half-written set
/// never redirects anything.
pub const FLAG_ENABLED: u32 = 1 << 3;
/// No socket fast path (`--no-socket-fast-path`): sockops leaves this namespace's sockets
/// out of the `SOCKETS` sockhash, so sk_msg never passes their data socket to socket and
/// it takes the TCP/IP stack on loopback (which a proxy reading with splice(2) needs).
/// Redirection and the original destination are unchanged. A bit that says "off", so an
/// entry without it (zero, or written before the bit existed) keeps the fast path.
pub const FLAG_NO_SOCKET_FAST_PATH: u32 = 1 << 4;

/// Bits of the per-port entry in the `PORTS` array map (indexed by port number).
pub const PORT_OUT_INCLUDE: u8 = 1 << 0; // `-q`
pub const PORT_OUT_EXCLUDE: u8 = 1 << 1; // `-o`
pub const PORT_IN_INCLUDE: u8 = 1 << 2; // `-b`
pub const PORT_IN_EXCLUDE: u8 = 1 << 3; // `-d`

/// A socket address as the programs store it: IPv4 in `addr[0]` (network order, rest zero),
/// IPv6 in all four words (network order). `port` is in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockAddr {
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u16,
}

/// One end-to-end view of a TCP connection, from the side of the socket that owns it:
/// key of the sockhash (fast path) and of the original-destination map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockTuple {
    pub local: SockAddr,
    pub remote: SockAddr,
}

impl SockTuple {
    /// The same connection seen from its other end.
    pub const fn reversed(&self) -> SockTuple {
        SockTuple {
            local: self.remote,
            remote: self.local,
        }
    }
}

/// Key of the `PORTS` map: one port of one network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NetnsPort {
    pub netns_cookie: u64,
    pub port: u16,
    pub _pad: [u16; 3],
}

/// A connection in one network namespace: key of `ORIG_BY_TUPLE` and `SOCKETS`. The
/// cookie keeps two namespaces' identical loopback tuples apart when one set of programs
/// serves many namespaces (the node mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NetnsTuple {
    pub netns_cookie: u64,
    pub tuple: SockTuple,
}

/// Key of the `LISTENER` sockhash: the inbound capture listener of one namespace,
/// `index` 0 for its IPv4 socket, 1 for its IPv6 one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ListenerKey {
    pub netns_cookie: u64,
    pub index: u32,
    pub _pad: u32,
}

/// The data of an IPv4 CIDR key in the outbound tries: the namespace's cookie (two
/// words, [`cookie_words`]) then the address, so the prefix length is 64 + the CIDR's.
pub type CidrV4 = [u32; 3];
/// The same for IPv6: cookie words, then the four address words.
pub type CidrV6 = [u32; 6];
/// Bits of a CIDR key taken by the cookie.
pub const COOKIE_PREFIX_BITS: u32 = 64;

/// A cookie as the two words that start a CIDR key (its bytes in memory order, as both
/// sides write them).
#[inline(always)]
pub const fn cookie_words(cookie: u64) -> [u32; 2] {
    [cookie as u32, (cookie >> 32) as u32]
}

/// The value of the per-CPU `COUNTERS` hash, one per network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub values: [u64; counter::COUNT as usize],
}

/// Indices of the per-namespace `COUNTERS` values.
pub mod counter {
    /// Outbound TCP connects sent to the proxy.
    pub const CONNECT_REDIRECTED: u32 = 0;
    /// `SO_ORIGINAL_DST` answered from the map.
    pub const ORIG_DST_ANSWERED: u32 = 1;
    /// Inbound connections handed to the inbound capture listener.
    pub const INBOUND_ASSIGNED: u32 = 2;
    /// Sockets added to the fast-path sockhash.
    pub const SOCKETS_PAIRED: u32 = 3;
    /// Bytes the sk_msg program passed socket to socket.
    pub const SKMSG_BYTES: u32 = 4;
    /// DNS connects/sendmsgs sent to the proxy's DNS port.
    pub const DNS_REDIRECTED: u32 = 5;
    pub const COUNT: u32 = 6;

    /// Names shown by `interceptor status`, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "connects_redirected",
        "orig_dst_answered",
        "inbound_assigned",
        "sockets_paired",
        "skmsg_bytes",
        "dns_redirected",
    ];
}

/// Names of the maps, as they appear in the ELF and under the pin directory.
pub mod map {
    pub const SETTINGS: &str = "SETTINGS";
    pub const PORTS: &str = "PORTS";
    pub const OUT_INCLUDE_V4: &str = "OUT_INCLUDE_V4";
    pub const OUT_EXCLUDE_V4: &str = "OUT_EXCLUDE_V4";
    pub const OUT_INCLUDE_V6: &str = "OUT_INCLUDE_V6";
    pub const OUT_EXCLUDE_V6: &str = "OUT_EXCLUDE_V6";
    pub const LOCAL_V4: &str = "LOCAL_V4";
    pub const LOCAL_V6: &str = "LOCAL_V6";
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    pub const ORIG_BY_TUPLE: &str = "ORIG_BY_TUPLE";
    pub const SOCKETS: &str = "SOCKETS";
    pub const LISTENER: &str = "LISTENER";
    pub const COUNTERS: &str = "COUNTERS";
}

/// Names of the programs (their function names in `interceptor-ebpf`).
pub mod program {
    pub const CONNECT4: &str = "connect4";
    pub const CONNECT6: &str = "connect6";
    pub const SENDMSG4: &str = "sendmsg4";
    pub const RECVMSG4: &str = "recvmsg4";
    pub const GETSOCKOPT: &str = "getsockopt";
    pub const SOCKOPS: &str = "track_sockets";
    pub const SKMSG: &str = "skmsg";
    pub const SKLOOKUP: &str = "sklookup";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no pointers; padding is explicit fields.
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::SockAddr {}
    unsafe impl aya::Pod for super::SockTuple {}
    unsafe impl aya::Pod for super::NetnsPort {}
    unsafe impl aya::Pod for super::NetnsTuple {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::Counters {}
}
