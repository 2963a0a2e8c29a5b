use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

use super::*;

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "interceptor-cni-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, text: &str, mode: u32) {
        let p = self.0.join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.0.join(name)).unwrap()
    }

    fn json(&self, name: &str) -> Value {
        serde_json::from_str(&self.read(name)).unwrap()
    }

    /// Every file: name → (bytes, mode).
    fn snapshot(&self) -> BTreeMap<String, (Vec<u8>, u32)> {
        fs::read_dir(&self.0)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap().permissions().mode() & 0o7777;
                (
                    e.file_name().into_string().unwrap(),
                    (fs::read(e.path()).unwrap(), m),
                )
            })
            .collect()
    }

    fn names(&self) -> Vec<String> {
        self.snapshot().into_keys().collect()
    }

    fn ino(&self, name: &str) -> u64 {
        fs::metadata(self.0.join(name)).unwrap().ino()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A calico-style conflist, formatted the way no serializer would (tabs, odd spacing,
/// no final newline), so byte-for-byte restores are really checked.
const CALICO: &str = "{\n\t\"name\": \"k8s-pod-network\",\n\t\"cniVersion\":\"0.3.1\",\n\t\"plugins\": [\n\t\t{ \"type\": \"calico\", \"log_level\": \"info\", \"ipam\": { \"type\": \"calico-ipam\" } },\n\t\t{\"type\":\"portmap\",\"snat\":true,\"capabilities\":{\"portMappings\":true}}\n\t]\n}";

const BRIDGE: &str = "{\"cniVersion\": \"0.4.0\", \"name\": \"podman\", \"type\": \"bridge\", \"bridge\": \"cni-podman0\",\n \"isGateway\": true, \"ipam\": {\"type\": \"host-local\", \"subnet\": \"10.88.0.0/16\"}}\n";

fn entry() -> Value {
    plugin_entry(&PluginConf::default(), "interceptor-system")
}

fn plugin_types(v: &Value) -> Vec<String> {
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn primary_is_the_first_config_by_name() {
    let d = TempDir::new("primary");
    d.write("20-other.conflist", CALICO, 0o644);
    d.write("10-calico.conflist", CALICO, 0o644);
    d.write("05-notes.txt", "hello", 0o644);
    d.write(".interceptor-cni.state", "{}", 0o600);
    d.write(".00-x.conf.1.interceptor-tmp", "{", 0o600);
    fs::create_dir(d.path().join("00-dir.conf")).unwrap();
    assert_eq!(
        find_primary(d.path()).unwrap(),
        d.path().join("10-calico.conflist")
    );
    d.write("10-calico.conf", BRIDGE, 0o644);
    // ".conf" sorts before ".conflist", as in libcni
    assert_eq!(
        find_primary(d.path()).unwrap(),
        d.path().join("10-calico.conf")
    );
    d.write("01-a.json", BRIDGE, 0o644);
    assert_eq!(find_primary(d.path()).unwrap(), d.path().join("01-a.json"));
}

#[test]
fn primary_errors_name_the_dir_or_file() {
    let d = TempDir::new("errors");
    let missing = d.path().join("nope");
    let e = find_primary(&missing).unwrap_err();
    assert!(matches!(&e, ConflistError::DirMissing { dir } if dir == &missing));
    assert!(e.to_string().contains("nope"), "{e}");

    let e = find_primary(d.path()).unwrap_err();
    assert!(matches!(&e, ConflistError::NoConfig { dir } if dir == d.path()));
    assert!(
        e.to_string().contains(&d.path().display().to_string()),
        "{e}"
    );

    d.write("10-broken.conflist", "{\"plugins\": [", 0o644);
    d.write("20-fine.conflist", CALICO, 0o644);
    let e = find_primary(d.path()).unwrap_err();
    let ConflistError::Unparsable { path, message } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(path, &d.path().join("10-broken.conflist"));
    assert!(message.contains("EOF while parsing"), "{message}");
    assert!(e.to_string().contains("10-broken.conflist"), "{e}");

    d.write("10-broken.conflist", r#"{"name":"x","plugins":[]}"#, 0o644);
    assert!(matches!(
        find_primary(d.path()),
        Err(ConflistError::NotCniConfig { .. })
    ));
    d.write("10-broken.conflist", r#"{"name":"x"}"#, 0o644);
    assert!(matches!(
        install(d.path(), &entry()),
        Err(ConflistError::NotCniConfig { .. })
    ));
}

#[test]
fn conflist_install_and_uninstall_byte_for_byte() {
    let d = TempDir::new("conflist");
    d.write("10-calico.conflist", CALICO, 0o640);
    d.write(
        "99-loopback.conf",
        "{\"cniVersion\":\"0.3.1\",\"name\":\"lo\",\"type\":\"loopback\"}",
        0o644,
    );
    let before = d.snapshot();

    let done = install(d.path(), &entry()).unwrap();
    assert_eq!(
        done,
        Installed {
            path: d.path().join("10-calico.conflist"),
            primary: d.path().join("10-calico.conflist"),
            changed: true
        }
    );
    let v = d.json("10-calico.conflist");
    assert_eq!(plugin_types(&v), ["calico", "portmap", "interceptor"]);
    assert_eq!(v["name"], "k8s-pod-network");
    assert_eq!(v["plugins"][2], entry());
    // The primary CNI's key order is kept.
    assert!(d
        .read("10-calico.conflist")
        .starts_with("{\n  \"name\": \"k8s-pod-network\",\n  \"cniVersion\""));
    assert_eq!(d.snapshot()["10-calico.conflist"].1, 0o640);
    assert!(!needs_reinsert(d.path()).unwrap());

    assert_eq!(
        uninstall(d.path()).unwrap(),
        Uninstalled::Restored {
            path: d.path().join("10-calico.conflist")
        }
    );
    assert_eq!(d.snapshot(), before);
    assert_eq!(uninstall(d.path()).unwrap(), Uninstalled::NothingToDo);
    assert_eq!(d.snapshot(), before);
}

#[test]
fn conf_becomes_conflist_and_comes_back() {
    let d = TempDir::new("conf");
    d.write("87-podman-bridge.conf", BRIDGE, 0o600);
    let before = d.snapshot();

    let done = install(d.path(), &entry()).unwrap();
    assert_eq!(done.path, d.path().join("87-podman-bridge.conflist"));
    assert_eq!(done.primary, d.path().join("87-podman-bridge.conf"));
    assert_eq!(
        d.names(),
        [".interceptor-cni.state", "87-podman-bridge.conflist"]
    );
    let v = d.json("87-podman-bridge.conflist");
    let old: Value = serde_json::from_str(BRIDGE).unwrap();
    assert_eq!(
        v,
        json!({"cniVersion": "0.4.0", "name": "podman", "plugins": [old, entry()]})
    );
    assert_eq!(d.snapshot()["87-podman-bridge.conflist"].1, 0o600);
    // installing again finds the .conflist, already right
    assert!(!install(d.path(), &entry()).unwrap().changed);

    assert_eq!(
        uninstall(d.path()).unwrap(),
        Uninstalled::Restored {
            path: d.path().join("87-podman-bridge.conf")
        }
    );
    assert_eq!(d.snapshot(), before);
}

#[test]
fn json_extension_single_plugin_is_converted_too() {
    let d = TempDir::new("json");
    d.write("50-net.json", BRIDGE, 0o644);
    let before = d.snapshot();
    assert_eq!(
        install(d.path(), &entry()).unwrap().path,
        d.path().join("50-net.conflist")
    );
    assert!(!d.path().join("50-net.json").exists());
    uninstall(d.path()).unwrap();
    assert_eq!(d.snapshot(), before);
}

#[test]
fn install_twice_changes_nothing() {
    let d = TempDir::new("twice");
    d.write("10-calico.conflist", CALICO, 0o644);
    assert!(install(d.path(), &entry()).unwrap().changed);
    let after_first = d.snapshot();
    let (conf_ino, state_ino) = (d.ino("10-calico.conflist"), d.ino(STATE_FILE));

    let again = install(d.path(), &entry()).unwrap();
    assert!(!again.changed);
    assert_eq!(ensure_installed(d.path(), &entry()).unwrap(), None);
    assert_eq!(d.snapshot(), after_first);
    // Not even rewritten with the same bytes: a write would wake the agent's watch.
    assert_eq!(
        (d.ino("10-calico.conflist"), d.ino(STATE_FILE)),
        (conf_ino, state_ino)
    );
    assert_eq!(
        plugin_types(&d.json("10-calico.conflist")),
        ["calico", "portmap", "interceptor"]
    );
}

#[test]
fn a_changed_entry_replaces_ours_in_place() {
    let d = TempDir::new("update");
    d.write("10-calico.conflist", CALICO, 0o644);
    let before = d.snapshot();
    install(d.path(), &entry()).unwrap();
    let ebpf = plugin_entry(
        &PluginConf {
            mode: crate::spec::Mechanism::Ebpf,
            ..PluginConf::default()
        },
        "interceptor-system",
    );
    let done = ensure_installed(d.path(), &ebpf).unwrap().unwrap();
    assert!(done.changed);
    let v = d.json("10-calico.conflist");
    assert_eq!(plugin_types(&v), ["calico", "portmap", "interceptor"]);
    assert_eq!(v["plugins"][2]["mode"], "ebpf");
    // the saved original is still the primary CNI's
    uninstall(d.path()).unwrap();
    assert_eq!(d.snapshot(), before);
}

#[test]
fn reinsert_after_the_primary_rewrote_its_file() {
    let d = TempDir::new("rewrite");
    d.write("10-calico.conflist", CALICO, 0o644);
    install(d.path(), &entry()).unwrap();

    // calico-node restarts and writes its file again, with a new setting.
    let rewritten = CALICO.replace("\"info\"", "\"debug\"");
    d.write("10-calico.conflist", &rewritten, 0o644);
    let their_new = d.snapshot();
    assert!(needs_reinsert(d.path()).unwrap());

    let done = ensure_installed(d.path(), &entry()).unwrap().unwrap();
    assert!(done.changed);
    let v = d.json("10-calico.conflist");
    assert_eq!(plugin_types(&v), ["calico", "portmap", "interceptor"]);
    assert_eq!(v["plugins"][0]["log_level"], "debug");
    assert!(!needs_reinsert(d.path()).unwrap());

    // Uninstall restores their new bytes, not the ones from before.
    uninstall(d.path()).unwrap();
    let mut want = their_new;
    want.remove(STATE_FILE);
    assert_eq!(d.snapshot(), want);
}

#[test]
fn uninstall_after_the_primary_edited_around_our_entry_removes_only_ours() {
    let d = TempDir::new("edited");
    d.write("10-calico.conflist", CALICO, 0o644);
    install(d.path(), &entry()).unwrap();
    let mut v = d.json("10-calico.conflist");
    v["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "bandwidth"}));
    d.write("10-calico.conflist", &v.to_string(), 0o644);

    assert_eq!(
        uninstall(d.path()).unwrap(),
        Uninstalled::Removed {
            path: d.path().join("10-calico.conflist")
        }
    );
    assert_eq!(
        plugin_types(&d.json("10-calico.conflist")),
        ["calico", "portmap", "bandwidth"]
    );
    assert_eq!(d.names(), ["10-calico.conflist"]);
    assert_eq!(uninstall(d.path()).unwrap(), Uninstalled::NothingToDo);
}

#[test]
fn primary_rewrites_its_conf_next_to_our_conflist() {
    let d = TempDir::new("reconf");
    d.write("10-flannel.conf", BRIDGE, 0o644);
    install(d.path(), &entry()).unwrap();
    assert_eq!(d.names(), [".interceptor-cni.state", "10-flannel.conflist"]);

    // The primary CNI writes its .conf again; it sorts first, so the runtime uses it.
    let theirs = BRIDGE.replace("10.88.0.0/16", "10.89.0.0/16");
    d.write("10-flannel.conf", &theirs, 0o644);
    assert_eq!(
        find_primary(d.path()).unwrap(),
        d.path().join("10-flannel.conf")
    );
    assert!(needs_reinsert(d.path()).unwrap());
    let their_new = d.snapshot();

    let done = ensure_installed(d.path(), &entry()).unwrap().unwrap();
    assert_eq!(done.path, d.path().join("10-flannel.conflist"));
    assert_eq!(d.names(), [".interceptor-cni.state", "10-flannel.conflist"]);
    let v = d.json("10-flannel.conflist");
    assert_eq!(v["plugins"][0]["ipam"]["subnet"], "10.89.0.0/16");
    assert_eq!(plugin_types(&v), ["bridge", "interceptor"]);

    uninstall(d.path()).unwrap();
    let mut want = their_new;
    want.remove(STATE_FILE);
    want.remove("10-flannel.conflist");
    assert_eq!(d.snapshot(), want);
}

#[test]
fn a_new_primary_moves_us_there() {
    let d = TempDir::new("moved");
    d.write("10-calico.conflist", CALICO, 0o644);
    install(d.path(), &entry()).unwrap();
    d.write(
        "05-cilium.conflist",
        &CALICO.replace("calico", "cilium-cni"),
        0o644,
    );
    let with_cilium = {
        let mut s = d.snapshot();
        s.insert(
            "10-calico.conflist".into(),
            (CALICO.as_bytes().to_vec(), 0o644),
        );
        s
    };
    assert!(needs_reinsert(d.path()).unwrap());
    let done = ensure_installed(d.path(), &entry()).unwrap().unwrap();
    assert_eq!(done.path, d.path().join("05-cilium.conflist"));
    // the old file is back as calico wrote it
    assert_eq!(d.read("10-calico.conflist"), CALICO);
    uninstall(d.path()).unwrap();
    let mut want = with_cilium;
    want.remove(STATE_FILE);
    assert_eq!(d.snapshot(), want);
}

#[test]
fn uninstall_does_not_resurrect_a_removed_file() {
    let d = TempDir::new("gone");
    d.write("10-calico.conflist", CALICO, 0o644);
    install(d.path(), &entry()).unwrap();
    fs::remove_file(d.path().join("10-calico.conflist")).unwrap();
    assert_eq!(uninstall(d.path()).unwrap(), Uninstalled::NothingToDo);
    assert!(d.names().is_empty());
}

#[test]
fn lost_state_still_installs_and_uninstalls() {
    let d = TempDir::new("lost");
    d.write("10-calico.conflist", CALICO, 0o644);
    install(d.path(), &entry()).unwrap();
    let installed = d.read("10-calico.conflist");
    fs::remove_file(d.path().join(STATE_FILE)).unwrap();

    assert!(!install(d.path(), &entry()).unwrap().changed);
    assert_eq!(d.read("10-calico.conflist"), installed);
    assert_eq!(
        uninstall(d.path()).unwrap(),
        Uninstalled::Removed {
            path: d.path().join("10-calico.conflist")
        }
    );
    assert_eq!(
        plugin_types(&d.json("10-calico.conflist")),
        ["calico", "portmap"]
    );
    assert_eq!(d.names(), ["10-calico.conflist"]);
}

#[test]
fn state_file_elsewhere() {
    let d = TempDir::new("elsewhere");
    let s = TempDir::new("elsewhere-state");
    d.write("10-calico.conflist", CALICO, 0o644);
    let before = d.snapshot();
    let cd = ConfDir::with_state_file(d.path(), s.path().join("cni.state"));
    cd.install(&entry()).unwrap();
    assert_eq!(d.names(), ["10-calico.conflist"]);
    assert_eq!(s.names(), ["cni.state"]);
    cd.uninstall().unwrap();
    assert_eq!(d.snapshot(), before);
    assert!(s.names().is_empty());
}

#[test]
fn nothing_to_uninstall() {
    let d = TempDir::new("nothing");
    assert_eq!(uninstall(d.path()).unwrap(), Uninstalled::NothingToDo);
    assert_eq!(
        uninstall(&d.path().join("missing")).unwrap(),
        Uninstalled::NothingToDo
    );
    d.write("10-calico.conflist", CALICO, 0o644);
    let before = d.snapshot();
    assert_eq!(uninstall(d.path()).unwrap(), Uninstalled::NothingToDo);
    assert_eq!(d.snapshot(), before);
}

#[test]
fn entries_and_primaries_we_refuse() {
    let d = TempDir::new("refuse");
    d.write("10-calico.conflist", CALICO, 0o644);
    for bad in [
        json!([]),
        json!({"name": "x"}),
        json!({"type": "istio-cni"}),
    ] {
        assert!(matches!(
            install(d.path(), &bad),
            Err(ConflistError::BadEntry { .. })
        ));
    }
    let d = TempDir::new("alone");
    d.write(
        "10-us.conf",
        r#"{"cniVersion":"1.0.0","name":"x","type":"interceptor"}"#,
        0o644,
    );
    assert!(matches!(
        install(d.path(), &entry()),
        Err(ConflistError::OwnPluginIsPrimary { .. })
    ));
    // A foreign .conflist where ours would go is not overwritten.
    let d = TempDir::new("foreign");
    d.write("10-net.conf", BRIDGE, 0o644);
    d.write("10-net.conflist", CALICO, 0o644);
    let before = d.snapshot();
    assert!(matches!(
        install(d.path(), &entry()),
        Err(ConflistError::TargetExists { .. })
    ));
    assert_eq!(d.snapshot(), before);
}

#[test]
fn plugin_entry_shape() {
    let conf = PluginConf {
        exclude_namespaces: vec!["legacy".into(), "kube-system".into()],
        ..PluginConf::default()
    };
    let e = plugin_entry(&conf, "interceptor-system");
    assert_eq!(e["type"], "interceptor");
    assert_eq!(e["capabilities"]["io.kubernetes.cri.pod-annotations"], true);
    assert_eq!(
        e["exclude_namespaces"],
        json!(["legacy", "kube-system", "interceptor-system"])
    );
    let back = PluginConf::from_object(e.as_object().unwrap()).unwrap();
    assert_eq!(back.exclude_namespaces.len(), 3);
    assert_eq!(back.mode, conf.mode);
    // The entry as the runtime hands it to the plugin parses as a NetConf.
    let d = TempDir::new("entry");
    d.write("10-calico.conflist", CALICO, 0o644);
    install(d.path(), &e).unwrap();
    let mut request = d.json("10-calico.conflist")["plugins"][2].clone();
    request["cniVersion"] = "0.3.1".into();
    request["name"] = "k8s-pod-network".into();
    let nc = crate::spec::NetConf::parse(request.to_string().as_bytes()).unwrap();
    assert_eq!(
        nc.plugin.exclude_namespaces,
        ["legacy", "kube-system", "interceptor-system"]
    );
    // and the entry's keys start with type
    assert!(d
        .read("10-calico.conflist")
        .contains("{\n      \"type\": \"interceptor\",\n      \"capabilities\""));
}
