//! What the eBPF programs intercept, in the terms of istio-iptables' flags, and its
//! encoding into the programs' maps (the `SETTINGS` entry, the `PORTS` bits, the CIDR
//! tries).

use std::net::IpAddr;

use anyhow::{bail, Result};
use interceptor_common as common;

use crate::config::{Config, InboundPorts};
use ipnet::IpNet;

/// Ports given as a list, or `*` for all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSet {
    All,
    List(Vec<u16>),
}

/// CIDRs given as a list, or `*` for all destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidrSet {
    All,
    List(Vec<IpNet>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `-p`: the proxy's outbound listener.
    pub proxy_port: u16,
    /// `-z`: the proxy's inbound capture listener.
    pub inbound_capture_port: u16,
    /// `-e`: the HBONE tunnel port, never captured inbound (istio's first ISTIO_INBOUND rule).
    pub inbound_tunnel_port: u16,
    /// The proxy's DNS listener, used with `redirect_dns`.
    pub dns_port: u16,
    /// `-u`, `-g`: the proxy's identities; their connects are never redirected.
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    /// `-b`: inbound ports captured.
    pub inbound_ports: PortSet,
    /// `-d`: inbound ports left alone when every port is captured (`-b '*'`); as in
    /// istio-iptables, a `-b` list ignores it.
    pub inbound_exclude_ports: Vec<u16>,
    /// `-i`: outbound destinations redirected.
    pub outbound_cidrs: CidrSet,
    /// `-x`: outbound destinations left alone.
    pub outbound_exclude_cidrs: Vec<IpNet>,
    /// `-q`: outbound ports redirected whatever the destination.
    pub outbound_ports: Vec<u16>,
    /// `-o`: outbound ports left alone.
    pub outbound_exclude_ports: Vec<u16>,
    /// `--redirect-dns`: DNS (port 53) goes to `dns_port`.
    pub redirect_dns: bool,
    /// The socket fast path: sockops pairs sockets whose both ends are in the namespace
    /// and sk_msg passes their data socket to socket. Off (`--no-socket-fast-path`) for a
    /// proxy that reads with splice(2), which does not see data passed that way.
    pub socket_fast_path: bool,
}

impl Default for Settings {
    /// The values of `init` with no flags ([`crate::config::IstioFlags::default`]).
    fn default() -> Settings {
        Settings {
            proxy_port: 15001,
            inbound_capture_port: 15006,
            inbound_tunnel_port: 15008,
            dns_port: 15053,
            proxy_uids: vec![1337],
            proxy_gids: vec![1337],
            inbound_ports: PortSet::All,
            inbound_exclude_ports: vec![22, 15090, 15021, 15020],
            outbound_cidrs: CidrSet::All,
            outbound_exclude_cidrs: Vec::new(),
            outbound_ports: Vec::new(),
            outbound_exclude_ports: Vec::new(),
            redirect_dns: false,
            socket_fast_path: true,
        }
    }
}

impl Settings {
    /// The eBPF settings a checked istio-iptables configuration asks for. The flags the
    /// programs cannot honour are refused before, by name ([`super::flags::check`]); what
    /// is left here is what only the checked configuration shows (the owner-group
    /// environment, port ranges the port map cannot hold).
    pub fn from_config(cfg: &Config) -> Result<Settings> {
        if !cfg.owner_groups.values.is_empty() {
            bail!(
                "ISTIO_OUTBOUND_OWNER_GROUPS / ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE are not supported in eBPF mode; unset them, or use --mode iptables"
            );
        }
        let ports = |flag: &str, v: &[String]| parse_ports(flag, &v.join(","));
        let s = Settings {
            proxy_port: cfg.proxy_port,
            inbound_capture_port: cfg.inbound_capture_port,
            inbound_tunnel_port: cfg.inbound_tunnel_port,
            proxy_uids: parse_ids("-u/--proxy-uid", &cfg.proxy_uids.join(","))?,
            proxy_gids: parse_ids("-g/--proxy-gid", &cfg.proxy_gids.join(","))?,
            inbound_ports: match &cfg.inbound_ports {
                InboundPorts::All => PortSet::All,
                InboundPorts::None => PortSet::List(Vec::new()),
                InboundPorts::Only(list) => PortSet::List(ports("-b/--istio-inbound-ports", list)?),
            },
            inbound_exclude_ports: ports(
                "-d/--istio-local-exclude-ports",
                &cfg.inbound_ports_exclude,
            )?,
            outbound_cidrs: if cfg.outbound_include.wildcard {
                CidrSet::All
            } else {
                CidrSet::List(
                    cfg.outbound_include
                        .v4
                        .iter()
                        .chain(&cfg.outbound_include.v6)
                        .copied()
                        .collect(),
                )
            },
            outbound_exclude_cidrs: cfg
                .outbound_exclude
                .v4
                .iter()
                .chain(&cfg.outbound_exclude.v6)
                .copied()
                .collect(),
            outbound_ports: ports("-q/--istio-outbound-ports", &cfg.outbound_ports_include)?,
            outbound_exclude_ports: ports(
                "-o/--istio-local-outbound-ports-exclude",
                &cfg.outbound_ports_exclude,
            )?,
            redirect_dns: cfg.redirect_dns,
            socket_fast_path: cfg.socket_fast_path,
            ..Settings::default()
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks what the maps cannot hold.
    pub fn validate(&self) -> Result<()> {
        if self.proxy_uids.len() > common::MAX_IDS {
            bail!(
                "-u/--proxy-uid: at most {} uids, got {}",
                common::MAX_IDS,
                self.proxy_uids.len()
            );
        }
        if self.proxy_gids.len() > common::MAX_IDS {
            bail!(
                "-g/--proxy-gid: at most {} gids, got {}",
                common::MAX_IDS,
                self.proxy_gids.len()
            );
        }
        for (flag, port) in [
            ("-p/--envoy-port", self.proxy_port),
            ("-z/--inbound-capture-port", self.inbound_capture_port),
            ("-e/--inbound-tunnel-port", self.inbound_tunnel_port),
            ("DNS port", self.dns_port),
        ] {
            if port == 0 {
                bail!("{flag}: port 0 is not a listener port");
            }
        }
        Ok(())
    }

    /// Inbound ports never captured, as istio-iptables' ISTIO_INBOUND chain has them: the
    /// tunnel port always, `-d` only with `-b '*'`. Nothing else: ssh (22) is spared only
    /// when `-d` lists it, as `init`'s default `-d` does.
    pub fn inbound_excluded(&self) -> Vec<u16> {
        let mut ports = vec![self.inbound_tunnel_port];
        if self.inbound_ports == PortSet::All {
            ports.extend(&self.inbound_exclude_ports);
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The `SETTINGS` map entry (with `FLAG_ENABLED` set) for the namespace `netns_cookie`.
    pub fn to_map_entry(&self, netns_cookie: u64) -> common::Settings {
        let mut uids = [0u32; common::MAX_IDS];
        let mut gids = [0u32; common::MAX_IDS];
        uids[..self.proxy_uids.len()].copy_from_slice(&self.proxy_uids);
        gids[..self.proxy_gids.len()].copy_from_slice(&self.proxy_gids);
        let mut flags = common::FLAG_ENABLED;
        if self.outbound_cidrs == CidrSet::All {
            flags |= common::FLAG_OUTBOUND_ALL_CIDRS;
        }
        if self.inbound_ports == PortSet::All {
            flags |= common::FLAG_INBOUND_ALL_PORTS;
        }
        if self.redirect_dns {
            flags |= common::FLAG_REDIRECT_DNS;
        }
        if !self.socket_fast_path {
            flags |= common::FLAG_NO_SOCKET_FAST_PATH;
        }
        common::Settings {
            netns_cookie,
            proxy_port: self.proxy_port,
            inbound_port: self.inbound_capture_port,
            dns_port: self.dns_port,
            n_uids: self.proxy_uids.len() as u16,
            n_gids: self.proxy_gids.len() as u16,
            _pad: [0; 3],
            proxy_uids: uids,
            proxy_gids: gids,
            flags,
            _pad2: 0,
        }
    }

    /// `(port, PORT_* bits)` for every port with any bit set.
    pub fn port_bits(&self) -> Vec<(u16, u8)> {
        let mut bits = vec![0u8; 65536];
        for &p in &self.outbound_ports {
            bits[usize::from(p)] |= common::PORT_OUT_INCLUDE;
        }
        for &p in &self.outbound_exclude_ports {
            bits[usize::from(p)] |= common::PORT_OUT_EXCLUDE;
        }
        if let PortSet::List(ports) = &self.inbound_ports {
            for &p in ports {
                bits[usize::from(p)] |= common::PORT_IN_INCLUDE;
            }
        }
        for p in self.inbound_excluded() {
            bits[usize::from(p)] |= common::PORT_IN_EXCLUDE;
        }
        bits.iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .map(|(p, b)| (p as u16, *b))
            .collect()
    }

    /// Included CIDRs (empty for `*`, which is a flag).
    pub fn include_cidrs(&self) -> &[IpNet] {
        match &self.outbound_cidrs {
            CidrSet::All => &[],
            CidrSet::List(c) => c,
        }
    }
}

/// An LPM-trie key for a CIDR: prefix length and the address words in network order.
pub fn v4_key(net: &IpNet) -> Option<(u32, u32)> {
    match net.network() {
        IpAddr::V4(a) => Some((u32::from(net.prefix_len()), u32::from_ne_bytes(a.octets()))),
        IpAddr::V6(_) => None,
    }
}

pub fn v6_key(net: &IpNet) -> Option<(u32, [u32; 4])> {
    match net.network() {
        IpAddr::V6(a) => {
            let o = a.octets();
            let mut w = [0u32; 4];
            for (i, word) in w.iter_mut().enumerate() {
                *word = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            }
            Some((u32::from(net.prefix_len()), w))
        }
        IpAddr::V4(_) => None,
    }
}

/// Parses a comma-separated port list (`-b`, `-d`, `-q`, `-o`); empty means none.
pub fn parse_ports(flag: &str, value: &str) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<u16>() {
            Ok(p) if p != 0 => ports.push(p),
            _ => bail!("{flag}: `{item}` is not a port (1-65535) in `{value}`"),
        }
    }
    Ok(ports)
}

/// Parses a comma-separated uid or gid list (`-u`, `-g`).
pub fn parse_ids(flag: &str, value: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<u32>() {
            Ok(id) => ids.push(id),
            Err(_) => bail!("{flag}: `{item}` is not a numeric id in `{value}`"),
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{config_from_flags, IstioEnv};

    /// `init`'s flags through the shared configuration into eBPF settings.
    fn from_flags(argv: &[&str]) -> Result<Settings> {
        Settings::from_config(&config_from_flags(argv, &IstioEnv::default())?)
    }

    #[test]
    fn istio_flags_map_to_settings() {
        let s = from_flags(&[
            "-p",
            "15101",
            "-z",
            "15106",
            "-u",
            "1337",
            "-g",
            "1337,1338",
            "-b",
            "8080,9090",
            "-d",
            "15020",
            "-i",
            "10.96.0.0/12",
            "-x",
            "10.96.0.1/32",
            "-q",
            "3306",
            "-o",
            "6379",
            "--redirect-dns",
        ])
        .unwrap();
        assert_eq!((s.proxy_port, s.inbound_capture_port), (15101, 15106));
        assert_eq!(s.proxy_gids, vec![1337, 1338]);
        assert_eq!(s.inbound_ports, PortSet::List(vec![8080, 9090]));
        assert_eq!(s.inbound_exclude_ports, vec![15020]);
        assert_eq!(
            s.outbound_cidrs,
            CidrSet::List(vec!["10.96.0.0/12".parse().unwrap()])
        );
        assert_eq!(
            s.outbound_exclude_cidrs,
            vec!["10.96.0.1/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(s.outbound_ports, vec![3306]);
        assert_eq!(s.outbound_exclude_ports, vec![6379]);
        assert!(s.redirect_dns);
    }

    #[test]
    fn no_flags_give_the_injected_sidecars_profile() {
        let s = from_flags(&[]).unwrap();
        let d = Settings::default();
        assert_eq!(
            (
                s.proxy_port,
                s.inbound_capture_port,
                &s.proxy_uids,
                &s.proxy_gids
            ),
            (
                d.proxy_port,
                d.inbound_capture_port,
                &d.proxy_uids,
                &d.proxy_gids
            )
        );
        assert_eq!(s.inbound_ports, PortSet::All);
        assert_eq!(s.outbound_cidrs, CidrSet::All);
        // The seed listing's ISTIO_INBOUND exceptions: 15008, then `-d` 22,15090,15021,15020.
        assert_eq!(s.inbound_excluded(), vec![22, 15008, 15020, 15021, 15090]);
        assert_eq!(s, d);
    }

    #[test]
    fn the_owner_group_environment_is_refused_by_name() {
        let env = IstioEnv {
            owner_groups: Some("1000".into()),
            ..IstioEnv::default()
        };
        let err = Settings::from_config(&config_from_flags(&[], &env).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ISTIO_OUTBOUND_OWNER_GROUPS") && err.contains("--mode iptables"),
            "{err}"
        );
    }

    #[test]
    fn port_ranges_cannot_go_into_the_port_map() {
        let err = from_flags(&["-o", "8000:8100"]).unwrap_err().to_string();
        assert!(
            err.contains("-o/--istio-local-outbound-ports-exclude") && err.contains("8000:8100"),
            "{err}"
        );
    }

    #[test]
    fn port_lists_parse_and_name_the_flag_on_error() {
        assert_eq!(
            parse_ports("-d", "15090, 15021,15020").unwrap(),
            vec![15090, 15021, 15020]
        );
        assert_eq!(parse_ports("-d", "").unwrap(), Vec::<u16>::new());
        let err = parse_ports("-o", "80,http").unwrap_err().to_string();
        assert!(err.contains("-o") && err.contains("`http`"), "{err}");
        assert!(parse_ports("-o", "70000").is_err());
        assert!(parse_ports("-o", "0").is_err());
    }

    #[test]
    fn ids_parse() {
        assert_eq!(parse_ids("-u", "1337,0").unwrap(), vec![1337, 0]);
        assert!(parse_ids("-g", "istio")
            .unwrap_err()
            .to_string()
            .contains("-g"));
    }

    #[test]
    fn inbound_exclusions_follow_istio_iptables() {
        // -b '*': the tunnel port and `-d`, nothing more (22 only when `-d` lists it).
        let s = from_flags(&["-b", "*", "-d", "15090"]).unwrap();
        assert_eq!(s.inbound_excluded(), vec![15008, 15090]);
        assert!(!s.port_bits().iter().any(|(p, _)| *p == 22));
        let s = from_flags(&["-b", "*", "-d", "22,15090"]).unwrap();
        assert_eq!(s.inbound_excluded(), vec![22, 15008, 15090]);
        assert!(s.port_bits().contains(&(22, common::PORT_IN_EXCLUDE)));
        // A `-b` list: istio-iptables writes no `-d` RETURN rules, only the tunnel's.
        let listed = from_flags(&["-b", "8080,22", "-d", "22"]).unwrap();
        assert_eq!(listed.inbound_excluded(), vec![15008]);
        let bits = listed.port_bits();
        assert!(bits.contains(&(8080, common::PORT_IN_INCLUDE)));
        assert!(bits.contains(&(22, common::PORT_IN_INCLUDE)));
        assert!(bits.contains(&(15008, common::PORT_IN_EXCLUDE)));
        // -e moves the tunnel port.
        let e = from_flags(&["-e", "15009"]).unwrap();
        assert!(e.inbound_excluded().contains(&15009) && !e.inbound_excluded().contains(&15008));
    }

    #[test]
    fn map_entry_carries_flags_and_ids() {
        let s = Settings {
            proxy_uids: vec![1337, 1338],
            redirect_dns: true,
            outbound_cidrs: CidrSet::List(vec!["10.0.0.0/8".parse().unwrap()]),
            ..Settings::default()
        };
        let e = s.to_map_entry(42);
        assert_eq!(e.netns_cookie, 42);
        assert_eq!((e.n_uids, e.proxy_uids[1]), (2, 1338));
        assert_ne!(e.flags & common::FLAG_REDIRECT_DNS, 0);
        assert_eq!(e.flags & common::FLAG_OUTBOUND_ALL_CIDRS, 0);
        assert_ne!(e.flags & common::FLAG_INBOUND_ALL_PORTS, 0);
        assert_eq!(
            v4_key(&"10.0.0.0/8".parse().unwrap()),
            Some((8, u32::from_ne_bytes([10, 0, 0, 0])))
        );
    }

    #[test]
    fn no_socket_fast_path_sets_its_bit_and_nothing_else() {
        let on = from_flags(&[]).unwrap();
        assert!(on.socket_fast_path);
        assert_eq!(
            on.to_map_entry(7).flags & common::FLAG_NO_SOCKET_FAST_PATH,
            0
        );
        let off = from_flags(&["--no-socket-fast-path"]).unwrap();
        assert!(!off.socket_fast_path);
        let e = off.to_map_entry(7);
        assert_ne!(e.flags & common::FLAG_NO_SOCKET_FAST_PATH, 0);
        // Interception itself is unchanged: enabled, same ports, same other bits.
        assert_eq!(
            e.flags & !common::FLAG_NO_SOCKET_FAST_PATH,
            on.to_map_entry(7).flags
        );
        assert_eq!(
            Settings {
                socket_fast_path: true,
                ..off.clone()
            },
            on
        );
        assert!(
            from_flags(&["--no-socket-fast-path=false"])
                .unwrap()
                .socket_fast_path
        );
    }

    #[test]
    fn too_many_ids_is_an_error() {
        let s = Settings {
            proxy_uids: (0..9).collect(),
            ..Settings::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("-u"));
    }
}
