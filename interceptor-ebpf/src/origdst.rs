//! `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (and `SOL_IPV6, IP6T_SO_ORIGINAL_DST`) on the
//! proxy's accepted socket: with no NAT the kernel's own answer is an error; this program
//! replaces it with the destination the app asked for, found by the connection's addresses.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    helpers::bpf_get_netns_cookie, macros::cgroup_sockopt, programs::SockoptContext, EbpfContext,
};
use aya_log_ebpf::debug;
use interceptor_common::{counter, NetnsTuple, SockTuple, AF_INET, AF_INET6};

use crate::{
    addr,
    maps::{self, ORIG_BY_TUPLE},
};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` share the number.
const SO_ORIGINAL_DST: i32 = 80;
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;

#[cgroup_sockopt(getsockopt)]
pub fn getsockopt(ctx: SockoptContext) -> i32 {
    let _ = answer(&ctx);
    1
}

fn answer(ctx: &SockoptContext) -> Option<()> {
    let so = ctx.sockopt;
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return None;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    maps::settings(netns)?;
    let sk = unsafe { (*so).__bindgen_anon_1.sk };
    if sk.is_null() {
        return None;
    }
    let family = unsafe { read_volatile(addr_of!((*sk).family)) };
    let local_port = unsafe { read_volatile(addr_of!((*sk).src_port)) } as u16;
    let remote_port = u16::from_be(unsafe { read_volatile(addr_of!((*sk).dst_port)) });
    let proxy_side = if family == u32::from(AF_INET) {
        SockTuple {
            local: addr::v4(
                unsafe { read_volatile(addr_of!((*sk).src_ip4)) },
                local_port,
            ),
            remote: addr::v4(
                unsafe { read_volatile(addr_of!((*sk).dst_ip4)) },
                remote_port,
            ),
        }
    } else {
        SockTuple {
            local: addr::v6(
                unsafe { addr::read_ip6(addr_of!((*sk).src_ip6)) },
                local_port,
            ),
            remote: addr::v6(
                unsafe { addr::read_ip6(addr_of!((*sk).dst_ip6)) },
                remote_port,
            ),
        }
    };
    let key = NetnsTuple {
        netns_cookie: netns,
        tuple: proxy_side.reversed(),
    };
    let orig = *unsafe { ORIG_BY_TUPLE.get(key) }?;

    let start = unsafe { (*so).__bindgen_anon_2.optval } as usize;
    let end = unsafe { (*so).__bindgen_anon_3.optval_end } as usize;
    let p = start as *mut u8;
    if level == SOL_IP && orig.family == AF_INET {
        if start + SOCKADDR_IN_LEN > end {
            return None;
        }
        // struct sockaddr_in: family, port (network order), address, 8 bytes of zero.
        unsafe {
            write_volatile(p as *mut u16, AF_INET);
            write_volatile(p.add(2) as *mut u16, orig.port.to_be());
            write_volatile(p.add(4) as *mut u32, orig.addr[0]);
            write_volatile(p.add(8) as *mut u32, 0);
            write_volatile(p.add(12) as *mut u32, 0);
            write_volatile(addr_of_mut!((*so).optlen), SOCKADDR_IN_LEN as i32);
        }
    } else if level == SOL_IPV6 && orig.family == AF_INET6 {
        if start + SOCKADDR_IN6_LEN > end {
            return None;
        }
        // struct sockaddr_in6: family, port, flow info, address, scope id.
        unsafe {
            write_volatile(p as *mut u16, AF_INET6);
            write_volatile(p.add(2) as *mut u16, orig.port.to_be());
            write_volatile(p.add(4) as *mut u32, 0);
            write_volatile(p.add(8) as *mut u32, orig.addr[0]);
            write_volatile(p.add(12) as *mut u32, orig.addr[1]);
            write_volatile(p.add(16) as *mut u32, orig.addr[2]);
            write_volatile(p.add(20) as *mut u32, orig.addr[3]);
            write_volatile(p.add(24) as *mut u32, 0);
            write_volatile(addr_of_mut!((*so).optlen), SOCKADDR_IN6_LEN as i32);
        }
    } else {
        return None;
    }
    unsafe { write_volatile(addr_of_mut!((*so).retval), 0) };
    maps::count(netns, counter::ORIG_DST_ANSWERED, 1);
    debug!(
        ctx,
        "original destination {:i}:{} answered",
        u32::from_be(orig.addr[0]),
        orig.port
    );
    Some(())
}
