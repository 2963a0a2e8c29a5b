//! Finds the host interface that leads to a pod, from the node's own tables.
//!
//! The kernel's route to the pod's address names a device. CNIs that route each pod
//! (Calico, Cilium, the ptp plugin) point it at the pod's veth: that is the interface.
//! Bridge CNIs (the bridge plugin, flannel) point it at the bridge; then the pod's MAC
//! from the neighbour table and the bridge's forwarding table name the bridge port, the
//! pod's veth. A route through a gateway, or to a device that is not a veth (the node's
//! uplink), means the pod is not on this node.

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Where sysfs and procfs are (tests point these at fixtures).
#[derive(Clone, Debug)]
pub(crate) struct Roots {
    pub proc_net: PathBuf,
    pub sys_class_net: PathBuf,
}

impl Default for Roots {
    fn default() -> Roots {
        Roots {
            proc_net: PathBuf::from("/proc/net"),
            sys_class_net: PathBuf::from("/sys/class/net"),
        }
    }
}

/// The route the node would use to reach an address (main table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub dev: String,
    pub gateway: Option<IpAddr>,
    pub prefix_len: u8,
}

/// Why a pod's interface was not found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("--pod {ip}: no route to it on this node")]
    NoRoute { ip: IpAddr },
    #[error("--pod {ip}: not a pod on this node (its route goes through {gateway} on {dev})")]
    ViaGateway {
        ip: IpAddr,
        gateway: IpAddr,
        dev: String,
    },
    #[error("--pod {ip}: not a pod on this node (its route leads to {dev}, a {kind} interface, not a pod's veth)")]
    NotVeth { ip: IpAddr, dev: String, kind: Kind },
    #[error("--pod {ip}: its route leads to bridge {bridge}, but {why}; pass the pod's veth with -d instead")]
    BridgePort {
        ip: IpAddr,
        bridge: String,
        why: String,
    },
    #[error("--pod {ip}: reading {}: {source}", path.display())]
    Io {
        ip: IpAddr,
        path: PathBuf,
        source: io::Error,
    },
}

/// What an interface is, as far as finding pods goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Veth,
    Bridge,
    Loopback,
    Other,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Veth => "veth",
            Kind::Bridge => "bridge",
            Kind::Loopback => "loopback",
            Kind::Other => "non-veth",
        })
    }
}

/// The host-side end of a pod's link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    pub ip: IpAddr,
    pub interface: String,
    pub ifindex: u32,
}

/// Finds the veth on this node that leads to `ip`.
pub fn locate(ip: IpAddr) -> Result<PodLink, LocateError> {
    locate_in(ip, &Roots::default(), &driver_of)
}

/// [`locate`] over the given tables, with `driver` naming an interface's driver.
pub(crate) fn locate_in(
    ip: IpAddr,
    roots: &Roots,
    driver: &dyn Fn(&str) -> Option<String>,
) -> Result<PodLink, LocateError> {
    let read = |name: &str| {
        let path = roots.proc_net.join(name);
        fs::read_to_string(&path).map_err(|source| LocateError::Io { ip, path, source })
    };
    let route = match ip {
        IpAddr::V4(v4) => route_v4(&read("route")?, v4),
        IpAddr::V6(v6) => route_v6(&read("ipv6_route")?, v6),
    }
    .ok_or(LocateError::NoRoute { ip })?;
    if let Some(gateway) = route.gateway {
        return Err(LocateError::ViaGateway {
            ip,
            gateway,
            dev: route.dev,
        });
    }
    let dev = match kind_of(roots, &route.dev, driver) {
        Kind::Veth => route.dev,
        Kind::Bridge => bridge_port(ip, roots, &route.dev, &read)?,
        kind => {
            return Err(LocateError::NotVeth {
                ip,
                dev: route.dev,
                kind,
            })
        }
    };
    match kind_of(roots, &dev, driver) {
        Kind::Veth => {}
        kind => return Err(LocateError::NotVeth { ip, dev, kind }),
    }
    let ifindex = read_sys(roots, &dev, "ifindex")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Ok(PodLink {
        ip,
        interface: dev,
        ifindex,
    })
}

fn read_sys(roots: &Roots, dev: &str, file: &str) -> Option<String> {
    fs::read_to_string(roots.sys_class_net.join(dev).join(file)).ok()
}

fn kind_of(roots: &Roots, dev: &str, driver: &dyn Fn(&str) -> Option<String>) -> Kind {
    if dev == "lo" {
        return Kind::Loopback;
    }
    if roots.sys_class_net.join(dev).join("bridge").is_dir() {
        return Kind::Bridge;
    }
    match driver(dev).as_deref() {
        Some("veth") => Kind::Veth,
        _ => Kind::Other,
    }
}

/// Longest-prefix match over `/proc/net/route` (addresses in hex, host byte order as the
/// kernel prints them: little-endian here), lowest metric on a tie; routes not up skipped.
pub(crate) fn route_v4(table: &str, ip: Ipv4Addr) -> Option<Route> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let target = u32::from_le_bytes(ip.octets());
    let mut best: Option<(u8, u32, Route)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dev, dest, gw, flags, _, _, metric, mask, ..] = f[..] else {
            continue;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(gw), Some(flags), Some(mask)) =
            (hex(dest), hex(gw), hex(flags), hex(mask))
        else {
            continue;
        };
        let metric: u32 = metric.parse().unwrap_or(u32::MAX);
        if flags & RTF_UP == 0 || target & mask != dest & mask {
            continue;
        }
        let len = mask.count_ones() as u8;
        if best.as_ref().is_some_and(|(l, m, _)| {
            (*l, std::cmp::Reverse(*m)) >= (len, std::cmp::Reverse(metric))
        }) {
            continue;
        }
        let gateway = (flags & RTF_GATEWAY != 0 && gw != 0)
            .then(|| IpAddr::V4(Ipv4Addr::from(gw.to_le_bytes())));
        best = Some((
            len,
            metric,
            Route {
                dev: dev.to_string(),
                gateway,
                prefix_len: len,
            },
        ));
    }
    best.map(|(_, _, r)| r)
}

/// Longest-prefix match over `/proc/net/ipv6_route`: destination, its prefix length,
/// source and its length, next hop, metric, counters, flags, device; all hex.
pub(crate) fn route_v6(table: &str, ip: Ipv6Addr) -> Option<Route> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    const RTF_REJECT: u32 = 0x200;
    let target = u128::from(ip);
    let mut best: Option<(u8, u32, Route)> = None;
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dest, plen, _, _, next_hop, metric, _, _, flags, dev] = f[..] else {
            continue;
        };
        let (Ok(dest), Ok(plen), Ok(next_hop), Ok(metric), Ok(flags)) = (
            u128::from_str_radix(dest, 16),
            u8::from_str_radix(plen, 16),
            u128::from_str_radix(next_hop, 16),
            u32::from_str_radix(metric, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        if plen > 128 || flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || dev == "lo" {
            continue;
        }
        let mask = if plen == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(plen))
        };
        if target & mask != dest & mask {
            continue;
        }
        if best.as_ref().is_some_and(|(l, m, _)| {
            (*l, std::cmp::Reverse(*m)) >= (plen, std::cmp::Reverse(metric))
        }) {
            continue;
        }
        let gateway = (flags & RTF_GATEWAY != 0 && next_hop != 0)
            .then(|| IpAddr::V6(Ipv6Addr::from(next_hop)));
        best = Some((
            plen,
            metric,
            Route {
                dev: dev.to_string(),
                gateway,
                prefix_len: plen,
            },
        ));
    }
    best.map(|(_, _, r)| r)
}

/// The bridge port behind which `ip` is: its MAC from the neighbour table, the port from
/// the bridge's forwarding table (`brforward`: 16-byte `__fdb_entry` records), the port's
/// name from `brif/*/port_no`.
fn bridge_port(
    ip: IpAddr,
    roots: &Roots,
    bridge: &str,
    read: &dyn Fn(&str) -> Result<String, LocateError>,
) -> Result<String, LocateError> {
    let fail = |why: String| LocateError::BridgePort {
        ip,
        bridge: bridge.to_string(),
        why,
    };
    let IpAddr::V4(v4) = ip else {
        return Err(fail("IPv6 neighbours are not in procfs".into()));
    };
    let mac = neighbour_mac(&read("arp")?, v4, bridge)
        .ok_or_else(|| fail("the node has no neighbour entry for it (no traffic lately)".into()))?;
    let fdb_path = roots.sys_class_net.join(bridge).join("brforward");
    let fdb = fs::read(&fdb_path).map_err(|source| LocateError::Io {
        ip,
        path: fdb_path,
        source,
    })?;
    let port = fdb_port(&fdb, mac)
        .ok_or_else(|| fail("its MAC is not in the bridge's forwarding table".into()))?;
    let ports = roots.sys_class_net.join(bridge).join("brif");
    let entries = fs::read_dir(&ports).map_err(|source| LocateError::Io {
        ip,
        path: ports.clone(),
        source,
    })?;
    for e in entries.flatten() {
        let no = fs::read_to_string(e.path().join("port_no")).unwrap_or_default();
        let no = no.trim().trim_start_matches("0x");
        if u16::from_str_radix(no, 16).ok() == Some(port) {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    Err(fail(format!("no port numbered {port}")))
}

/// The MAC of `ip` on `dev` in `/proc/net/arp` (complete entries only).
pub(crate) fn neighbour_mac(table: &str, ip: Ipv4Addr, dev: &str) -> Option<[u8; 6]> {
    const ATF_COM: u32 = 0x2;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, _, flags, mac, _, d] = f[..] else {
            continue;
        };
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap_or(0);
        if d != dev || flags & ATF_COM == 0 || addr.parse::<Ipv4Addr>().ok() != Some(ip) {
            continue;
        }
        let mut out = [0u8; 6];
        let mut parts = mac.split(':');
        for b in &mut out {
            *b = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        return Some(out);
    }
    None
}

/// The port of `mac` in a `brforward` dump (`struct __fdb_entry`: mac[6], port_no,
/// is_local, ageing timer u32, port_hi, padding).
pub(crate) fn fdb_port(fdb: &[u8], mac: [u8; 6]) -> Option<u16> {
    fdb.chunks_exact(16)
        .find(|e| e[..6] == mac && e[7] == 0)
        .map(|e| u16::from(e[6]) | (u16::from(e[12]) << 8))
}

/// The driver of interface `dev` (`veth`, `bridge`, `e1000e`…), by the ethtool ioctl
/// that `ethtool -i` uses; None when it cannot be asked.
pub(crate) fn driver_of(dev: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: both are plain C structs of integers and arrays; all zeroes is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket only to issue the ioctl; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL reads the name from `req` and writes at most a DrvInfo through
    // its data pointer, which points at `info`, alive across the call.
    let r = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if r < 0 {
        return None;
    }
    let end = info
        .driver
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Whether the network namespace at `netns` (a path such as `/var/run/netns/cni-…`) has
/// address `ip` on one of its interfaces. Entered on a thread of its own, which ends
/// there: the caller's namespace is never changed. Needs CAP_SYS_ADMIN.
pub fn netns_has_ip(netns: &Path, ip: IpAddr) -> io::Result<bool> {
    let file = fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<bool> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
            Ok(addrs.filter_map(|a| a.address).any(|a| {
                a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())) == Some(ip)
                    || a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())) == Some(ip)
            }))
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
cali1234\t05007B0A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
cni0\t00017B0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
flannel.1\t00027B0A\t00027B0A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0
down0\t00037B0A\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn ipv4_routes_by_longest_prefix() {
        let r = |ip: &str| route_v4(ROUTE, ip.parse().unwrap());
        let host = r("10.123.0.5").unwrap();
        assert_eq!(
            (host.dev.as_str(), host.gateway, host.prefix_len),
            ("cali1234", None, 32)
        );
        assert_eq!(r("10.123.1.9").unwrap().dev, "cni0");
        let remote = r("10.123.2.7").unwrap();
        assert_eq!(remote.gateway, Some("10.123.2.0".parse().unwrap()));
        let default = r("8.8.8.8").unwrap();
        assert_eq!(
            (default.dev.as_str(), default.gateway),
            ("eth0", Some("192.168.2.1".parse().unwrap()))
        );
        assert_eq!(
            r("10.123.3.1").unwrap().dev,
            "eth0",
            "a route that is not up is skipped"
        );
        assert_eq!(route_v4("Iface\n", "10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn ipv6_routes_by_longest_prefix() {
        let table = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0
fd000000000000000000000000000105 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 00000001 vethab
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001 lo
";
        let r = |ip: &str| route_v6(table, ip.parse().unwrap());
        assert_eq!(r("fd00::105").unwrap().dev, "vethab");
        assert_eq!(
            r("fd00::9").map(|r| (r.dev, r.gateway)),
            Some(("eth0".into(), None))
        );
        assert_eq!(
            r("2001:db8::1").unwrap().gateway,
            Some("fe80::1".parse().unwrap())
        );
    }

    /// A fake sysfs and procfs in a temporary directory.
    struct Fake {
        roots: Roots,
        dir: PathBuf,
    }

    impl Fake {
        fn new(route: &str) -> Fake {
            let dir =
                std::env::temp_dir().join(format!("locate-{}-{}", std::process::id(), next()));
            let roots = Roots {
                proc_net: dir.join("proc"),
                sys_class_net: dir.join("sys"),
            };
            fs::create_dir_all(&roots.proc_net).unwrap();
            fs::create_dir_all(&roots.sys_class_net).unwrap();
            fs::write(roots.proc_net.join("route"), route).unwrap();
            Fake { roots, dir }
        }

        fn iface(&self, name: &str, ifindex: u32) {
            let d = self.roots.sys_class_net.join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("ifindex"), format!("{ifindex}\n")).unwrap();
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn next() -> u32 {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn drivers(dev: &str) -> Option<String> {
        Some(
            if dev.starts_with("cali") || dev.starts_with("veth") {
                "veth"
            } else {
                "e1000e"
            }
            .into(),
        )
    }

    #[test]
    fn a_routed_pod_is_behind_its_veth_and_others_are_not_here() {
        let f = Fake::new(ROUTE);
        f.iface("cali1234", 7);
        f.iface("eth0", 2);
        let link = locate_in("10.123.0.5".parse().unwrap(), &f.roots, &drivers).unwrap();
        assert_eq!(
            link,
            PodLink {
                ip: "10.123.0.5".parse().unwrap(),
                interface: "cali1234".into(),
                ifindex: 7
            }
        );
        let e = locate_in("10.123.2.7".parse().unwrap(), &f.roots, &drivers).unwrap_err();
        assert_eq!(e.to_string(), "--pod 10.123.2.7: not a pod on this node (its route goes through 10.123.2.0 on flannel.1)");
        let e = locate_in("192.168.2.40".parse().unwrap(), &f.roots, &drivers).unwrap_err();
        assert_eq!(e.to_string(), "--pod 192.168.2.40: not a pod on this node (its route leads to eth0, a non-veth interface, not a pod's veth)");
        let e = locate_in("fd00::1".parse().unwrap(), &f.roots, &drivers).unwrap_err();
        assert!(matches!(e, LocateError::Io { .. }), "{e}");
    }

    #[test]
    fn a_bridged_pod_is_found_by_its_mac_in_the_forwarding_table() {
        let f = Fake::new(ROUTE);
        let br = f.roots.sys_class_net.join("cni0");
        fs::create_dir_all(br.join("bridge")).unwrap();
        for (port, no) in [("veth11", "0x1"), ("veth22", "0x2")] {
            fs::create_dir_all(br.join("brif").join(port)).unwrap();
            fs::write(
                br.join("brif").join(port).join("port_no"),
                format!("{no}\n"),
            )
            .unwrap();
            f.iface(port, 10 + no.len() as u32);
        }
        let mut fdb = Vec::new();
        for (mac, port, local) in [
            ([2u8, 0, 0, 0, 0, 9], 1u8, 1u8),
            ([0x0a, 0x58, 0x0a, 0x7b, 1, 9], 2, 0),
        ] {
            fdb.extend_from_slice(&mac);
            fdb.extend_from_slice(&[port, local, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        fs::write(br.join("brforward"), &fdb).unwrap();
        let arp = "IP address       HW type     Flags       HW address            Mask     Device
10.123.1.9       0x1         0x2         0a:58:0a:7b:01:09     *        cni0
10.123.1.10      0x1         0x0         00:00:00:00:00:00     *        cni0
";
        fs::write(f.roots.proc_net.join("arp"), arp).unwrap();
        let link = locate_in("10.123.1.9".parse().unwrap(), &f.roots, &drivers).unwrap();
        assert_eq!(link.interface, "veth22");
        let e = locate_in("10.123.1.10".parse().unwrap(), &f.roots, &drivers).unwrap_err();
        assert!(
            e.to_string()
                .contains("bridge cni0, but the node has no neighbour entry"),
            "{e}"
        );
    }

    #[test]
    fn the_driver_of_loopback_is_not_veth() {
        assert_ne!(driver_of("lo").as_deref(), Some("veth"));
        assert_eq!(driver_of("no-such-if-xyz"), None);
        assert_eq!(driver_of(&"x".repeat(40)), None);
    }
}
