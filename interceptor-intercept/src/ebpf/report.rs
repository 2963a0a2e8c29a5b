//! `status`'s whole answer: the pinned instances (`status`), whether bpffs is visible
//! here, and what the kernel reports attached (`kernel`), as text or as one JSON
//! document (`status --json`).
//!
//! Pins are only seen where the bpffs holding them is mounted; programs and links are
//! global. So where /sys/fs/bpf is not bpffs (a container without the hostPath mount),
//! `status` says so and lists what the kernel reports instead of "nothing attached"; and
//! where it is, programs no listed instance accounts for (the node agent's, or pins on
//! another bpffs) are listed too.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::Result;
use interceptor_common::{self as common, map};
use serde_json::{json, Value};

use super::kernel::{self, Group};
use super::status::{self, describe_link, describe_settings, Instance};
use super::sys::{attach, LinkInfo, LinkTarget};
use super::target::{bpffs_visible, cgroup_path_by_id};
use super::PIN_ROOT;

pub struct Report {
    /// bpffs is mounted at /sys/fs/bpf in this mount namespace.
    pub bpffs_visible: bool,
    /// Instances pinned under [`PIN_ROOT`] (none when bpffs is not visible).
    pub instances: Vec<Instance>,
    /// Every set of interceptor programs the kernel has, pinned here or not.
    pub kernel: Vec<Group>,
}

impl Report {
    /// Kernel sets none of whose programs a visible pin holds.
    pub fn unpinned(&self) -> Vec<&Group> {
        let pinned: BTreeSet<u32> = self
            .instances
            .iter()
            .flat_map(|i| {
                i.links
                    .iter()
                    .filter_map(|(_, l)| l.as_ref().ok().map(|l| l.prog_id))
                    .chain(i.skmsg_programs.iter().flatten().copied())
            })
            .collect();
        self.kernel
            .iter()
            .filter(|g| !g.programs.iter().any(|p| pinned.contains(&p.id)))
            .collect()
    }
}

/// Gathers the report. Needs root: bpffs and the kernel's program list are root's.
pub fn report() -> Result<Report> {
    let bpffs_visible = bpffs_visible();
    let instances = if bpffs_visible {
        status::instances()?
    } else {
        Vec::new()
    };
    Ok(Report {
        bpffs_visible,
        instances,
        kernel: kernel::groups()?,
    })
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let unpinned = r.unpinned();
    if !r.bpffs_visible {
        let _ = writeln!(
            s,
            "ebpf: bpffs is not visible here (nothing of type bpf is mounted at /sys/fs/bpf in this mount namespace), so pinned instances cannot be listed"
        );
        if r.kernel.is_empty() {
            s.push_str("ebpf: the kernel reports no interceptor programs loaded\n");
        } else {
            s.push_str("ebpf: the kernel reports these interceptor programs attached:\n");
        }
    } else if !r.instances.is_empty() || unpinned.is_empty() {
        s.push_str(&status::render(&r.instances));
        if !unpinned.is_empty() {
            let _ = writeln!(
                s,
                "ebpf: the kernel also reports interceptor programs no instance above accounts for (the node agent's, or pinned on a bpffs not visible here):"
            );
        }
    } else {
        let _ = writeln!(
            s,
            "ebpf: no instance is pinned under {PIN_ROOT}, but the kernel reports these interceptor programs attached:"
        );
    }
    let shown = if r.bpffs_visible {
        unpinned
    } else {
        r.kernel.iter().collect()
    };
    for g in shown {
        render_group(&mut s, g);
    }
    s
}

fn render_group(s: &mut String, g: &Group) {
    let mut ids: Vec<u32> = g.maps.values().copied().collect();
    ids.sort_unstable();
    let maps: Vec<String> = ids.iter().map(u32::to_string).collect();
    let _ = writeln!(
        s,
        "ebpf (kernel) programs sharing map ids {}",
        maps.join(",")
    );
    for (id, path) in g.cgroups() {
        let p = path.map_or_else(
            || "(not under this cgroup2 mount)".into(),
            |p| p.display().to_string(),
        );
        let _ = writeln!(s, "  cgroup {p} (id {id})");
    }
    for p in &g.programs {
        if p.links.is_empty() {
            let held = if p.kind == "sk_msg" {
                format!(
                    " (an sk_msg verdict is held by sockhash {}, not a link)",
                    map::SOCKETS
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  program {} (id {}, {}): no link{held}",
                p.name, p.id, p.kind
            );
        }
        for l in &p.links {
            let _ = writeln!(
                s,
                "  program {} (id {}, {}): {}",
                p.name,
                p.id,
                p.kind,
                describe_link(l)
            );
        }
    }
    for ns in &g.namespaces {
        let _ = writeln!(s, "  netns cookie {}", ns.netns_cookie);
        if let Some(st) = &ns.settings {
            let _ = writeln!(s, "    settings: {}", describe_settings(st));
        }
        for (name, v) in &ns.counters {
            let _ = writeln!(s, "    counter {name} {v}");
        }
    }
}

/// The report as one JSON document.
pub fn to_json(r: &Report) -> Value {
    json!({
        "bpffs_visible": r.bpffs_visible,
        "pin_root": PIN_ROOT,
        "instances": r.instances.iter().map(instance_json).collect::<Vec<_>>(),
        "kernel": r.kernel.iter().map(|g| json!({
            "pinned_here": !r.unpinned().iter().any(|u| std::ptr::eq(*u, g)),
            "maps": g.maps,
            "cgroups": g.cgroups().into_iter().map(|(id, p)| json!({
                "id": id,
                "path": p.map(|p| p.display().to_string()),
            })).collect::<Vec<_>>(),
            "programs": g.programs.iter().map(|p| json!({
                "id": p.id,
                "name": p.name,
                "type": p.kind,
                "links": p.links.iter().map(link_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "namespaces": g.namespaces.iter().map(|ns| json!({
                "netns_cookie": ns.netns_cookie,
                "settings": ns.settings.as_ref().map(settings_json),
                "counters": counters_json(&ns.counters),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn instance_json(i: &Instance) -> Value {
    json!({
        "pin_dir": i.pin_dir.display().to_string(),
        "cgroup_id": i.cgroup_id,
        "cgroup": i.cgroup.as_ref().map(|p| p.display().to_string()),
        "netns_cookie": i.netns_cookie,
        "settings": i.settings.as_ref().map(settings_json),
        "links": i.links.iter().map(|(name, l)| match l {
            Ok(l) => {
                let mut v = link_json(l);
                v["program"] = json!(name);
                v
            }
            Err(e) => json!({ "program": name, "error": e }),
        }).collect::<Vec<_>>(),
        "sk_msg_programs": match &i.skmsg_programs {
            Ok(ids) => json!(ids),
            Err(e) => json!({ "error": e }),
        },
        "counters": counters_json(&i.counters),
    })
}

fn link_json(l: &LinkInfo) -> Value {
    let target = match l.target {
        LinkTarget::Cgroup(id) => json!({
            "cgroup_id": id,
            "cgroup": cgroup_path_by_id(id).map(|p| p.display().to_string()),
        }),
        LinkTarget::Netns(ino) => json!({ "netns_inode": ino }),
        LinkTarget::Other(t) => json!({ "link_type": t }),
    };
    json!({
        "link_id": l.id,
        "program_id": l.prog_id,
        "attach_type": attach::name(l.attach_type),
        "target": target,
    })
}

fn settings_json(st: &common::Settings) -> Value {
    let n = |v: &[u32], n: u16| v[..usize::from(n).min(v.len())].to_vec();
    json!({
        "proxy_port": st.proxy_port,
        "inbound_capture_port": st.inbound_port,
        "dns_port": st.dns_port,
        "proxy_uids": n(&st.proxy_uids, st.n_uids),
        "proxy_gids": n(&st.proxy_gids, st.n_gids),
        "enabled": st.flags & common::FLAG_ENABLED != 0,
        "outbound_all_cidrs": st.flags & common::FLAG_OUTBOUND_ALL_CIDRS != 0,
        "inbound_all_ports": st.flags & common::FLAG_INBOUND_ALL_PORTS != 0,
        "redirect_dns": st.flags & common::FLAG_REDIRECT_DNS != 0,
        "socket_fast_path": st.flags & common::FLAG_NO_SOCKET_FAST_PATH == 0,
    })
}

fn counters_json(c: &[(&'static str, u64)]) -> Value {
    Value::Object(c.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebpf::kernel::{Namespace, Program};
    use std::path::PathBuf;

    fn link(prog_id: u32, target: LinkTarget, attach_type: u32) -> LinkInfo {
        LinkInfo {
            id: prog_id + 100,
            prog_id,
            target,
            attach_type,
        }
    }

    fn group(first_prog: u32) -> Group {
        Group {
            programs: vec![
                Program {
                    id: first_prog,
                    name: "connect4".into(),
                    kind: "cgroup_sock_addr".into(),
                    links: vec![link(
                        first_prog,
                        LinkTarget::Cgroup(7),
                        attach::CGROUP_INET4_CONNECT,
                    )],
                },
                Program {
                    id: first_prog + 1,
                    name: "skmsg".into(),
                    kind: "sk_msg".into(),
                    links: Vec::new(),
                },
            ],
            maps: [("SETTINGS".to_string(), 9)].into_iter().collect(),
            namespaces: vec![Namespace {
                netns_cookie: 4097,
                settings: Some(crate::ebpf::Settings::default().to_map_entry(4097)),
                counters: vec![("connects_redirected", 3)],
            }],
        }
    }

    #[test]
    fn without_bpffs_the_kernels_programs_are_listed() {
        let r = Report {
            bpffs_visible: false,
            instances: Vec::new(),
            kernel: vec![group(10)],
        };
        let text = render(&r);
        assert!(text.contains("bpffs is not visible here"), "{text}");
        assert!(!text.contains("nothing attached"), "{text}");
        assert!(
            text.contains(
                "program connect4 (id 10, cgroup_sock_addr): cgroup_inet4_connect on cgroup 7"
            ),
            "{text}"
        );
        assert!(
            text.contains("program skmsg (id 11, sk_msg): no link"),
            "{text}"
        );
        assert!(
            text.contains("netns cookie 4097") && text.contains("counter connects_redirected 3"),
            "{text}"
        );

        let v = to_json(&r);
        assert_eq!(v["bpffs_visible"], json!(false));
        assert_eq!(
            v["kernel"][0]["programs"][0]["links"][0]["target"]["cgroup_id"],
            json!(7)
        );
        assert_eq!(
            v["kernel"][0]["namespaces"][0]["counters"]["connects_redirected"],
            json!(3)
        );
        assert_eq!(v["kernel"][0]["pinned_here"], json!(false));
        assert!(text.contains(", socket fast path on"), "{text}");
        assert_eq!(
            v["kernel"][0]["namespaces"][0]["settings"]["socket_fast_path"],
            json!(true)
        );
    }

    #[test]
    fn a_namespace_without_the_fast_path_says_so() {
        let mut g = group(10);
        g.namespaces[0].settings = Some(
            crate::ebpf::Settings {
                socket_fast_path: false,
                ..crate::ebpf::Settings::default()
            }
            .to_map_entry(4097),
        );
        let r = Report {
            bpffs_visible: false,
            instances: Vec::new(),
            kernel: vec![g],
        };
        let text = render(&r);
        assert!(text.contains(", socket fast path off"), "{text}");
        assert!(!text.contains("(disabled)"), "{text}");
        assert_eq!(
            to_json(&r)["kernel"][0]["namespaces"][0]["settings"]["socket_fast_path"],
            json!(false)
        );

        // A pinned instance: its settings and its sockhash without sk_msg.
        let off = Instance {
            pin_dir: PathBuf::from("/sys/fs/bpf/interceptor/7-4097"),
            cgroup_id: 7,
            netns_cookie: 4097,
            cgroup: None,
            links: Vec::new(),
            skmsg_programs: Ok(Vec::new()),
            settings: r.kernel[0].namespaces[0].settings,
            counters: Vec::new(),
        };
        let r = Report {
            bpffs_visible: true,
            instances: vec![off],
            kernel: Vec::new(),
        };
        let text = render(&r);
        assert!(
            text.contains("socket fast path off\n")
                && text.contains("  sk_msg: not attached to SOCKETS (socket fast path off)\n"),
            "{text}"
        );
        assert_eq!(
            to_json(&r)["instances"][0]["settings"]["socket_fast_path"],
            json!(false)
        );
    }

    #[test]
    fn pinned_programs_are_not_listed_twice() {
        let pinned = Instance {
            pin_dir: PathBuf::from("/sys/fs/bpf/interceptor/7-4097"),
            cgroup_id: 7,
            netns_cookie: 4097,
            cgroup: None,
            links: vec![(
                "connect4".into(),
                Ok(link(
                    10,
                    LinkTarget::Cgroup(7),
                    attach::CGROUP_INET4_CONNECT,
                )),
            )],
            skmsg_programs: Ok(vec![11]),
            settings: None,
            counters: vec![("connects_redirected", 3)],
        };
        let r = Report {
            bpffs_visible: true,
            instances: vec![pinned],
            kernel: vec![group(10), group(20)],
        };
        assert_eq!(r.unpinned().len(), 1);
        let text = render(&r);
        assert!(
            text.contains("ebpf /sys/fs/bpf/interceptor/7-4097"),
            "{text}"
        );
        assert!(text.contains("no instance above accounts for"), "{text}");
        assert!(
            text.contains("program connect4 (id 20,") && !text.contains("(id 10,"),
            "{text}"
        );
        let v = to_json(&r);
        assert_eq!(v["instances"][0]["netns_cookie"], json!(4097));
        assert_eq!(v["instances"][0]["links"][0]["program"], json!("connect4"));
        assert_eq!(v["kernel"][0]["pinned_here"], json!(true));
        assert_eq!(v["kernel"][1]["pinned_here"], json!(false));

        let empty = Report {
            bpffs_visible: true,
            instances: Vec::new(),
            kernel: Vec::new(),
        };
        assert_eq!(render(&empty), "ebpf: nothing attached\n");
    }
}
