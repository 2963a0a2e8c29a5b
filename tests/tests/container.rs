//! The image `cargo xtask image` builds, run by podman as a pod's init container with the
//! exact arguments istio's injector gives istio-init, then the pod's network namespace
//! checked: the ruleset, and where traffic goes (an app container, a sidecar entered into
//! the namespace, a client on the host).
//!
//! Needs root, podman, buildah and the rest of `scripts/setup.sh`; a test that cannot run
//! fails with what is missing. The image is built once per run and shared by the tests.

use std::collections::BTreeMap;

use interceptor_tests::podman::{self, exit_code, logs, Pod, Rootfs};
use interceptor_tests::{unique, Netns};

/// The init container's podman options, as the injector's securityContext has them.
const INIT_OPTS: &[&str] = &[
    "--cap-drop",
    "ALL",
    "--cap-add",
    "NET_ADMIN",
    "--cap-add",
    "NET_RAW",
    "--user",
    "0:0",
];

/// The validation container's options (istio-validation: the proxy's uid, no capability).
const VALIDATION_OPTS: &[&str] = &["--user", "1337:1337", "--cap-drop", "ALL", "--read-only"];

/// The injector's arguments followed by `extra`.
fn args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut a = interceptor_tests::INJECTOR_ARGS.to_vec();
    a.extend_from_slice(extra);
    a
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A started pod whose init container ran our image with the injector's arguments plus
/// `extra`; panics (with the container's logs) unless it exited 0. Returns the pod and the
/// init container's logs.
fn pod_with_init(prefix: &str, extra: &[&'static str]) -> (Pod, String) {
    let image = podman::image();
    let mut pod = Pod::new(prefix);
    let mut create: Vec<&str> = INIT_OPTS.to_vec();
    create.push(image);
    let a = args(extra);
    create.extend_from_slice(&a);
    let init = pod.add_init("init", &create);
    let started = pod.start();
    let logs = logs(&init);
    assert!(
        started.status.success(),
        "podman pod start (init container {init}) failed: {}\ninit container logs:\n{logs}",
        text(&started)
    );
    let code = exit_code(&init);
    assert_eq!(
        code, 0,
        "init container {init} exited {code}; logs:\n{logs}"
    );
    (pod, logs)
}

/// `interceptor <injector args> --dry-run`, run from the image (no network, no capability).
fn dry_run() -> String {
    let image = podman::image();
    let mut a = vec!["run", "--rm", "--network", "none", image];
    let injector = args(&["--dry-run"]);
    a.extend_from_slice(&injector);
    let out = podman::podman(&a);
    assert!(out.status.success(), "dry run failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One table as `iptables-save` prints it: chain -> (policy, rules), with counters, comment
/// matches and `#` lines dropped.
type Table = BTreeMap<String, (String, Vec<String>)>;

fn normalise(save: &str) -> Table {
    let mut t = Table::new();
    for line in save.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let mut w = decl.split_whitespace();
            let chain = w.next().unwrap().to_string();
            t.entry(chain).or_default().0 = w.next().unwrap_or("-").to_string();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            t.entry(chain.to_string())
                .or_default()
                .1
                .push(without_comment(rule));
        }
    }
    t
}

/// `rule` less `-m comment --comment X` (X a word or a double-quoted string).
fn without_comment(rule: &str) -> String {
    let Some(at) = rule.find("-m comment --comment ") else {
        return rule.trim().to_string();
    };
    let rest = &rule[at + "-m comment --comment ".len()..];
    let after = if let Some(q) = rest.strip_prefix('"') {
        let mut end = 0;
        let mut escaped = false;
        for (i, c) in q.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = i + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        &q[end..]
    } else {
        rest.split_once(' ').map(|(_, r)| r).unwrap_or("")
    };
    format!("{} {}", rule[..at].trim(), after.trim())
        .trim()
        .to_string()
}

/// The IPv4 part of a dry run (what iptables-restore gets).
fn ipv4_part(dry: &str) -> &str {
    dry.split("# ip6tables-restore").next().unwrap()
}

/// HAProxy as the sidecar: 15001 and 15006 answer with the original destination they read
/// (SO_ORIGINAL_DST, as Envoy does), 15021 (health, excluded from capture) answers
/// `direct-15021`.
const SIDECAR_CFG: &str = r#"global
    maxconn 256
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend outbound
    bind 0.0.0.0:15001
    http-request return status 200 content-type text/plain lf-string "sidecar-15001 %[dst]:%[dst_port]\n"
frontend inbound
    bind 0.0.0.0:15006
    http-request return status 200 content-type text/plain lf-string "sidecar-15006 %[dst]:%[dst_port]\n"
frontend health
    bind 0.0.0.0:15021
    http-request return status 200 content-type text/plain string "direct-15021\n"
"#;

/// A file removed on drop, readable by every uid.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        let p = std::env::temp_dir().join(unique("icsidecar"));
        std::fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `curl` from the host (outside the pod) to the pod.
fn curl_from_host(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["--noproxy", "*", "-sS", "-m", "5", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {url} from the host: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn init_container_installs_istio_rules_and_traffic_goes_through_the_sidecar() {
    podman::require();
    let (mut pod, init_logs) = pod_with_init("icinit", &[]);

    // Logs: the configuration and the iptables-restore input, no terminal colours.
    assert!(
        !init_logs.contains('\x1b'),
        "ANSI escape codes in the init container's logs:\n{init_logs:?}"
    );
    let dry = dry_run();
    let restore_lines: Vec<&str> = ipv4_part(&dry)
        .lines()
        .filter(|l| l.starts_with("-A ") || l.starts_with('*') || l.starts_with(':'))
        .collect();
    assert!(restore_lines.len() > 10, "dry run printed no rules:\n{dry}");
    for l in &restore_lines {
        assert!(
            init_logs.contains(l),
            "the init container's logs lack the restore line `{l}`:\n{init_logs}"
        );
    }
    // The configuration: every flag's value, the exclusion list as given (which no rule
    // line spells that way).
    let config_text: String = init_logs
        .lines()
        .filter(|l| !restore_lines.iter().any(|r| l.contains(r)))
        .collect::<Vec<_>>()
        .join("\n");
    for value in ["15001", "15006", "1337", "REDIRECT", "15090,15021,15020"] {
        assert!(
            config_text.contains(value),
            "the init container's logs do not show the configuration (no `{value}` outside \
             the restore input):\n{init_logs}"
        );
    }

    // The pod's nat table is exactly what the dry run's input loads into a fresh namespace.
    let reference = Netns::new("icref").unwrap();
    let input = std::env::temp_dir().join(unique("icdry"));
    std::fs::write(&input, ipv4_part(&dry)).unwrap();
    let loaded = reference.sh(&format!("iptables-restore --noflush < {}", input.display()));
    let _ = std::fs::remove_file(&input);
    loaded.unwrap();
    let expected = normalise(&reference.sh("iptables-save -t nat").unwrap());
    let actual = normalise(&pod.sh("iptables-save -t nat"));
    assert_eq!(
        actual, expected,
        "the pod's nat table differs from the dry run's"
    );
    let filter = normalise(&pod.sh("iptables-save -t filter"));
    assert!(
        filter.values().all(|(_, rules)| rules.is_empty()),
        "rules outside the nat table: {filter:?}"
    );

    // Traffic. The sidecar (uid 1337) in the pod's namespace.
    let cfg = TempFile::new(SIDECAR_CFG);
    pod.spawn_as(
        1337,
        1337,
        "haproxy",
        &["-db", "-f", cfg.0.to_str().unwrap()],
    );
    for port in [15001, 15006, 15021] {
        pod.wait_listen(port);
    }
    // Outbound: an app container (busybox, uid 1000) to an address outside the pod lands on
    // the sidecar's 15001, which sees the original destination.
    // (nc, not wget: bookworm's busybox-static wget dies of SIGSEGV, even on the host.)
    let rootfs = Rootfs::busybox(&["sh", "nc", "printf"]);
    let out = pod.run(
        "app",
        &[
            "--user",
            "1000:1000",
            "--rootfs",
            rootfs.path(),
            "sh",
            "-c",
            r"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 10.99.0.1 8080",
        ],
    );
    let answer = text(&out);
    assert!(
        out.status.success() && answer.contains("sidecar-15001 10.99.0.1:8080"),
        "the app's outbound request did not reach the sidecar on 15001: {answer}"
    );
    // Inbound from the host to the pod's IP: 8080 lands on 15006, 15021 is left alone.
    let ip = pod.ip();
    assert_eq!(
        curl_from_host(&format!("http://{ip}:8080/")),
        format!("sidecar-15006 {ip}:8080"),
        "inbound to 8080 did not land on the sidecar's 15006"
    );
    assert_eq!(
        curl_from_host(&format!("http://{ip}:15021/")),
        "direct-15021",
        "inbound to 15021 (excluded with -d) was redirected"
    );
}

#[test]
fn validation_container_exits_0_with_the_rules_and_126_without() {
    podman::require();
    let image = podman::image();
    let validation = |pod: &Pod, name: &str| -> (i32, String) {
        let mut a: Vec<&str> = VALIDATION_OPTS.to_vec();
        a.push(image);
        let injector = args(&["--run-validation", "--skip-rule-apply"]);
        a.extend_from_slice(&injector);
        let out = pod.run(name, &a);
        let ctr = format!("{}-{name}", pod.name);
        let code = exit_code(&ctr);
        (code, format!("{}\nlogs:\n{}", text(&out), logs(&ctr)))
    };

    // A pod whose init container applied the rules; the sidecar has not started yet (in
    // Kubernetes, istio-validation runs before it), so the probe's ports are free.
    let (with_rules, _) = pod_with_init("icval", &[]);
    let (code, out) = validation(&with_rules, "validation");
    assert_eq!(
        code, 0,
        "validation in a pod with the rules exited {code}: {out}"
    );

    // A pod without them.
    let mut bare = Pod::new("icbare");
    let started = bare.start();
    assert!(
        started.status.success(),
        "podman pod start: {}",
        text(&started)
    );
    let (code, out) = validation(&bare, "validation");
    assert_eq!(
        code, 126,
        "validation in a pod without the rules exited {code}, not 126: {out}"
    );
    assert!(
        out.contains("validation failed"),
        "exit 126 without saying validation failed: {out}"
    );
}

#[test]
fn log_as_json_writes_one_json_object_per_line() {
    podman::require();
    let (_pod, logs) = pod_with_init("icjson", &["--log_as_json"]);
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "--log_as_json: no log lines");
    for l in &lines {
        let v: Result<serde_json::Value, _> = serde_json::from_str(l);
        assert!(
            matches!(v, Ok(serde_json::Value::Object(_))),
            "--log_as_json: not a JSON object: {l:?}\nall logs:\n{logs}"
        );
    }
}

/// The eBPF init container's podman options, as deploy/pod-ebpf.yaml's securityContext and
/// volumes have them: the host's bpffs and cgroup2 tree mounted, the capabilities that
/// manifest adds, and a private cgroup namespace as containerd and CRI-O give on cgroup v2
/// (podman's default on a cgroup v1 host is the host's namespace, where the pod's cgroup
/// would be in sight without the mount).
fn ebpf_opts() -> Vec<String> {
    let cg2 = podman::cgroup2_root();
    [
        "--cap-drop",
        "ALL",
        "--cap-add",
        "BPF",
        "--cap-add",
        "NET_ADMIN",
        "--cap-add",
        "SYS_ADMIN",
        "--user",
        "0:0",
        "--read-only",
        "--cgroupns",
        "private",
        "-v",
        "/sys/fs/bpf:/sys/fs/bpf",
        "-v",
        &format!("{}:/host/sys/fs/cgroup:ro", cg2.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What the test attached: removed on drop unless the test's own cleanup did it, from
/// the host, by the pod cgroup's path in the pod's namespace.
struct EbpfPins {
    dir: std::path::PathBuf,
    cgroup: std::path::PathBuf,
    netns: String,
}

impl Drop for EbpfPins {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = std::process::Command::new(interceptor_tests::interceptor_bin())
                .args(["cleanup", "--mode", "ebpf", "--cgroup"])
                .arg(&self.cgroup)
                .args(["--network-namespace", &self.netns])
                .output();
        }
    }
}

/// A cgroup the test makes below the pod's for a process it enters (the sidecar's
/// "container"); its processes killed and the directory removed on drop, before the pod
/// (declare it after the `Pod`).
struct ChildCgroup(std::path::PathBuf);

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.0.exists()
            && std::fs::remove_dir(&self.0).is_err()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Programs attached to a cgroup, as bpftool lists them (one row per attachment).
fn cgroup_programs(cgroup: &std::path::Path) -> usize {
    let out = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("running bpftool");
    String::from_utf8_lossy(&out.stdout).lines().skip(1).count()
}

#[test]
fn ebpf_init_container_with_cgroup_pod_intercepts_the_app_container() {
    podman::require();
    let image = podman::image();
    let mut pod = Pod::new("icebpf");
    let opts = ebpf_opts();
    let mut create: Vec<&str> = opts.iter().map(String::as_str).collect();
    create.push(image);
    create.extend_from_slice(&["init", "--mode", "ebpf", "--cgroup", "pod"]);
    create.extend_from_slice(&interceptor_tests::INJECTOR_ARGS[1..]);
    let init = pod.add_init("init", &create);
    let started = pod.start();
    let init_logs = logs(&init);
    assert!(
        started.status.success() && exit_code(&init) == 0,
        "podman pod start (init container {init}) failed: {}\ninit container logs:\n{init_logs}",
        text(&started)
    );

    // The init container found the pod's cgroup, its parent, in the host's tree, and pinned
    // what it attached there by that cgroup's id.
    let pod_cg = pod.cgroup();
    let rel = pod_cg
        .strip_prefix(podman::cgroup2_root())
        .unwrap()
        .display()
        .to_string();
    assert!(
        init_logs.contains(&format!(
            "ebpf: intercepting cgroup /host/sys/fs/cgroup/{rel} in netns cookie"
        )),
        "{init_logs}"
    );
    let dir = init_logs
        .lines()
        .find_map(|l| l.split("pinned at ").nth(1))
        .map(|d| std::path::PathBuf::from(d.trim()))
        .unwrap_or_else(|| panic!("no pin directory in the init container's logs:\n{init_logs}"));
    let _pins = EbpfPins {
        dir: dir.clone(),
        cgroup: pod_cg.clone(),
        netns: pod.netns(),
    };
    use std::os::unix::fs::MetadataExt;
    let pod_id = std::fs::metadata(&pod_cg).unwrap().ino();
    assert!(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("{pod_id}-")),
        "{} is not keyed by the pod cgroup's id {pod_id}",
        dir.display()
    );
    assert!(dir.exists(), "{} is not on the host's bpffs", dir.display());
    assert_eq!(
        cgroup_programs(&pod_cg),
        6,
        "programs on {}",
        pod_cg.display()
    );

    // The sidecar (HAProxy, uid 1337) in a container cgroup of the pod, and an app
    // container (busybox, uid 1000): its outbound connect lands on 15001 and the sidecar
    // reads the original destination (SO_ORIGINAL_DST, answered by cgroup/getsockopt).
    let cfg = TempFile::new(SIDECAR_CFG);
    let sidecar = ChildCgroup(pod_cg.join("sidecar"));
    std::fs::create_dir(&sidecar.0).unwrap();
    pod.spawn_in_cgroup_as(
        &sidecar.0,
        1337,
        1337,
        "haproxy",
        &["-db", "-f", cfg.0.to_str().unwrap()],
    );
    pod.wait_listen(15001);
    let rootfs = Rootfs::busybox(&["sh", "nc", "printf"]);
    let request = r"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 10.99.0.1 8080";
    let app = |name: &str| {
        pod.run(
            name,
            &[
                "--user",
                "1000:1000",
                "--rootfs",
                rootfs.path(),
                "sh",
                "-c",
                request,
            ],
        )
    };
    let out = app("app");
    let answer = text(&out);
    assert!(
        out.status.success() && answer.contains("sidecar-15001 10.99.0.1:8080"),
        "the app's outbound request did not reach the sidecar on 15001 with its original \
         destination: {answer}"
    );

    // cleanup from another container of the pod resolves the same cgroup and pins.
    let mut a: Vec<&str> = opts.iter().map(String::as_str).collect();
    a.extend_from_slice(&[image, "cleanup", "--mode", "ebpf", "--cgroup", "pod"]);
    let out = pod.run("cleanup", &a);
    assert!(
        out.status.success()
            && text(&out).contains(&format!("detached and unpinned {}", dir.display())),
        "cleanup --cgroup pod: {}",
        text(&out)
    );
    assert!(!dir.exists(), "{} still pinned", dir.display());
    assert_eq!(cgroup_programs(&pod_cg), 0);
    let out = app("app2");
    assert!(
        !text(&out).contains("sidecar-15001"),
        "redirected after cleanup: {}",
        text(&out)
    );
}
