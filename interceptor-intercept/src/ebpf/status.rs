//! `status`: every pinned instance, what its links are attached to (as the kernel reports
//! it), its settings and its counters.

use std::fmt::Write as _;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::Result;
use interceptor_common::{self as common, map};

use super::netns_entries;
use super::sys::{self, attach, LinkInfo, LinkTarget};
use super::target::cgroup_path_by_id;
use super::PIN_ROOT;

pub struct Instance {
    pub pin_dir: PathBuf,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub cgroup: Option<PathBuf>,
    /// Link pin name and what the kernel says of it.
    pub links: Vec<(String, Result<LinkInfo, String>)>,
    /// Programs the `SOCKETS` sockhash holds as its sk_msg verdict.
    pub skmsg_programs: Result<Vec<u32>, String>,
    pub settings: Option<common::Settings>,
    pub counters: Vec<(&'static str, u64)>,
}

/// All instances pinned under [`PIN_ROOT`].
pub fn instances() -> Result<Vec<Instance>> {
    let root = Path::new(PIN_ROOT);
    match fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow::bail!(
                "cannot read {PIN_ROOT}: {e}; status needs root (bpffs is readable by root only)"
            )
        }
        _ => return Ok(Vec::new()),
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(root)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((cg, ns)) = name.split_once('-') else {
            continue;
        };
        let (Ok(cgroup_id), Ok(netns_cookie)) = (cg.parse::<u64>(), ns.parse::<u64>()) else {
            continue;
        };
        out.push(read_instance(entry.path(), cgroup_id, netns_cookie));
    }
    out.sort_by_key(|i| (i.cgroup_id, i.netns_cookie));
    Ok(out)
}

fn read_instance(pin_dir: PathBuf, cgroup_id: u64, netns_cookie: u64) -> Instance {
    let mut links = Vec::new();
    let mut names: Vec<String> = fs::read_dir(&pin_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for n in names.iter().filter(|n| n.starts_with("link_")) {
        let info = sys::obj_get(&pin_dir.join(n))
            .and_then(|fd| sys::link_info(fd.as_fd()))
            .map_err(|e| e.to_string());
        links.push((n.trim_start_matches("link_").to_string(), info));
    }
    let skmsg_programs = sys::obj_get(&pin_dir.join(map::SOCKETS))
        .and_then(|fd| sys::prog_query(fd.as_fd(), attach::SK_MSG_VERDICT))
        .map_err(|e| e.to_string());
    // The maps are keyed by namespace; an instance serves its own one.
    let mut maps = netns_entries::Pinned::new(&pin_dir);
    let settings = netns_entries::read_settings(&mut maps, netns_cookie);
    let counters = if settings.is_some() {
        netns_entries::counters(&mut maps, netns_cookie)
    } else {
        Vec::new()
    };
    Instance {
        cgroup: cgroup_path_by_id(cgroup_id),
        pin_dir,
        cgroup_id,
        netns_cookie,
        links,
        skmsg_programs,
        settings,
        counters,
    }
}

pub fn render(instances: &[Instance]) -> String {
    let mut s = String::new();
    if instances.is_empty() {
        s.push_str("ebpf: nothing attached\n");
        return s;
    }
    for i in instances {
        let cg = i
            .cgroup
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(cgroup gone)".into());
        let _ = writeln!(s, "ebpf {}", i.pin_dir.display());
        let _ = writeln!(s, "  cgroup {cg} (id {})", i.cgroup_id);
        let _ = writeln!(s, "  netns cookie {}", i.netns_cookie);
        if let Some(st) = &i.settings {
            let _ = writeln!(s, "  settings: {}", describe_settings(st));
        }
        for (name, info) in &i.links {
            match info {
                Ok(l) => {
                    let _ = writeln!(s, "  link {name}: {}", describe_link(l));
                }
                Err(e) => {
                    let _ = writeln!(s, "  link {name}: unreadable ({e})");
                }
            }
        }
        let fast_path_off = i
            .settings
            .is_some_and(|st| st.flags & common::FLAG_NO_SOCKET_FAST_PATH != 0);
        match &i.skmsg_programs {
            Ok(ids) if ids.is_empty() && fast_path_off => {
                let _ = writeln!(
                    s,
                    "  sk_msg: not attached to {} (socket fast path off)",
                    map::SOCKETS
                );
            }
            Ok(ids) if ids.is_empty() => {
                let _ = writeln!(s, "  sk_msg: not attached to {}", map::SOCKETS);
            }
            Ok(ids) => {
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                let _ = writeln!(
                    s,
                    "  sk_msg: sk_msg_verdict on sockhash {} (program id {})",
                    map::SOCKETS,
                    ids.join(",")
                );
            }
            Err(e) => {
                let _ = writeln!(s, "  sk_msg: unreadable ({e})");
            }
        }
        for (name, v) in &i.counters {
            let _ = writeln!(s, "  counter {name} {v}");
        }
    }
    s
}

/// A `SETTINGS` entry in one line (also `report`'s for namespaces found by id).
pub fn describe_settings(st: &common::Settings) -> String {
    let ids = |v: &[u32], n: u16| {
        v[..usize::from(n).min(v.len())]
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "proxy port {}, inbound capture port {}, proxy uids {}, proxy gids {}, outbound {}, inbound {}, dns {}, socket fast path {}{}",
        st.proxy_port,
        st.inbound_port,
        ids(&st.proxy_uids, st.n_uids),
        ids(&st.proxy_gids, st.n_gids),
        if st.flags & common::FLAG_OUTBOUND_ALL_CIDRS != 0 { "all CIDRs" } else { "listed CIDRs" },
        if st.flags & common::FLAG_INBOUND_ALL_PORTS != 0 { "all ports" } else { "listed ports" },
        if st.flags & common::FLAG_REDIRECT_DNS != 0 { st.dns_port.to_string() } else { "off".into() },
        if st.flags & common::FLAG_NO_SOCKET_FAST_PATH != 0 { "off" } else { "on" },
        if st.flags & common::FLAG_ENABLED == 0 { " (disabled)" } else { "" },
    )
}

/// Where a link is attached, as the kernel reports it.
pub fn describe_link(l: &LinkInfo) -> String {
    let on = match l.target {
        LinkTarget::Cgroup(id) => format!("cgroup {id}"),
        LinkTarget::Netns(ino) => format!("netns inode {ino}"),
        LinkTarget::Other(t) => format!("link type {t}"),
    };
    format!(
        "{} on {on} (link id {}, program id {})",
        attach::name(l.attach_type),
        l.id,
        l.prog_id
    )
}
