//! eBPF programs of interceptor's eBPF mode. The userspace loader (`interceptor::ebpf`)
//! loads them from the object this crate builds, attaches them to one pod cgroup and one
//! network namespace, and pins them so they outlive it.
//!
//! - `outbound`: cgroup connect4/connect6 send the app's TCP connects to the proxy's
//!   outbound port, remembering the original destination by socket cookie; sendmsg4 and
//!   recvmsg4 do the same for DNS over UDP when `--redirect-dns` is on.
//! - `fastpath`: sockops moves that destination to a map keyed by the connection's
//!   addresses once the socket is established, records local sockets in a sockhash, and
//!   records the inbound capture listener; sk_msg passes data socket to socket.
//! - `origdst`: cgroup getsockopt answers `SO_ORIGINAL_DST` on the proxy's accepted socket.
//! - `inbound`: sk_lookup hands inbound connections to the inbound capture listener.
#![no_std]
#![no_main]

mod addr;
mod fastpath;
mod inbound;
mod maps;
mod origdst;
mod outbound;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; no program panics.
    loop {}
}

/// None of the helpers used is GPL-only, so the object carries the project's own licence.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
