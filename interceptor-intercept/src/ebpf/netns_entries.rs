//! One network namespace's entries in the programs' maps: its `SETTINGS` value, its
//! `PORTS` bits, its CIDRs in the outbound tries, its own addresses in `LOCAL_V4/V6` and
//! its `COUNTERS`, all keyed by the namespace's cookie (see interceptor-ebpf's `maps`).
//!
//! Shared by the two ways of serving a namespace: `init --mode ebpf` writes the one
//! namespace of its instance (maps of the loaded object), the node agent's plugin writes
//! each pod's (maps reopened from the node's pins). Writing replaces what the namespace
//! had, so a second write converges; the `SETTINGS` entry, which turns interception on,
//! is written last and removed first.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use aya::maps::{lpm_trie, HashMap, LpmTrie, Map, MapData, PerCpuHashMap, PerCpuValues};
use aya::Ebpf;
use interceptor_common::{
    self as common, cookie_words, counter, map, CidrV4, CidrV6, Counters, NetnsPort,
    COOKIE_PREFIX_BITS,
};

use super::settings::{v4_key, v6_key};
use super::Settings;

/// Where the maps come from: a loaded object, or pins.
pub trait Maps {
    fn map(&mut self, name: &str) -> Result<&mut Map>;
}

impl Maps for Ebpf {
    fn map(&mut self, name: &str) -> Result<&mut Map> {
        self.map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }
}

/// Maps reopened from a pin directory, each opened on first use.
pub struct Pinned {
    dir: PathBuf,
    maps: BTreeMap<String, Map>,
}

impl Pinned {
    pub fn new(dir: &Path) -> Pinned {
        Pinned {
            dir: dir.to_path_buf(),
            maps: BTreeMap::new(),
        }
    }
}

impl Maps for Pinned {
    fn map(&mut self, name: &str) -> Result<&mut Map> {
        if !self.maps.contains_key(name) {
            let path = self.dir.join(name);
            let data = MapData::from_pin(&path)
                .map_err(|e| anyhow!("opening pinned map {}: {e}", path.display()))?;
            let m = Map::from_map_data(data)
                .map_err(|e| anyhow!("pinned map {}: {e}", path.display()))?;
            self.maps.insert(name.to_string(), m);
        }
        self.maps
            .get_mut(name)
            .ok_or_else(|| anyhow!("map {name} not opened"))
    }
}

/// A namespace's own addresses, as the programs store them (network-order words).
/// Loopback addresses are left out: the programs treat them as local anyway, and every
/// namespace has them, so they cannot say which namespace an address belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalAddrs {
    pub v4: Vec<u32>,
    pub v6: Vec<[u32; 4]>,
}

impl LocalAddrs {
    /// The addresses of the calling thread's network namespace.
    pub fn current() -> Result<LocalAddrs> {
        let addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .context("listing this namespace's addresses")?
            .filter_map(|ifa| ifa.address)
            .filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            })
            .collect();
        Ok(LocalAddrs::from_ips(&addrs))
    }

    pub fn from_ips(ips: &[IpAddr]) -> LocalAddrs {
        let mut out = LocalAddrs::default();
        for ip in ips.iter().filter(|ip| !ip.is_loopback()) {
            let net = ipnet::IpNet::from(*ip);
            if let Some((_, w)) = v4_key(&net) {
                out.v4.push(w);
            } else if let Some((_, w)) = v6_key(&net) {
                out.v6.push(w);
            }
        }
        out.v4.sort_unstable();
        out.v4.dedup();
        out.v6.sort_unstable();
        out.v6.dedup();
        out
    }
}

/// Writes (or rewrites) everything for namespace `cookie`.
pub fn write(
    maps: &mut dyn Maps,
    cookie: u64,
    settings: &Settings,
    local: &LocalAddrs,
) -> Result<()> {
    settings.validate()?;
    // Counters first: the programs only add to an entry that exists. A rewrite keeps them.
    {
        let mut c: PerCpuHashMap<&mut MapData, u64, Counters> =
            PerCpuHashMap::try_from(maps.map(map::COUNTERS)?)?;
        if c.get(&cookie, 0).is_err() {
            let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
            let zero = PerCpuValues::try_from(vec![Counters::default(); cpus])?;
            c.insert(cookie, zero, 0).context("writing COUNTERS")?;
        }
    }
    {
        let mut ports: HashMap<&mut MapData, NetnsPort, u8> =
            HashMap::try_from(maps.map(map::PORTS)?)?;
        let wanted: Vec<(NetnsPort, u8)> = settings
            .port_bits()
            .into_iter()
            .map(|(port, bits)| (port_key(cookie, port), bits))
            .collect();
        for (k, bits) in &wanted {
            ports.insert(k, bits, 0).context("writing PORTS")?;
        }
        let stale: Vec<NetnsPort> = keys_of(&ports, cookie)?
            .into_iter()
            .filter(|k| !wanted.iter().any(|(w, _)| w == k))
            .collect();
        for k in stale {
            ports.remove(&k).context("clearing PORTS")?;
        }
    }
    let v4 = |nets: &[ipnet::IpNet]| -> Vec<(u32, CidrV4)> {
        nets.iter()
            .filter_map(v4_key)
            .map(|(len, a)| (COOKIE_PREFIX_BITS + len, cidr_v4(cookie, a)))
            .collect()
    };
    let v6 = |nets: &[ipnet::IpNet]| -> Vec<(u32, CidrV6)> {
        nets.iter()
            .filter_map(v6_key)
            .map(|(len, a)| (COOKIE_PREFIX_BITS + len, cidr_v6(cookie, a)))
            .collect()
    };
    replace_trie(
        maps,
        map::OUT_EXCLUDE_V4,
        cookie,
        &v4(&settings.outbound_exclude_cidrs),
    )?;
    replace_trie(
        maps,
        map::OUT_EXCLUDE_V6,
        cookie,
        &v6(&settings.outbound_exclude_cidrs),
    )?;
    replace_trie(
        maps,
        map::OUT_INCLUDE_V4,
        cookie,
        &v4(settings.include_cidrs()),
    )?;
    replace_trie(
        maps,
        map::OUT_INCLUDE_V6,
        cookie,
        &v6(settings.include_cidrs()),
    )?;
    replace_local(maps, map::LOCAL_V4, cookie, &local.v4)?;
    replace_local(maps, map::LOCAL_V6, cookie, &local.v6)?;

    let mut s: HashMap<&mut MapData, u64, common::Settings> =
        HashMap::try_from(maps.map(map::SETTINGS)?)?;
    s.insert(cookie, settings.to_map_entry(cookie), 0)
        .context("writing SETTINGS")?;
    Ok(())
}

/// Removes everything of namespace `cookie`; `Ok(false)` when it had no settings. Each
/// map is cleared even when an earlier one fails, and the first failure is returned.
pub fn remove(maps: &mut dyn Maps, cookie: u64) -> Result<bool> {
    let mut first_err: Option<anyhow::Error> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    };
    let had = read_settings(maps, cookie).is_some();
    note((|| {
        let mut s: HashMap<&mut MapData, u64, common::Settings> =
            HashMap::try_from(maps.map(map::SETTINGS)?)?;
        if had {
            s.remove(&cookie).context("clearing SETTINGS")?;
        }
        Ok(())
    })());
    note((|| {
        let mut ports: HashMap<&mut MapData, NetnsPort, u8> =
            HashMap::try_from(maps.map(map::PORTS)?)?;
        for k in keys_of(&ports, cookie)? {
            ports.remove(&k).context("clearing PORTS")?;
        }
        Ok(())
    })());
    note(replace_trie::<CidrV4>(
        maps,
        map::OUT_EXCLUDE_V4,
        cookie,
        &[],
    ));
    note(replace_trie::<CidrV6>(
        maps,
        map::OUT_EXCLUDE_V6,
        cookie,
        &[],
    ));
    note(replace_trie::<CidrV4>(
        maps,
        map::OUT_INCLUDE_V4,
        cookie,
        &[],
    ));
    note(replace_trie::<CidrV6>(
        maps,
        map::OUT_INCLUDE_V6,
        cookie,
        &[],
    ));
    note(replace_local::<u32>(maps, map::LOCAL_V4, cookie, &[]));
    note(replace_local::<[u32; 4]>(maps, map::LOCAL_V6, cookie, &[]));
    note((|| {
        let mut c: PerCpuHashMap<&mut MapData, u64, Counters> =
            PerCpuHashMap::try_from(maps.map(map::COUNTERS)?)?;
        if c.get(&cookie, 0).is_ok() {
            c.remove(&cookie).context("clearing COUNTERS")?;
        }
        Ok(())
    })());
    match first_err {
        Some(e) => Err(e),
        None => Ok(had),
    }
}

/// The `SETTINGS` entry of namespace `cookie`.
pub fn read_settings(maps: &mut dyn Maps, cookie: u64) -> Option<common::Settings> {
    let m = maps.map(map::SETTINGS).ok()?;
    let s: HashMap<&mut MapData, u64, common::Settings> = HashMap::try_from(m).ok()?;
    s.get(&cookie, 0).ok()
}

/// Every namespace with settings.
pub fn cookies(maps: &mut dyn Maps) -> Result<Vec<u64>> {
    let s: HashMap<&mut MapData, u64, common::Settings> =
        HashMap::try_from(maps.map(map::SETTINGS)?)?;
    let mut out: Vec<u64> = s.keys().collect::<Result<_, _>>()?;
    out.sort_unstable();
    Ok(out)
}

/// Counter names and values of namespace `cookie` (summed over CPUs); all zero when it
/// has no entry.
pub fn counters(maps: &mut dyn Maps, cookie: u64) -> Vec<(&'static str, u64)> {
    let values: Option<PerCpuValues<Counters>> = maps
        .map(map::COUNTERS)
        .ok()
        .and_then(|m| PerCpuHashMap::<&mut MapData, u64, Counters>::try_from(m).ok())
        .and_then(|c| c.get(&cookie, 0).ok());
    (0..counter::COUNT as usize)
        .map(|i| {
            let sum = values
                .as_ref()
                .map(|v| v.iter().map(|c| c.values[i]).sum())
                .unwrap_or(0);
            (counter::NAMES[i], sum)
        })
        .collect()
}

/// What is missing or different for namespace `cookie` compared with what [`write`]
/// would put there: one line per problem, empty when all is in place.
pub fn check(
    maps: &mut dyn Maps,
    cookie: u64,
    settings: &Settings,
    local: &LocalAddrs,
) -> Vec<String> {
    let mut problems = Vec::new();
    match read_settings(maps, cookie) {
        None => problems.push(format!("no SETTINGS entry for netns cookie {cookie}")),
        Some(s) if s != settings.to_map_entry(cookie) => {
            problems.push(format!("SETTINGS entry for netns cookie {cookie} differs"))
        }
        Some(_) => {}
    }
    match maps
        .map(map::PORTS)
        .and_then(|m| Ok(HashMap::<&mut MapData, NetnsPort, u8>::try_from(m)?))
    {
        Ok(ports) => {
            for (port, bits) in settings.port_bits() {
                if ports.get(&port_key(cookie, port), 0).ok() != Some(bits) {
                    problems.push(format!("PORTS entry for port {port} missing"));
                }
            }
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    for (name, present) in [
        (
            map::LOCAL_V4,
            local_values::<u32>(maps, map::LOCAL_V4, &local.v4),
        ),
        (
            map::LOCAL_V6,
            local_values::<[u32; 4]>(maps, map::LOCAL_V6, &local.v6),
        ),
    ] {
        match present {
            Ok(values) if values.iter().all(|v| *v == Some(cookie)) => {}
            Ok(_) => problems.push(format!("{name} lacks an address of netns cookie {cookie}")),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    problems
}

fn port_key(cookie: u64, port: u16) -> NetnsPort {
    NetnsPort {
        netns_cookie: cookie,
        port,
        _pad: [0; 3],
    }
}

fn cidr_v4(cookie: u64, addr: u32) -> CidrV4 {
    let w = cookie_words(cookie);
    [w[0], w[1], addr]
}

fn cidr_v6(cookie: u64, a: [u32; 4]) -> CidrV6 {
    let w = cookie_words(cookie);
    [w[0], w[1], a[0], a[1], a[2], a[3]]
}

fn keys_of(ports: &HashMap<&mut MapData, NetnsPort, u8>, cookie: u64) -> Result<Vec<NetnsPort>> {
    let all: Vec<NetnsPort> = ports
        .keys()
        .collect::<Result<_, _>>()
        .context("reading PORTS")?;
    Ok(all
        .into_iter()
        .filter(|k| k.netns_cookie == cookie)
        .collect())
}

/// A trie key's data as words, to tell whose it is: the first two are the cookie.
trait CookieLed: aya::Pod + PartialEq {
    fn cookie(&self) -> u64;
}

impl CookieLed for CidrV4 {
    fn cookie(&self) -> u64 {
        u64::from(self[0]) | (u64::from(self[1]) << 32)
    }
}

impl CookieLed for CidrV6 {
    fn cookie(&self) -> u64 {
        u64::from(self[0]) | (u64::from(self[1]) << 32)
    }
}

/// Makes namespace `cookie`'s part of the trie hold exactly `wanted`: new keys first,
/// stale ones removed after, other namespaces' keys untouched.
fn replace_trie<K: CookieLed>(
    maps: &mut dyn Maps,
    name: &str,
    cookie: u64,
    wanted: &[(u32, K)],
) -> Result<()> {
    let mut trie: LpmTrie<&mut MapData, K, u8> = LpmTrie::try_from(maps.map(name)?)?;
    for (prefix, data) in wanted {
        trie.insert(&lpm_trie::Key::new(*prefix, *data), 1, 0)
            .with_context(|| format!("writing {name}"))?;
    }
    let present: Vec<lpm_trie::Key<K>> = trie
        .keys()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {name}"))?;
    for key in present {
        let data = key.data();
        if data.cookie() == cookie
            && !wanted
                .iter()
                .any(|(p, d)| *p == key.prefix_len() && *d == data)
        {
            trie.remove(&key)
                .with_context(|| format!("clearing {name}"))?;
        }
    }
    Ok(())
}

/// Makes the addresses mapped to `cookie` exactly `wanted`. An address another namespace
/// had is taken over (the newest namespace with an address wins; pod addresses on a node
/// are unique, so this only happens when an address moved).
fn replace_local<K: aya::Pod + PartialEq>(
    maps: &mut dyn Maps,
    name: &str,
    cookie: u64,
    wanted: &[K],
) -> Result<()> {
    let mut set: HashMap<&mut MapData, K, u64> = HashMap::try_from(maps.map(name)?)?;
    for k in wanted {
        set.insert(k, cookie, 0)
            .with_context(|| format!("writing {name}"))?;
    }
    let present: Vec<(K, u64)> = set
        .iter()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {name}"))?;
    for (k, owner) in present {
        if owner == cookie && !wanted.contains(&k) {
            set.remove(&k).with_context(|| format!("clearing {name}"))?;
        }
    }
    Ok(())
}

/// The namespace each of `addrs` is mapped to.
fn local_values<K: aya::Pod>(
    maps: &mut dyn Maps,
    name: &str,
    addrs: &[K],
) -> Result<Vec<Option<u64>>> {
    let set: HashMap<&mut MapData, K, u64> = HashMap::try_from(maps.map(name)?)?;
    Ok(addrs.iter().map(|a| set.get(a, 0).ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_not_a_local_address() {
        let l = LocalAddrs::from_ips(&[
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap(),
            "10.88.0.5".parse().unwrap(),
            "10.88.0.5".parse().unwrap(),
            "fd00::5".parse().unwrap(),
        ]);
        assert_eq!(l.v4, vec![u32::from_ne_bytes([10, 88, 0, 5])]);
        assert_eq!(l.v6.len(), 1);
    }

    #[test]
    fn trie_keys_lead_with_the_cookie() {
        let c = 0x1122_3344_5566_7788u64;
        assert_eq!(cidr_v4(c, 7).cookie(), c);
        assert_eq!(cidr_v6(c, [1, 2, 3, 4]).cookie(), c);
        assert_eq!(cidr_v4(c, 7)[2], 7);
    }
}
