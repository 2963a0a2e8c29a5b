//! What only the eBPF mode has: pins, links, counters, debug logs, DNS by cgroup
//! sendmsg/recvmsg, `status` (with and without bpffs in sight), and its refusals on
//! machines, mounts or flags it cannot serve.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use interceptor_tests::pod::{Mode, Pod, APP_UID, POD_IP, PROXY_UID, SERVER_IP};
use interceptor_tests::{cni_plugin, interceptor_bin, require_root, run};

fn pin_dir(init_output: &str) -> PathBuf {
    let line = init_output
        .lines()
        .find(|l| l.contains("pinned at"))
        .expect("pin dir line");
    PathBuf::from(line.rsplit("pinned at ").next().unwrap().trim())
}

/// Programs attached to a cgroup, as bpftool lists them (one row per attachment).
fn cgroup_programs(cgroup: &Path) -> Vec<String> {
    let out = run("bpftool", &["cgroup", "show", cgroup.to_str().unwrap()]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// sk_lookup links on the pod's namespace.
fn sk_lookup_links(pod: &Pod) -> usize {
    let ino = run("stat", &["-L", "-c", "%i", &pod.ns.path()]).unwrap();
    let ino = String::from_utf8_lossy(&ino.stdout).trim().to_string();
    let out = run("bpftool", &["link", "show"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("\n")
        .filter(|l| {
            l.contains("netns_ino")
                && l.contains(&format!("netns_ino {ino} "))
                && l.contains("sk_lookup")
        })
        .count()
}

fn counter(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("counter {name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no counter {name} in\n{status}"))
}

/// The status block of this pod's instance.
fn status_of(pod: &Pod, dir: &Path) -> String {
    let out = pod.interceptor(&["status".to_string()]).unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text
        .find(&format!("ebpf {}", dir.display()))
        .unwrap_or_else(|| panic!("{} not in\n{text}", dir.display()));
    let block = &text[start..];
    let end = block[1..]
        .find("\nebpf ")
        .map(|e| e + 1)
        .unwrap_or(block.len());
    block[..end].to_string()
}

#[test]
fn status_lists_links_and_counts_redirects_lookups_and_fast_path_bytes() {
    require_root!();
    let mut pod = Pod::new(Mode::Ebpf).unwrap();
    let dir = pin_dir(&pod.intercept(&[]).unwrap());
    pod.start_sidecar().unwrap();
    pod.start_upstream(8080).unwrap();
    let before = status_of(&pod, &dir);
    assert_eq!(counter(&before, "connects_redirected"), 0);
    let r = pod
        .get_from_pod(APP_UID, APP_UID, &format!("http://{SERVER_IP}:8080/who"))
        .unwrap();
    assert_eq!(r.sidecar.as_deref(), Some("outbound"));

    let s = status_of(&pod, &dir);
    assert!(
        s.contains(&format!("cgroup {} ", pod.cgroup.display())),
        "{s}"
    );
    for link in [
        "connect4",
        "connect6",
        "getsockopt",
        "track_sockets",
        "sendmsg4",
        "recvmsg4",
    ] {
        assert!(
            s.contains(&format!("link {link}: ")) && !s.contains("unreadable"),
            "{link}: {s}"
        );
    }
    assert!(s.contains("link sklookup: sk_lookup on netns"), "{s}");
    assert!(
        s.contains("sk_msg: sk_msg_verdict on sockhash SOCKETS (program id "),
        "{s}"
    );
    assert_eq!(counter(&s, "connects_redirected"), 1, "{s}");
    assert_eq!(counter(&s, "orig_dst_answered"), 1, "{s}");
    // app <-> sidecar on loopback went socket to socket.
    assert!(counter(&s, "sockets_paired") >= 2, "{s}");
    assert!(counter(&s, "skmsg_bytes") > 0, "{s}");
}

#[test]
fn a_second_init_updates_in_place_instead_of_stacking() {
    require_root!();
    let pod = Pod::new(Mode::Ebpf).unwrap();
    let first = pod.intercept(&[]).unwrap();
    let attached = cgroup_programs(&pod.cgroup);
    assert_eq!(attached.len(), 6, "{attached:?}");
    assert_eq!(sk_lookup_links(&pod), 1);
    let second = pod.intercept(&["-o", "9999"]).unwrap();
    assert_eq!(pin_dir(&first), pin_dir(&second));
    assert!(second.contains("connect4 updated in place"), "{second}");
    assert_eq!(cgroup_programs(&pod.cgroup).len(), 6);
    assert_eq!(sk_lookup_links(&pod), 1);
}

#[test]
fn cleanup_leaves_nothing_attached_or_pinned() {
    require_root!();
    let pod = Pod::new(Mode::Ebpf).unwrap();
    let dir = pin_dir(&pod.intercept(&[]).unwrap());
    assert!(dir.join("link_connect4").exists() && dir.join("SETTINGS").exists());
    let out = pod.cleanup().unwrap();
    assert!(out.contains("detached and unpinned"), "{out}");
    assert!(!dir.exists(), "{} still pinned", dir.display());
    assert!(cgroup_programs(&pod.cgroup).is_empty());
    assert_eq!(sk_lookup_links(&pod), 0);
    // A second cleanup finds nothing and says so.
    assert!(pod.cleanup().unwrap().contains("nothing pinned"));
}

#[test]
fn debug_prints_the_programs_logs() {
    require_root!();
    let mut pod = Pod::new(Mode::Ebpf).unwrap();
    pod.start_upstream(8080).unwrap();
    let mut child = pod
        .ns
        .command(interceptor_bin().to_str().unwrap())
        .args(pod.init_args(&["--debug"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return seen;
            }
        }
        panic!("no `{needle}` in {seen:?}");
    };
    wait_for("following eBPF debug logs");
    pod.start_sidecar().unwrap();
    let _ = pod.get_from_pod(APP_UID, APP_UID, &format!("http://{SERVER_IP}:8080/who"));
    let lines = wait_for(&format!("redirect {SERVER_IP}:8080 to port 15001"));
    assert!(
        lines.iter().any(|l| l.starts_with("ebpf DEBUG: ")),
        "{lines:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn dns_over_udp_goes_to_the_proxy_and_the_answer_keeps_the_servers_address() {
    require_root!();
    let mut pod = Pod::new(Mode::Ebpf).unwrap();
    pod.intercept(&["--redirect-dns"]).unwrap();
    // The proxy's DNS listener: answers each query with "proxy:" + the query.
    pod.spawn_as(
        PROXY_UID,
        PROXY_UID,
        "/usr/bin/python3 -c \"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('127.0.0.1',15053))\nwhile True:\n d,a=s.recvfrom(512)\n s.sendto(b'proxy:'+d,a)\"",
    )
    .unwrap();
    // wait for the UDP listener
    for _ in 0..100 {
        let out = pod.ns.sh_output("ss -Hlun 'sport = :15053'").unwrap();
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = format!(
        "/usr/bin/python3 -c \"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(3)\n\
         s.sendto(b'query',('{SERVER_IP}',53))\nd,a=s.recvfrom(512)\nprint(d.decode(),a[0],a[1])\""
    );
    let out = pod.run_as(APP_UID, APP_UID, &client).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("proxy:query {SERVER_IP} 53"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn refusals_name_the_problem_and_suggest_iptables() {
    require_root!();
    let pod = Pod::new(Mode::Ebpf).unwrap();
    let bin = interceptor_bin();
    let bin = bin.to_str().unwrap();
    let cg = pod.cgroup.display().to_string();

    // Not root: no CAP_BPF / CAP_NET_ADMIN.
    let out = pod
        .ns
        .sh_as(
            APP_UID,
            APP_UID,
            &format!("{bin} init --mode ebpf --cgroup {cg}"),
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("CAP_BPF") && err.contains("--mode iptables"),
        "{err}"
    );

    // status, likewise, says it needs root rather than "nothing attached".
    let out = pod
        .ns
        .sh_as(APP_UID, APP_UID, &format!("{bin} status"))
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("needs root"), "{err}");

    // A cgroup v1 hierarchy.
    let v1 = [
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_dir());
    if let Some(v1) = v1 {
        let out = pod
            .ns
            .sh_output(&format!("{bin} init --mode ebpf --cgroup {v1}"))
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("cgroup v2") && err.contains("--mode iptables"),
            "{err}"
        );
    }

    // Flags that only make sense with iptables rules.
    for flags in ["-m TPROXY", "-k eth1"] {
        let out = pod
            .ns
            .sh_output(&format!("{bin} init --mode ebpf --cgroup {cg} {flags}"))
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(flags.split(' ').next().unwrap()),
            "{flags}: {err}"
        );
    }
    // None of the refusals left anything behind.
    assert!(cgroup_programs(&pod.cgroup).is_empty());
    assert_eq!(sk_lookup_links(&pod), 0);
}

#[test]
fn a_failed_attach_is_rolled_back() {
    require_root!();
    let pod = Pod::new(Mode::Ebpf).unwrap();
    let dir = pin_dir(&pod.intercept(&[]).unwrap());
    pod.cleanup().unwrap();
    // Occupy the sk_lookup link's pin with a map: attaching the cgroup programs succeeds,
    // the sk_lookup step fails, and everything before it must be undone.
    std::fs::create_dir_all(&dir).unwrap();
    let bogus = dir.join("link_sklookup");
    run(
        "bpftool",
        &[
            "map",
            "create",
            bogus.to_str().unwrap(),
            "type",
            "array",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "1",
            "name",
            "bogus",
        ],
    )
    .unwrap();
    let out = pod.interceptor(&pod.init_args(&[])).unwrap();
    assert!(!out.status.success(), "init should fail");
    assert!(
        cgroup_programs(&pod.cgroup).is_empty(),
        "{:?}",
        cgroup_programs(&pod.cgroup)
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("link_sklookup")],
        "only the pre-existing pin is left"
    );
    std::fs::remove_file(&bogus).unwrap();
    std::fs::remove_dir(&dir).unwrap();
}

/// Runs `script` with `sh -c` in the pod's network namespace and a private mount namespace
/// of its own (as a container has), where the script may unmount /sys/fs/bpf.
fn in_private_mount_ns(pod: &Pod, script: &str) -> std::process::Output {
    Command::new("nsenter")
        .args([
            &format!("--net={}", pod.ns.path()),
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
}

/// The cgroup id (its inode) that names the pod's pin directories.
fn cgroup_id(pod: &Pod) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(&pod.cgroup).unwrap().ino()
}

/// Pin directories of this pod's cgroup under the host's /sys/fs/bpf/interceptor.
fn host_pins_of(pod: &Pod) -> Vec<String> {
    let prefix = format!("{}-", cgroup_id(pod));
    std::fs::read_dir("/sys/fs/bpf/interceptor")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The cookie of a network namespace (`SO_NETNS_COOKIE`), read from inside it.
fn netns_cookie(ns: Option<&interceptor_tests::Netns>) -> u64 {
    let py = "import socket;s=socket.socket();print(int.from_bytes(s.getsockopt(socket.SOL_SOCKET,71,8),'little'))";
    let out = match ns {
        Some(ns) => ns.command("python3").args(["-c", py]).output().unwrap(),
        None => Command::new("python3").args(["-c", py]).output().unwrap(),
    };
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `interceptor status --json` run on the host, parsed.
fn status_json() -> serde_json::Value {
    let out = Command::new(interceptor_bin())
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints one JSON document")
}

#[test]
fn init_refuses_a_bpffs_that_would_vanish_with_its_mount_namespace() {
    require_root!();
    let pod = Pod::new(Mode::Ebpf).unwrap();
    let init = format!(
        "exec {} init --mode ebpf --cgroup {}",
        interceptor_bin().display(),
        pod.cgroup.display()
    );
    // An init container without the hostPath mount: no bpffs at /sys/fs/bpf, or one of
    // its own. Mounting or using it would print "attached", exit 0, and lose everything
    // when the container's mount namespace ends.
    for setup in [
        "umount -l /sys/fs/bpf",
        "umount -l /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf",
    ] {
        let out = in_private_mount_ns(&pod, &format!("{setup} && {init}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{setup}: init succeeded: {err}");
        assert!(
            err.contains("/sys/fs/bpf is not the host's bpffs")
                && err.contains("mount the host's /sys/fs/bpf into the container (hostPath)"),
            "{setup}: {err}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("attached"),
            "{setup}"
        );
        assert!(cgroup_programs(&pod.cgroup).is_empty(), "{setup}");
        assert_eq!(sk_lookup_links(&pod), 0, "{setup}");
        assert!(host_pins_of(&pod).is_empty(), "{setup}");
    }
    // A private mount namespace that still has the host's bpffs (hostPath) is fine, and
    // the pins land on the host's.
    let out = in_private_mount_ns(&pod, &init);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host_pins_of(&pod).len(), 1);
    assert_eq!(cgroup_programs(&pod.cgroup).len(), 6);
    pod.cleanup().unwrap();
    assert!(host_pins_of(&pod).is_empty());
}

#[test]
fn network_namespace_flag_attaches_to_that_namespace_from_the_host() {
    require_root!();
    let mut pod = Pod::new(Mode::Ebpf).unwrap();
    let bin = interceptor_bin();
    let cg = pod.cgroup.display().to_string();
    let ns = pod.ns.path();
    let pod_cookie = netns_cookie(Some(&pod.ns));
    assert_ne!(pod_cookie, netns_cookie(None));

    // Run from the host's namespace, not through nsenter.
    let out = Command::new(&bin)
        .args([
            "init",
            "--mode",
            "ebpf",
            "--cgroup",
            &cg,
            "--network-namespace",
            &ns,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("in netns cookie {pod_cookie},")),
        "{text}"
    );
    let dir = pin_dir(&text);
    assert!(
        dir.to_string_lossy().ends_with(&format!("-{pod_cookie}")),
        "{text}"
    );
    assert_eq!(
        sk_lookup_links(&pod),
        1,
        "sk_lookup is on the pod's namespace"
    );

    let status = status_json();
    let inst = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["pin_dir"] == dir.display().to_string())
        .unwrap_or_else(|| panic!("{} not in {status}", dir.display()));
    assert_eq!(inst["netns_cookie"], pod_cookie);
    let ino = run("stat", &["-L", "-c", "%i", &ns]).unwrap();
    let ino: u64 = String::from_utf8_lossy(&ino.stdout).trim().parse().unwrap();
    let sklookup = inst["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["program"] == "sklookup")
        .unwrap();
    assert_eq!(sklookup["target"]["netns_inode"], ino, "{inst}");

    // Interception works inside the namespace, both ways (inbound is sk_lookup's).
    pod.start_sidecar().unwrap();
    pod.start_upstream(8080).unwrap();
    pod.start_app_server(8081).unwrap();
    let r = pod
        .get_from_pod(APP_UID, APP_UID, &format!("http://{SERVER_IP}:8080/who"))
        .unwrap();
    assert_eq!(r.sidecar.as_deref(), Some("outbound"));
    let r = pod
        .get_from_outside(&format!("http://{POD_IP}:8081/who"))
        .unwrap();
    assert_eq!(r.sidecar.as_deref(), Some("inbound"));

    // cleanup from the host with the same flag finds and removes it.
    let out = Command::new(&bin)
        .args([
            "cleanup",
            "--mode",
            "ebpf",
            "--cgroup",
            &cg,
            "--network-namespace",
            &ns,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("detached and unpinned"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!dir.exists());
    assert_eq!(sk_lookup_links(&pod), 0);
    assert!(cgroup_programs(&pod.cgroup).is_empty());
}

#[test]
fn istio_init_flags_are_honoured_or_refused_by_name() {
    require_root!();
    let pod = Pod::new(Mode::Ebpf).unwrap();
    for (flags, name) in [
        (&["-t", "5"][..], "-t/--istio-inbound-tproxy-mark"),
        (&["-r", "200"][..], "-r/--istio-inbound-tproxy-route-table"),
        (&["--native-nftables"][..], "--native-nftables"),
        (
            &["--force-iptables-binary", "nft"][..],
            "--force-iptables-binary",
        ),
        (&["-c", "eth9"][..], "-c/--istio-exclude-interfaces"),
        (&["--drop-invalid"][..], "--drop-invalid"),
    ] {
        let out = pod.interceptor(&pod.init_args(flags)).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        assert!(
            err.contains(name) && err.contains("eBPF mode"),
            "{flags:?}: {err}"
        );
    }
    assert!(cgroup_programs(&pod.cgroup).is_empty());
    // The injector's defaults, spelled out, are not refused.
    pod.intercept(&["-m", "REDIRECT", "-t", "1337", "-r", "133"])
        .unwrap();
    pod.cleanup().unwrap();

    // --skip-rule-apply attaches nothing.
    let out = pod.intercept(&["--skip-rule-apply"]).unwrap();
    assert!(out.contains("nothing attached"), "{out}");
    assert!(cgroup_programs(&pod.cgroup).is_empty());
    assert_eq!(sk_lookup_links(&pod), 0);

    // --cleanup-only removes what init made.
    let dir = pin_dir(&pod.intercept(&[]).unwrap());
    let out = pod.intercept(&["--cleanup-only"]).unwrap();
    assert!(out.contains("detached and unpinned"), "{out}");
    assert!(!dir.exists());
    assert!(cgroup_programs(&pod.cgroup).is_empty());
    assert_eq!(sk_lookup_links(&pod), 0);
}

#[test]
fn run_validation_probes_the_redirection_from_the_pods_cgroup() {
    require_root!();
    let pod = Pod::new(Mode::Ebpf).unwrap();
    let cg = pod.cgroup.display().to_string();
    // As the validation container runs: inside the pod's cgroup.
    let in_pod = |extra: &str| {
        pod.ns
            .sh_output(&format!(
                "echo $$ > {cg}/cgroup.procs && exec {} init --mode ebpf --cgroup {cg} {extra}",
                interceptor_bin().display()
            ))
            .unwrap()
    };
    // Nothing attached yet: the probe is not redirected, exit 126 as istio-validation.
    let out = in_pod("--skip-rule-apply --run-validation --probe-timeout 1s");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(126), "{err}");
    assert!(
        err.contains("eBPF validation failed") && err.contains("not being redirected"),
        "{err}"
    );
    assert!(cgroup_programs(&pod.cgroup).is_empty());

    // init + validation, then validation alone.
    let out = in_pod("--run-validation");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("validation passed"));
    let out = in_pod("--skip-rule-apply --run-validation");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Outside the intercepted cgroup a probe proves nothing: refused, saying why.
    let out = pod
        .interceptor(&pod.init_args(&["--skip-rule-apply", "--run-validation"]))
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(126), "{err}");
    assert!(err.contains(&format!("is not --cgroup {cg}")), "{err}");
}

#[test]
fn status_json_and_status_where_bpffs_is_not_visible() {
    require_root!();
    let pod = Pod::new(Mode::Ebpf).unwrap();
    let dir = pin_dir(&pod.intercept(&[]).unwrap());
    let cookie = netns_cookie(Some(&pod.ns));
    let cg_id = cgroup_id(&pod);

    let v = status_json();
    assert_eq!(v["bpffs_visible"], true);
    let inst = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["pin_dir"] == dir.display().to_string())
        .unwrap_or_else(|| panic!("{} not in {v}", dir.display()));
    assert_eq!(inst["netns_cookie"], cookie);
    assert_eq!(inst["cgroup_id"], cg_id);
    assert_eq!(inst["cgroup"], pod.cgroup.display().to_string());
    assert_eq!(inst["links"].as_array().unwrap().len(), 7, "{inst}");
    assert!(inst["counters"]["connects_redirected"].is_u64(), "{inst}");
    assert_eq!(inst["settings"]["proxy_port"], 15001);

    // A mount namespace without bpffs: the pins are out of sight, the programs are not.
    let bin = interceptor_bin();
    let out = in_private_mount_ns(
        &pod,
        &format!("umount -l /sys/fs/bpf && exec {} status", bin.display()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("bpffs is not visible here"), "{text}");
    assert!(!text.contains("nothing attached"), "{text}");
    assert!(
        text.contains(&format!("cgroup {} (id {cg_id})", pod.cgroup.display())),
        "{text}"
    );
    assert!(text.contains(&format!("netns cookie {cookie}")), "{text}");
    for prog in [
        "connect4",
        "track_sockets",
        "getsockopt",
        "sklookup",
        "skmsg",
    ] {
        assert!(
            text.contains(&format!("program {prog} (id ")),
            "{prog}: {text}"
        );
    }

    let out = in_private_mount_ns(
        &pod,
        &format!(
            "umount -l /sys/fs/bpf && exec {} status --json",
            bin.display()
        ),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bpffs_visible"], false);
    assert!(v["instances"].as_array().unwrap().is_empty());
    let ours = v["kernel"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| {
            g["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["netns_cookie"] == cookie)
        })
        .unwrap_or_else(|| panic!("cookie {cookie} not in {v}"));
    assert!(
        ours["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == cg_id),
        "{ours}"
    );
    assert_eq!(ours["programs"].as_array().unwrap().len(), 8, "{ours}");
}

#[test]
fn port_22_is_captured_unless_d_lists_it() {
    require_root!();
    let mut pod = Pod::new(Mode::Ebpf).unwrap();
    pod.start_sidecar().unwrap();
    // An app server on 22 (root: a privileged port).
    let content = std::env::temp_dir().join(interceptor_tests::unique("ssh"));
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("who"), "port22\n").unwrap();
    pod.spawn_as(
        0,
        0,
        &format!(
            "/usr/bin/python3 -m http.server 22 --directory {}",
            content.display()
        ),
    )
    .unwrap();
    pod.ns.wait_listen(22).unwrap();
    let url = format!("http://{POD_IP}:22/who");

    // As istio-iptables: with -b '*', only what -d lists is spared; 22 is not special.
    pod.intercept(&["-b", "*", "-d", "15090"]).unwrap();
    let r = pod.get_from_outside(&url).unwrap();
    assert_eq!(
        (r.sidecar.as_deref(), r.body.trim()),
        (Some("inbound"), "port22")
    );
    pod.intercept(&["-b", "*", "-d", "22,15090"]).unwrap();
    let r = pod.get_from_outside(&url).unwrap();
    assert_eq!((r.sidecar.as_deref(), r.body.trim()), (None, "port22"));
    let _ = std::fs::remove_dir_all(&content);
}

/// A stand-in proxy that answers each connection with the original destination it reads
/// with `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` (as Envoy does for IPv6 listeners).
const V6_ORIG_DST_PROXY: &str = concat!(
    "/usr/bin/python3 -c \"import socket,struct\n",
    "s=socket.socket(socket.AF_INET6,socket.SOCK_STREAM)\n",
    "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n",
    "s.bind(('::1',15001))\n",
    "s.listen(16)\n",
    "while True:\n",
    " c,_=s.accept()\n",
    " try:\n",
    "  v=c.getsockopt(socket.IPPROTO_IPV6,80,28)\n",
    "  port=struct.unpack('!H',v[2:4])[0]\n",
    "  c.sendall(('%s %d' % (socket.inet_ntop(socket.AF_INET6,v[8:24]),port)).encode())\n",
    " except OSError as e:\n",
    "  c.sendall(('error %s' % e).encode())\n",
    " c.close()\""
);

#[test]
fn ipv6_connects_are_redirected_and_answer_the_ipv6_original_destination() {
    require_root!();
    let mut pod = Pod::new(Mode::Ebpf).unwrap();
    pod.intercept(&[]).unwrap();
    pod.spawn_as(PROXY_UID, PROXY_UID, V6_ORIG_DST_PROXY)
        .unwrap();
    pod.ns.wait_listen(15001).unwrap();
    // No route to fd00:231::2 is needed: connect6 rewrites the destination before routing.
    let client = "/usr/bin/python3 -c \"import socket\n\
c=socket.create_connection(('fd00:231::2',8443),timeout=3)\nprint(c.recv(200).decode())\"";
    let out = pod.run_as(APP_UID, APP_UID, client).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "fd00:231::2 8443",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn v4_mapped_connects_of_ipv6_sockets_reach_the_ipv4_sidecar() {
    require_root!();
    let mut pod = Pod::new(Mode::Ebpf).unwrap();
    pod.intercept(&[]).unwrap();
    pod.start_sidecar().unwrap();
    pod.start_upstream(8080).unwrap();
    let client = format!(
        "/usr/bin/python3 -c \"import socket\n\
c=socket.socket(socket.AF_INET6,socket.SOCK_STREAM)\nc.settimeout(5)\n\
c.connect(('::ffff:{SERVER_IP}',8080))\n\
c.sendall(b'GET /who HTTP/1.0\\r\\n\\r\\n')\nd=b''\n\
while True:\n b=c.recv(4096)\n if not b: break\n d+=b\n\
print(d.decode())\""
    );
    let out = pod.run_as(APP_UID, APP_UID, &client).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("x-sidecar: outbound") && text.contains("upstream"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Cgroups below a pod's, one per container as kubelet's and podman's runtimes make them;
/// killed and removed on drop, before the pod's own (declare after the `Pod`).
struct Containers(Vec<PathBuf>);

impl Containers {
    fn new(pod: &Pod, names: &[&str]) -> Containers {
        Containers(
            names
                .iter()
                .map(|n| {
                    let dir = pod.cgroup.join(n);
                    std::fs::create_dir(&dir).unwrap();
                    dir
                })
                .collect(),
        )
    }

    fn path(&self, i: usize) -> String {
        self.0[i].display().to_string()
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while dir.exists()
                && std::fs::remove_dir(dir).is_err()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Runs `script` (sh) in the pod's network namespace from the cgroup `cgroup` (as root).
fn in_cgroup(pod: &Pod, cgroup: &str, script: &str) -> std::process::Output {
    pod.ns
        .sh_output(&format!("echo $$ > {cgroup}/cgroup.procs && {script}"))
        .unwrap()
}

fn ok_stdout(what: &str, out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed_stderr(what: &str, out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{what} succeeded: {}{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

fn inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn cgroup_pod_attaches_to_the_parent_of_the_callers_cgroup_and_covers_its_siblings() {
    require_root!();
    let mut pod = Pod::new(Mode::Ebpf).unwrap();
    let ctrs = Containers::new(&pod, &["init", "app"]);
    let (init_cg, app_cg) = (ctrs.path(0), ctrs.path(1));
    let bin = interceptor_bin().display().to_string();
    let init = format!("exec {bin} init --mode ebpf --cgroup pod");

    // Refusals first, each naming the cgroup id and the tree; nothing is attached by them.
    let id = inode(&init_cg);
    let err = failed_stderr(
        "a tree without the caller",
        &in_cgroup(
            &pod,
            &init_cg,
            &format!("{init} --host-cgroup-root {app_cg}"),
        ),
    );
    assert!(
        err.contains(&format!(
            "--cgroup pod: this container's cgroup (id {id}) is not under {app_cg}: mount the \
             host's /sys/fs/cgroup there (hostPath)"
        )),
        "{err}"
    );
    let err = failed_stderr(
        "a tree that is the caller's own cgroup",
        &in_cgroup(
            &pod,
            &init_cg,
            &format!("{init} --host-cgroup-root {init_cg}"),
        ),
    );
    assert!(
        err.contains(&format!("(id {id}) is the top of {init_cg}")),
        "{err}"
    );
    // A process in a top-level cgroup: its parent is the root, no pod's.
    let cg = pod.cgroup.display().to_string();
    let err = failed_stderr("a top-level cgroup", &in_cgroup(&pod, &cg, &init));
    assert!(
        err.contains(&format!("this process's cgroup {cg} is a top-level cgroup")),
        "{err}"
    );
    assert!(cgroup_programs(&pod.cgroup).is_empty());
    assert!(host_pins_of(&pod).is_empty());

    // The init container: attaches to the pod's cgroup (its parent), pinned by that id.
    let out = ok_stdout("init --cgroup pod", &in_cgroup(&pod, &init_cg, &init));
    assert!(
        out.contains(&format!("intercepting cgroup {cg} in netns cookie")),
        "{out}"
    );
    let dir = pin_dir(&out);
    assert_eq!(
        dir.file_name().unwrap().to_string_lossy(),
        format!("{}-{}", cgroup_id(&pod), netns_cookie(Some(&pod.ns)))
    );
    assert_eq!(cgroup_programs(&pod.cgroup).len(), 6);
    assert!(
        cgroup_programs(&ctrs.0[0]).is_empty(),
        "attached to the init container's cgroup"
    );
    // The init container ends and its cgroup goes; the interception stays.
    std::fs::remove_dir(&ctrs.0[0]).unwrap();

    // The sidecar (uid 1337 on 15001) and an app in a sibling cgroup (uid 1000): its
    // connect lands on the sidecar, which reaches the original destination.
    pod.start_sidecar().unwrap();
    pod.start_upstream(8080).unwrap();
    let curl = format!(
        "exec setpriv --reuid={APP_UID} --regid={APP_UID} --clear-groups -- \
         curl -sS -m 5 -D - http://{SERVER_IP}:8080/who"
    );
    let got = ok_stdout("the app's request", &in_cgroup(&pod, &app_cg, &curl));
    assert!(
        got.to_ascii_lowercase().contains("x-sidecar: outbound") && got.ends_with("upstream\n"),
        "{got}"
    );
    // The same request from outside the pod's cgroup (the root cgroup) is left alone.
    let got = ok_stdout(
        "a request outside the pod",
        &in_cgroup(&pod, "/sys/fs/cgroup/unified", &curl),
    );
    assert!(
        !got.to_ascii_lowercase().contains("x-sidecar") && got.ends_with("upstream\n"),
        "{got}"
    );

    // cleanup from another container of the pod finds the same pins.
    let out = ok_stdout(
        "cleanup --cgroup pod",
        &in_cgroup(
            &pod,
            &app_cg,
            &format!("exec {bin} cleanup --mode ebpf --cgroup pod"),
        ),
    );
    assert!(
        out.contains(&format!("detached and unpinned {}", dir.display())),
        "{out}"
    );
    assert!(!dir.exists());
    assert!(cgroup_programs(&pod.cgroup).is_empty());
    assert_eq!(sk_lookup_links(&pod), 0);
}

#[test]
fn cgroup_pod_in_a_private_cgroup_namespace_finds_the_pod_in_the_host_tree() {
    require_root!();
    let pod = Pod::new(Mode::Ebpf).unwrap();
    let ctrs = Containers::new(&pod, &["init", "app"]);
    let (init_cg, app_cg) = (ctrs.path(0), ctrs.path(1));
    let id = inode(&init_cg);
    let bin = interceptor_bin().display().to_string();
    // Where the host's tree is mounted in the "container" (a mount point on the host's /tmp,
    // bound only inside the container's private mount namespace).
    let host = std::env::temp_dir().join(interceptor_tests::unique("ichostcg"));
    std::fs::create_dir(&host).unwrap();
    let host_s = host.display().to_string();
    struct RmDir(PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _host_dir = RmDir(host.clone());
    // A container as containerd makes one on cgroup v2: a private cgroup namespace rooted
    // at its cgroup, that namespace's cgroup2 at /sys/fs/cgroup (so /proc/self/cgroup says
    // `0::/`), in a mount namespace of its own.
    let container = |setup: &str, command: &str| {
        in_cgroup(
            &pod,
            &init_cg,
            &format!(
                "exec unshare --cgroup --mount --propagation private sh -c '{setup} \
                 grep -qx 0::/ /proc/self/cgroup && exec {bin} {command}'"
            ),
        )
    };
    let k8s = format!(
        "mount --bind /sys/fs/cgroup/unified {host_s} && mount -t cgroup2 cgroup2 /sys/fs/cgroup &&"
    );

    // Without the host's tree the pod's cgroup cannot be seen: refused, naming the mount.
    let err = failed_stderr(
        "init without the host's tree",
        &container(
            "mount -t cgroup2 cgroup2 /sys/fs/cgroup &&",
            "init --mode ebpf --cgroup pod",
        ),
    );
    assert!(
        err.contains(&format!(
            "--cgroup pod: this container's cgroup (id {id}) is the root of its own cgroup \
             namespace, so the pod's cgroup above it is not visible here, and \
             /host/sys/fs/cgroup is not a cgroup2 mount: mount the host's /sys/fs/cgroup there \
             (hostPath)"
        )),
        "{err}"
    );
    assert!(cgroup_programs(&pod.cgroup).is_empty());
    assert!(host_pins_of(&pod).is_empty());

    // With it: the pod's cgroup is found by the container's id, attached and validated (the
    // probe runs in the container's cgroup, below the pod's).
    let pod_in_host = format!(
        "{host_s}/{}",
        pod.cgroup.file_name().unwrap().to_string_lossy()
    );
    let out = ok_stdout(
        "init --cgroup pod with the host's tree",
        &container(
            &k8s,
            &format!("init --mode ebpf --cgroup pod --host-cgroup-root {host_s} --run-validation"),
        ),
    );
    assert!(
        out.contains(&format!(
            "intercepting cgroup {pod_in_host} in netns cookie"
        )),
        "{out}"
    );
    assert!(out.contains("validation passed"), "{out}");
    let dir = pin_dir(&out);
    assert_eq!(
        host_pins_of(&pod),
        vec![dir.file_name().unwrap().to_string_lossy().into_owned()]
    );
    assert_eq!(cgroup_programs(&pod.cgroup).len(), 6);

    // No cgroup2 mounted in the container at all (a host with cgroup v1 controllers, as
    // podman's containers here): the container's id comes from its sockets; same pins.
    let out = ok_stdout(
        "init --cgroup pod with no cgroup2 in the container",
        &container(
            &format!("mount --bind /sys/fs/cgroup/unified {host_s} && umount -l /sys/fs/cgroup/unified &&"),
            &format!("init --mode ebpf --cgroup pod --host-cgroup-root {host_s}"),
        ),
    );
    assert_eq!(pin_dir(&out), dir, "{out}");
    assert!(out.contains("connect4 updated in place"), "{out}");
    assert_eq!(cgroup_programs(&pod.cgroup).len(), 6);

    // cleanup from the app's container (host cgroup namespace here) finds the same pins.
    let out = ok_stdout(
        "cleanup --cgroup pod",
        &in_cgroup(
            &pod,
            &app_cg,
            &format!("exec {bin} cleanup --mode ebpf --cgroup pod"),
        ),
    );
    assert!(out.contains("detached and unpinned"), "{out}");
    assert!(host_pins_of(&pod).is_empty());
    assert!(cgroup_programs(&pod.cgroup).is_empty());
}

// ---------------------------------------------------------------------------------------
// The socket fast path, on and off (`--no-socket-fast-path`).

/// `show info` of the HAProxy whose stats socket is `sock`.
fn haproxy_info(sock: &Path) -> String {
    let py = format!(
        "import socket;s=socket.socket(socket.AF_UNIX);s.connect('{}');s.sendall(b'show info\\n');print(s.makefile().read())",
        sock.display()
    );
    let out = Command::new("python3").args(["-c", &py]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pipes HAProxy has taken for splicing so far (in use or kept for reuse).
fn haproxy_pipes(sock: &Path) -> u64 {
    let info = haproxy_info(sock);
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in HAProxy's show info:\n{info}"))
    };
    field("PipesUsed") + field("PipesFree")
}

/// How many requests the app answered by the upstream makes in a row, each a new
/// connection (`curl` as uid 1000 in the pod's cgroup): the number of `upstream` bodies,
/// and curl's errors.
fn requests_from_app(pod: &Pod, n: usize) -> (usize, String) {
    let url = format!("http://{SERVER_IP}:8080/who");
    let out = pod
        .run_as(
            APP_UID,
            APP_UID,
            &format!("for i in $(seq {n}); do curl -sS -m 5 {url}; done"),
        )
        .unwrap();
    let answered = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim() == "upstream")
        .count();
    (answered, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The requests of the splicing tests; HAProxy with `option splice-request` under the fast
/// path left some of every few unanswered.
const SPLICED_REQUESTS: usize = 20;

#[test]
fn without_the_socket_fast_path_a_splicing_sidecar_answers_every_request() {
    require_root!();
    let mut pod = Pod::new(Mode::Ebpf).unwrap();
    let out = pod.intercept(&["--no-socket-fast-path"]).unwrap();
    assert!(
        out.contains("socket fast path off (--no-socket-fast-path): no socket is paired, skmsg is not attached"),
        "{out}"
    );
    let dir = pin_dir(&out);
    // The six cgroup programs, sockops among them (it hands the original destination to
    // getsockopt), and sk_lookup; only sk_msg is left out.
    assert_eq!(cgroup_programs(&pod.cgroup).len(), 6);
    assert_eq!(sk_lookup_links(&pod), 1);
    let s = status_of(&pod, &dir);
    assert!(s.contains("link track_sockets: sock_ops on cgroup"), "{s}");
    assert!(s.contains(", socket fast path off\n"), "{s}");
    assert!(
        s.contains("sk_msg: not attached to SOCKETS (socket fast path off)"),
        "{s}"
    );

    pod.start_upstream(8080).unwrap();
    // Intercepted: with no sidecar yet, the app's connect to the upstream goes to
    // 127.0.0.1:15001, where nothing listens.
    let (answered, err) = requests_from_app(&pod, 1);
    assert_eq!(answered, 0, "not redirected");
    assert!(
        err.contains("Couldn't connect") || err.contains("refused"),
        "{err}"
    );

    let stats = pod.start_splicing_sidecar().unwrap();
    let (answered, err) = requests_from_app(&pod, SPLICED_REQUESTS);
    assert_eq!(answered, SPLICED_REQUESTS, "{err}");
    // HAProxy did splice: it took pipes.
    assert!(haproxy_pipes(&stats) > 0, "{}", haproxy_info(&stats));

    let s = status_of(&pod, &dir);
    // Every connect went to the sidecar (the refused one too), the sidecar asked each
    // accepted connection for its original destination and got it (it reached the
    // upstream's 8080 with it), and no socket was paired.
    assert_eq!(
        counter(&s, "connects_redirected"),
        SPLICED_REQUESTS as u64 + 1,
        "{s}"
    );
    assert_eq!(
        counter(&s, "orig_dst_answered"),
        SPLICED_REQUESTS as u64,
        "{s}"
    );
    assert_eq!(counter(&s, "sockets_paired"), 0, "{s}");
    assert_eq!(counter(&s, "skmsg_bytes"), 0, "{s}");
    assert!(s.contains("cgroup_getsockopt") && s.contains("link track_sockets"));
}

/// The sk_msg line of a status block.
fn skmsg_line(status: &str) -> String {
    status
        .lines()
        .find(|l| l.trim_start().starts_with("sk_msg: "))
        .unwrap_or_else(|| panic!("no sk_msg line in\n{status}"))
        .trim()
        .to_string()
}

#[test]
fn the_socket_fast_path_is_turned_off_and_on_again_in_place() {
    require_root!();
    let mut pod = Pod::new(Mode::Ebpf).unwrap();
    let out = pod.intercept(&[]).unwrap();
    assert!(
        out.contains("socket fast path on: skmsg attached to sockhash SOCKETS"),
        "{out}"
    );
    let dir = pin_dir(&out);
    pod.start_sidecar().unwrap();
    pod.start_upstream(8080).unwrap();
    let url = format!("http://{SERVER_IP}:8080/who");
    let get = |pod: &Pod| {
        let r = pod.get_from_pod(APP_UID, APP_UID, &url).unwrap();
        assert_eq!(
            (r.sidecar.as_deref(), r.body.trim()),
            (Some("outbound"), "upstream")
        );
    };

    // On (the default): app <-> sidecar on loopback go socket to socket.
    get(&pod);
    let on = status_of(&pod, &dir);
    assert!(on.contains(", socket fast path on\n"), "{on}");
    assert!(
        skmsg_line(&on).starts_with("sk_msg: sk_msg_verdict on sockhash SOCKETS (program id "),
        "{on}"
    );
    let paired = counter(&on, "sockets_paired");
    let bytes = counter(&on, "skmsg_bytes");
    assert!(paired >= 2 && bytes > 0, "{on}");

    // Off, on the running instance: sk_msg taken off the sockhash, no new pairing, and
    // the interception goes on as before.
    let out = pod.intercept(&["--no-socket-fast-path"]).unwrap();
    assert!(out.contains("connect4 updated in place"), "{out}");
    assert!(out.contains("skmsg taken off sockhash SOCKETS"), "{out}");
    assert_eq!(cgroup_programs(&pod.cgroup).len(), 6);
    get(&pod);
    let off = status_of(&pod, &dir);
    assert!(off.contains(", socket fast path off\n"), "{off}");
    assert_eq!(
        skmsg_line(&off),
        "sk_msg: not attached to SOCKETS (socket fast path off)"
    );
    assert_eq!(counter(&off, "sockets_paired"), paired, "{off}");
    assert_eq!(counter(&off, "skmsg_bytes"), bytes, "{off}");
    assert_eq!(
        counter(&off, "orig_dst_answered"),
        counter(&on, "orig_dst_answered") + 1,
        "{off}"
    );

    // On again.
    let out = pod.intercept(&[]).unwrap();
    assert!(out.contains("skmsg attached to sockhash SOCKETS"), "{out}");
    get(&pod);
    let again = status_of(&pod, &dir);
    assert!(again.contains(", socket fast path on\n"), "{again}");
    assert!(
        skmsg_line(&again).starts_with("sk_msg: sk_msg_verdict on sockhash SOCKETS"),
        "{again}"
    );
    assert!(counter(&again, "sockets_paired") >= paired + 2, "{again}");
    assert!(counter(&again, "skmsg_bytes") > bytes, "{again}");
}

#[test]
fn a_failed_init_without_the_fast_path_puts_everything_back() {
    require_root!();
    let pod = Pod::new(Mode::Ebpf).unwrap();
    let dir = pin_dir(&pod.intercept(&[]).unwrap());
    let before = status_of(&pod, &dir);
    let line = |s: &str, start: &str| -> String {
        s.lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no {start} in\n{s}"))
            .to_string()
    };
    // Make the sk_lookup step fail: its link's pin is now a map. The cgroup links are
    // updated and sk_msg taken off the sockhash before that step, so all of it must be
    // put back.
    let pin = dir.join("link_sklookup");
    std::fs::remove_file(&pin).unwrap();
    run(
        "bpftool",
        &[
            "map",
            "create",
            pin.to_str().unwrap(),
            "type",
            "array",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "1",
            "name",
            "bogus",
        ],
    )
    .unwrap();
    let out = pod
        .interceptor(&pod.init_args(&["--no-socket-fast-path"]))
        .unwrap();
    assert!(!out.status.success(), "init should fail");
    let after = status_of(&pod, &dir);
    assert_eq!(skmsg_line(&after), skmsg_line(&before), "{after}");
    assert!(skmsg_line(&after).contains("sk_msg_verdict"), "{after}");
    for start in ["settings: ", "link connect4: ", "link track_sockets: "] {
        assert_eq!(line(&after, start), line(&before, start), "{start}");
    }
    assert!(after.contains(", socket fast path on\n"), "{after}");
    std::fs::remove_file(&pin).unwrap();
}

/// A child process killed when dropped (the node agent of a test that fails half way).
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The node agent's way: `agent --mode ebpf --no-socket-fast-path` writes
/// `"socket_fast_path": false` into its conflist entry, the plugin's ADD registers the pod
/// with the node's shared programs with the namespace's "no fast path" bit, and sockops
/// pairs none of its sockets, so a splicing sidecar answers every request.
#[test]
fn the_node_agents_pods_get_no_socket_fast_path_from_the_conflist() {
    require_root!();
    let mut pod = Pod::new(Mode::Ebpf).unwrap();
    let root = std::env::temp_dir().join(interceptor_tests::unique("icfast"));
    let (conf, bin, state) = (root.join("net.d"), root.join("bin"), root.join("state"));
    for d in [&conf, &bin, &state] {
        std::fs::create_dir_all(d).unwrap();
    }
    let primary = conf.join("10-test.conflist");
    std::fs::write(
        &primary,
        r#"{"cniVersion": "1.0.0", "name": "fastpath", "plugins": [{"type": "bridge", "bridge": "icfast0"}]}"#,
    )
    .unwrap();
    // The node's programs go on the pod's cgroup (--cgroup-root), not the whole machine's.
    let mut child = Command::new(interceptor_bin())
        .args([
            "agent",
            "--mode",
            "ebpf",
            "--no-socket-fast-path",
            "--cgroup-root",
        ])
        .arg(&pod.cgroup)
        .arg("--cni-conf-dir")
        .arg(&conf)
        .arg("--cni-bin-dir")
        .arg(&bin)
        .arg("--state-dir")
        .arg(&state)
        .args(["--namespaces", "fastpath", "--listen", "127.0.0.1:0"])
        .args(["--reconcile-interval", "0.5"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_addr, log) = interceptor_tests::agent_listening(&mut child);
    let mut agent = KillOnDrop(Some(child));
    let entry = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&primary).unwrap()).unwrap();
            let last = v["plugins"].as_array().unwrap().last().unwrap().clone();
            if last["type"] == "interceptor" {
                break last;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent did not install its entry:\n{}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(entry["mode"], "ebpf", "{entry}");
    assert_eq!(entry["socket_fast_path"], false, "{entry}");

    // The runtime's ADD for a pod of a listed namespace (no annotations, as podman).
    let mut rt = entry.clone();
    rt["cniVersion"] = "1.0.0".into();
    rt["name"] = "fastpath".into();
    rt["prevResult"] = serde_json::json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": pod.ns.path()}],
        "ips": [{"address": format!("{POD_IP}/24"), "interface": 0}],
    });
    let id = interceptor_tests::unique("fastpathpod");
    let netns = pod.ns.path();
    let env = [
        ("CNI_CONTAINERID", id.as_str()),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=fastpath;K8S_POD_NAME=web"),
    ];
    let out = cni_plugin("ADD", &env, &rt);
    assert!(
        out.status.success(),
        "ADD: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.join("pods").join(format!("{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["args"].as_array().unwrap().last().unwrap(),
        "--no-socket-fast-path",
        "{record}"
    );
    let cookie = record["netns_cookie"].as_u64().unwrap();
    assert_eq!(cookie, netns_cookie(Some(&pod.ns)));

    pod.start_upstream(8080).unwrap();
    let stats = pod.start_splicing_sidecar().unwrap();
    let (answered, err) = requests_from_app(&pod, SPLICED_REQUESTS);
    assert_eq!(answered, SPLICED_REQUESTS, "{err}");
    assert!(haproxy_pipes(&stats) > 0, "{}", haproxy_info(&stats));

    // `status`: the pod, healthy, without the fast path; its namespace's settings and
    // counters in the node's maps.
    let out = Command::new(interceptor_bin())
        .arg("status")
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pod fastpath/web mode ebpf (socket fast path off) healthy"),
        "{text}"
    );
    let v = status_json();
    let ns = v["kernel"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["namespaces"].as_array().unwrap().iter())
        .find(|n| n["netns_cookie"] == cookie)
        .unwrap_or_else(|| panic!("cookie {cookie} not in {v}"))
        .clone();
    assert_eq!(ns["settings"]["socket_fast_path"], false, "{ns}");
    assert_eq!(
        ns["counters"]["connects_redirected"], SPLICED_REQUESTS as u64,
        "{ns}"
    );
    assert_eq!(
        ns["counters"]["orig_dst_answered"], SPLICED_REQUESTS as u64,
        "{ns}"
    );
    assert_eq!(ns["counters"]["sockets_paired"], 0, "{ns}");
    assert_eq!(ns["counters"]["skmsg_bytes"], 0, "{ns}");

    let out = cni_plugin("DEL", &env, &rt);
    assert!(
        out.status.success(),
        "DEL: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut child = agent.0.take().unwrap();
    run("kill", &["-TERM", &child.id().to_string()]).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}:\n{}", log.lock().unwrap());
    assert!(!Path::new("/sys/fs/bpf/interceptor/node").exists());
    let _ = std::fs::remove_dir_all(&root);
}
