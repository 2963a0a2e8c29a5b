//! The layout's promises, checked from `cargo metadata`: the sniffer library builds on the
//! stable toolchain alone (nothing in its dependency closure needs the eBPF toolchain or
//! the command line), and the libraries leave flags to the binary.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

/// Every package `root` depends on (normal and build dependencies, transitively).
fn closure(root: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(host_triple())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let name_of: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null() || k["kind"] == "build")
                })
                .map(|d| d["pkg"].as_str().unwrap())
                .collect();
            (n["id"].as_str().unwrap(), deps)
        })
        .collect();
    let start = name_of
        .iter()
        .find(|(_, n)| **n == root)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("no package {root}"));
    let mut seen = BTreeSet::new();
    let mut todo = vec![start];
    while let Some(id) = todo.pop() {
        if seen.insert(name_of[id].to_string()) {
            todo.extend(nodes[id].iter().copied());
        }
    }
    seen.remove(root);
    seen
}

#[test]
fn the_sniffer_needs_neither_the_ebpf_toolchain_nor_the_command_line() {
    let deps = closure("interceptor-sniff");
    assert!(
        deps.contains("pcap") && deps.contains("httparse"),
        "{deps:?}"
    );
    for banned in [
        "aya",
        "aya-log",
        "clap",
        "interceptor-ebpf-build",
        "interceptor-intercept",
        "interceptor-common",
    ] {
        assert!(
            !deps.contains(banned),
            "interceptor-sniff depends on {banned}: {deps:?}"
        );
    }
}

#[test]
fn the_libraries_leave_flags_to_the_binary() {
    for lib in [
        "interceptor-sniff",
        "interceptor-intercept",
        "interceptor-cni",
    ] {
        assert!(
            !closure(lib).contains("clap"),
            "{lib} depends on clap: flags belong to the interceptor binary"
        );
    }
    assert!(closure("interceptor").contains("clap"));
}

/// The host's target triple, so metadata resolves only the crates this platform builds.
fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}
