//! What the kernel reports of interceptor's programs, with no pins: programs, links and
//! maps are global objects, found by id (`BPF_*_GET_NEXT_ID`) from any mount namespace,
//! whereas pins are only seen where the bpffs holding them is mounted. `status` uses this
//! where bpffs is not visible (a container without the hostPath mount) and to show
//! programs that no visible pin accounts for.
//!
//! A program is interceptor's when its name is one of [`program`]'s and it uses a map
//! named like one of [`map`]'s. Programs sharing maps belong together (one `init`
//! instance, or the node agent's set); each set's `SETTINGS` keys are the namespaces it
//! serves.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use aya::maps::{Map, MapData, MapInfo};
use aya::programs::loaded_programs;
use interceptor_common::{self as common, map, program};

use super::netns_entries::{self, Maps};
use super::sys::{self, LinkInfo, LinkTarget};
use super::target::cgroup_path_by_id;

const PROGRAM_NAMES: [&str; 8] = [
    program::CONNECT4,
    program::CONNECT6,
    program::SENDMSG4,
    program::RECVMSG4,
    program::GETSOCKOPT,
    program::SOCKOPS,
    program::SKMSG,
    program::SKLOOKUP,
];

const MAP_NAMES: [&str; 13] = [
    map::SETTINGS,
    map::PORTS,
    map::OUT_INCLUDE_V4,
    map::OUT_EXCLUDE_V4,
    map::OUT_INCLUDE_V6,
    map::OUT_EXCLUDE_V6,
    map::LOCAL_V4,
    map::LOCAL_V6,
    map::ORIG_BY_COOKIE,
    map::ORIG_BY_TUPLE,
    map::SOCKETS,
    map::LISTENER,
    map::COUNTERS,
];

/// One loaded program of interceptor's.
#[derive(Clone, Debug)]
pub struct Program {
    pub id: u32,
    pub name: String,
    /// The program type as the kernel names it (`cgroup_sock_addr`).
    pub kind: String,
    /// Its links, with what each is attached to.
    pub links: Vec<LinkInfo>,
}

/// One namespace a set of programs serves, from its `SETTINGS` map.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub netns_cookie: u64,
    pub settings: Option<common::Settings>,
    pub counters: Vec<(&'static str, u64)>,
}

/// Programs that share maps, and the namespaces they serve.
#[derive(Clone, Debug)]
pub struct Group {
    pub programs: Vec<Program>,
    /// Our maps the programs use, by name.
    pub maps: BTreeMap<String, u32>,
    pub namespaces: Vec<Namespace>,
}

impl Group {
    /// Cgroups the group's links are attached to, with their paths when found.
    pub fn cgroups(&self) -> Vec<(u64, Option<PathBuf>)> {
        let mut ids: Vec<u64> = self
            .programs
            .iter()
            .flat_map(|p| &p.links)
            .filter_map(|l| match l.target {
                LinkTarget::Cgroup(id) => Some(id),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| (id, cgroup_path_by_id(id)))
            .collect()
    }
}

/// Every set of interceptor programs the kernel has. Needs CAP_SYS_ADMIN (EPERM otherwise).
pub fn groups() -> Result<Vec<Group>> {
    let mut found: Vec<(Program, BTreeMap<String, u32>)> = Vec::new();
    for info in loaded_programs() {
        let info = info.map_err(|e| enumeration_error("listing loaded programs", e))?;
        let Some(name) = info.name_as_str().filter(|n| PROGRAM_NAMES.contains(n)) else {
            continue;
        };
        // A program that went away between listing and reading has no maps to show.
        let Ok(Some(map_ids)) = info.map_ids() else {
            continue;
        };
        let maps: BTreeMap<String, u32> = map_ids
            .into_iter()
            .filter_map(|id| {
                let n = MapInfo::from_id(id).ok()?.name_as_str()?.to_string();
                MAP_NAMES.contains(&n.as_str()).then_some((n, id))
            })
            .collect();
        if maps.is_empty() {
            continue;
        }
        let kind = format!("{:?}", info.program_type())
            .trim_start_matches("BPF_PROG_TYPE_")
            .to_ascii_lowercase();
        found.push((
            Program {
                id: info.id(),
                name: name.to_string(),
                kind,
                links: Vec::new(),
            },
            maps,
        ));
    }
    for id in sys::link_ids().map_err(|e| enumeration_error("listing links", e))? {
        let Ok(info) = sys::link_fd_by_id(id).and_then(|fd| sys::link_info(fd.as_fd())) else {
            continue; // detached meanwhile
        };
        if let Some((p, _)) = found.iter_mut().find(|(p, _)| p.id == info.prog_id) {
            p.links.push(info);
        }
    }

    // Programs sharing any map id are one set.
    let mut groups: Vec<Group> = Vec::new();
    for (prog, maps) in found {
        let (joined, rest): (Vec<Group>, Vec<Group>) = groups
            .into_iter()
            .partition(|g| g.maps.values().any(|id| maps.values().any(|m| m == id)));
        let mut merged = Group {
            programs: vec![prog],
            maps,
            namespaces: Vec::new(),
        };
        for g in joined {
            merged.programs.extend(g.programs);
            merged.maps.extend(g.maps);
        }
        groups = rest;
        groups.push(merged);
    }
    for g in &mut groups {
        g.programs.sort_by_key(|p| p.id);
        let mut maps = ById::new(&g.maps);
        let cookies = netns_entries::cookies(&mut maps).unwrap_or_default();
        g.namespaces = cookies
            .into_iter()
            .map(|c| Namespace {
                netns_cookie: c,
                settings: netns_entries::read_settings(&mut maps, c),
                counters: netns_entries::counters(&mut maps, c),
            })
            .collect();
    }
    groups.sort_by_key(|g| g.programs.first().map(|p| p.id));
    Ok(groups)
}

fn enumeration_error(what: &str, e: impl std::error::Error + 'static) -> anyhow::Error {
    let denied = {
        let mut src: Option<&dyn std::error::Error> = Some(&e);
        let mut yes = false;
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<io::Error>() {
                yes |= matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES));
            }
            src = s.source();
        }
        yes
    };
    if denied {
        anyhow!("{what}: permission denied; status needs root (CAP_SYS_ADMIN) to ask the kernel what is attached")
    } else {
        anyhow!("{what}: {e}")
    }
}

/// Maps opened by id, for [`netns_entries`]' readers.
struct ById {
    ids: BTreeMap<String, u32>,
    open: BTreeMap<String, Map>,
}

impl ById {
    fn new(ids: &BTreeMap<String, u32>) -> ById {
        ById {
            ids: ids.clone(),
            open: BTreeMap::new(),
        }
    }
}

impl Maps for ById {
    fn map(&mut self, name: &str) -> Result<&mut Map> {
        if !self.open.contains_key(name) {
            let id = *self
                .ids
                .get(name)
                .ok_or_else(|| anyhow!("the programs use no map {name}"))?;
            let data =
                MapData::from_id(id).map_err(|e| anyhow!("opening map {name} (id {id}): {e}"))?;
            let m = Map::from_map_data(data).map_err(|e| anyhow!("map {name} (id {id}): {e}"))?;
            self.open.insert(name.to_string(), m);
        }
        self.open
            .get_mut(name)
            .ok_or_else(|| anyhow!("map {name} not opened"))
    }
}
