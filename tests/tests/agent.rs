//! The node-level DaemonSet mode: `interceptor agent` installing itself as a chained CNI
//! plugin, and the plugin run by a real runtime.
//!
//! - podman 4.3 with the CNI backend runs every plugin of a test network's conflist (bridge,
//!   host-local, portmap, then ours once the agent has installed it) on `podman run` and
//!   `podman rm`, with `CNI_ARGS` taken from its own environment: that is how a container
//!   gets a Kubernetes namespace here.
//! - A runtime written here calls the plugin as CRI-O and containerd do (runtimeConfig pod
//!   annotations, `K8S_POD_*` in `CNI_ARGS`, each spec version) against real network
//!   namespaces.
//!
//! eBPF mode pins the node's programs at one fixed place (`/sys/fs/bpf/interceptor/node`),
//! so the tests that need them take `NODE_EBPF` and run one at a time. Nothing skips: a
//! missing tool or a run without root fails.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use interceptor_tests::podman::{self, Rootfs};
use interceptor_tests::{
    cni_plugin, interceptor_bin, missing_tools, output_text, require_root, run, wait_for, Netns,
};
use serde_json::{json, Value};

const NODE_DIR: &str = "/sys/fs/bpf/interceptor/node";
const MESHED_NS: &str = "istioinaction";
/// What istio's injector passes istio-init, as the plugin decides it for a pod the runtime
/// passed no annotations for.
#[rustfmt::skip]
const INJECTOR_DEFAULT_ARGS: &[&str] = &[
    "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
    "-d", "15090,15021,15020", "-g", "1337", "-q", "", "-o", "", "-k", "", "-c", "",
    "--redirect-dns=false", "--capture-all-dns=false", "--drop-invalid=false",
    "--dual-stack=false",
];

/// One eBPF-mode agent (or test of the node programs) at a time.
static NODE_EBPF: Mutex<()> = Mutex::new(());

fn node_ebpf_lock() -> MutexGuard<'static, ()> {
    NODE_EBPF.lock().unwrap_or_else(|e| e.into_inner())
}

fn require_tools() {
    require_root!();
    podman::require();
    let missing = missing_tools(&["bpftool", "ip", "python3", "ss"]);
    assert!(
        missing.is_empty(),
        "the agent tests need {}: run `sudo bash scripts/setup.sh`",
        missing.join(", ")
    );
    for plugin in ["bridge", "host-local", "portmap"] {
        assert!(
            Path::new("/usr/lib/cni").join(plugin).is_file(),
            "the agent tests need the CNI plugin {plugin} in /usr/lib/cni (containernetworking-plugins)"
        );
    }
}

/// A CNI setup of our own: a conf dir whose primary conflist is a bridge network (like
/// podman's default), a bin dir the agent installs into, a state dir, and the
/// containers.conf that makes podman use them.
struct Node {
    root: PathBuf,
    conf: PathBuf,
    bin: PathBuf,
    state: PathBuf,
    containers_conf: PathBuf,
    network: String,
    bridge: String,
    primary: PathBuf,
    original: Vec<u8>,
    rootfs: Rootfs,
}

/// Unique names (containers, state dirs) within this test process.
static SUBNET: AtomicU32 = AtomicU32::new(0);
/// Nodes of this test process: each gets its own /24.
static NODES: AtomicU32 = AtomicU32::new(0);

impl Node {
    fn new() -> Node {
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}x{n}", std::process::id() % 10_000);
        let root = std::env::temp_dir().join(format!("icagent-{id}"));
        let _ = std::fs::remove_dir_all(&root);
        let (conf, bin, state) = (root.join("net.d"), root.join("bin"), root.join("state"));
        for d in [&conf, &bin, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        let network = format!("icag{id}");
        let bridge = format!("cni-ag{id}");
        // A /24 per node of this process, away from podman's 10.88/16 and the other tests'.
        let third = (std::process::id() % 40) * 6 + n % 6;
        let primary = conf.join("10-test.conflist");
        let original = format!(
            r#"{{
  "cniVersion": "0.4.0",
  "name": "{network}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{bridge}",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "routes": [{{ "dst": "0.0.0.0/0" }}],
        "ranges": [[{{ "subnet": "10.213.{third}.0/24", "gateway": "10.213.{third}.1" }}]]
      }}
    }},
    {{
      "type": "portmap",
      "capabilities": {{ "portMappings": true }}
    }}
  ]
}}
"#
        )
        .into_bytes();
        std::fs::write(&primary, &original).unwrap();
        let containers_conf = root.join("containers.conf");
        std::fs::write(
            &containers_conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{}\"\n\
                 cni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n",
                conf.display(),
                bin.display()
            ),
        )
        .unwrap();
        Node {
            root,
            conf,
            bin,
            state,
            containers_conf,
            network,
            bridge,
            primary,
            original,
            rootfs: Rootfs::busybox(&["sh", "sleep"]),
        }
    }

    fn podman(&self, args: &[&str], cni_args: &str) -> Output {
        Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", &self.containers_conf)
            .env("CNI_ARGS", cni_args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("podman {}: {e}", args.join(" ")))
    }

    /// `podman run -d` of a sleeping busybox container in namespace `ns`.
    fn container(&self, ns: &str) -> Container<'_> {
        let name = format!(
            "{}c{}",
            self.network,
            SUBNET.fetch_add(1, Ordering::Relaxed)
        );
        let out = self.podman(
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &self.network,
                "--rootfs",
                self.rootfs.path(),
                "sleep",
                "3600",
            ],
            &format!("K8S_POD_NAMESPACE={ns};K8S_POD_UID=uid-{name}"),
        );
        assert!(
            out.status.success(),
            "podman run {name}: {}",
            output_text(&out)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let netns = self
            .podman(
                &[
                    "inspect",
                    "--format",
                    "{{.NetworkSettings.SandboxKey}}",
                    &name,
                ],
                "",
            )
            .stdout;
        let netns = String::from_utf8_lossy(&netns).trim().to_string();
        assert!(
            netns.starts_with('/'),
            "no network namespace for {name}: {netns:?}"
        );
        Container {
            node: self,
            name,
            id,
            netns,
            removed: false,
        }
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.state.join("pods").join(format!("{id}.json"))
    }

    fn record(&self, id: &str) -> Option<Value> {
        let text = std::fs::read(self.record_path(id)).ok()?;
        Some(serde_json::from_slice(&text).expect("a record is JSON"))
    }

    fn conflist(&self) -> Vec<u8> {
        std::fs::read(&self.primary).unwrap()
    }

    fn has_our_entry(&self) -> bool {
        let v: Value = serde_json::from_slice(&self.conflist()).unwrap();
        v["plugins"]
            .as_array()
            .and_then(|p| p.last())
            .is_some_and(|last| last["type"] == "interceptor")
    }

    fn agent(&self, mode: &str) -> Agent {
        Agent::start(self, mode, &[])
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = std::fs::remove_dir_all(&self.root);
        // host-local keeps its leases under /var/lib/cni/networks/<network>.
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&self.network));
    }
}

struct Container<'a> {
    node: &'a Node,
    name: String,
    id: String,
    netns: String,
    removed: bool,
}

impl Container<'_> {
    fn rm(&mut self) {
        let out = self.node.podman(&["rm", "-f", "-t", "0", &self.name], "");
        assert!(
            out.status.success(),
            "podman rm {}: {}",
            self.name,
            output_text(&out)
        );
        self.removed = true;
    }

    /// `iptables-save` in the container's namespace, without comments and counters.
    fn iptables_save(&self) -> String {
        let out = run(
            "nsenter",
            &[&format!("--net={}", self.netns), "iptables-save"],
        )
        .unwrap();
        normalize_save(&String::from_utf8_lossy(&out.stdout))
    }

    fn sh_as(&self, uid: u32, line: &str) -> Output {
        Command::new("nsenter")
            .args([
                &format!("--net={}", self.netns),
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
                "sh",
                "-c",
                line,
            ])
            .output()
            .unwrap()
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.node.podman(&["rm", "-f", "-t", "0", &self.name], "");
        }
    }
}

fn normalize_save(save: &str) -> String {
    save.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.split_once(" [") {
            Some((chain, _)) if l.starts_with(':') => chain.to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `init --dry-run ARGS` writes, loaded into a fresh namespace and read back.
fn dry_run_ruleset(args: &[String]) -> String {
    let out = Command::new(interceptor_bin())
        .arg("init")
        .arg("--dry-run")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init --dry-run: {}",
        output_text(&out)
    );
    let scratch = Netns::new("agdry").unwrap();
    let mut child = scratch
        .command("iptables-restore")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "iptables-restore of the dry run: {}",
        output_text(&done)
    );
    normalize_save(&scratch.sh("iptables-save").unwrap())
}

/// A running `interceptor agent`.
struct Agent {
    child: Option<Child>,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Agent {
    fn start(node: &Node, mode: &str, extra: &[&str]) -> Agent {
        let mut child = Command::new(interceptor_bin())
            .args([
                "agent",
                "--mode",
                mode,
                "--cni-conf-dir",
                node.conf.to_str().unwrap(),
                "--cni-bin-dir",
                node.bin.to_str().unwrap(),
                "--namespaces",
                &format!("{MESHED_NS},other-meshed"),
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                node.state.to_str().unwrap(),
                "--agent-namespace",
                "interceptor-system",
                "--reconcile-interval",
                "0.5",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (addr, log) = interceptor_tests::agent_listening(&mut child);
        let mut agent = Agent {
            child: Some(child),
            addr,
            log,
        };
        wait_for("the agent's /readyz", Duration::from_secs(30), || {
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the agent exited ({status}):\n{}", agent.log());
            }
            agent.get("/readyz").is_some_and(|(code, _)| code == 200)
        });
        agent
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// (status code, body) of a GET, `None` when the agent does not answer.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    /// The value of the sample `name{labels}` (labels as printed), 0 when absent.
    fn metric(&self, sample: &str) -> u64 {
        let (code, body) = self.get("/metrics").expect("/metrics answers");
        assert_eq!(code, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    fn signal(&mut self, sig: &str) -> ExitStatus {
        let mut child = self.child.take().expect("the agent runs");
        run("kill", &[&format!("-{sig}"), &child.id().to_string()]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent ignored SIG{sig}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM; the agent must exit 0.
    fn stop(mut self) -> String {
        let status = self.signal("TERM");
        let log = self.log();
        assert!(
            status.success(),
            "the agent exited {status} on SIGTERM:\n{log}"
        );
        log
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn args_of(record: &Value) -> Vec<String> {
    record["args"]
        .as_array()
        .expect("args in the record")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The primary CNI rewrites its file, as a primary CNI does: its own content (our entry
/// gone), other formatting. Returns the bytes it wrote.
fn rewrite_primary(node: &Node) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&node.conflist()).unwrap();
    let plugins = v["plugins"].as_array_mut().unwrap();
    plugins.retain(|p| p["type"] != "interceptor");
    plugins[0]["mtu"] = json!(1400);
    let bytes = serde_json::to_vec(&v).unwrap();
    let tmp = node.conf.join(".rewrite.tmp");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &node.primary).unwrap();
    bytes
}

fn bin_has_plugin(node: &Node) -> bool {
    node.bin.join("interceptor").is_file()
}

#[test]
fn iptables_agent_meshes_repairs_reinserts_and_uninstalls() {
    require_tools();
    let node = Node::new();
    let agent = node.agent("iptables");
    assert!(
        node.has_our_entry(),
        "{}",
        String::from_utf8_lossy(&node.conflist())
    );
    assert!(bin_has_plugin(&node));

    let mut meshed = node.container(MESHED_NS);
    let other = node.container("default");
    let rec = node
        .record(&meshed.id)
        .expect("a record of the meshed container");
    assert_eq!(rec["namespace"], MESHED_NS);
    assert_eq!(rec["name"], meshed.name.as_str());
    assert_eq!(rec["mode"], "iptables");
    assert_eq!(rec["netns"], meshed.netns.as_str());
    assert!(rec["ip"].as_str().unwrap().starts_with("10.213."), "{rec}");
    let args = args_of(&rec);
    assert_eq!(args, INJECTOR_DEFAULT_ARGS);
    // The ruleset in the pod's namespace is exactly what `init` writes for those arguments.
    let want = dry_run_ruleset(&args);
    assert!(want.contains("ISTIO_OUTPUT"), "{want}");
    assert_eq!(meshed.iptables_save(), want);
    // The other namespace's container is left alone.
    assert!(node.record(&other.id).is_none());
    assert!(
        !other.iptables_save().contains("ISTIO"),
        "{}",
        other.iptables_save()
    );

    // Flushed by hand: repaired, counted.
    run(
        "nsenter",
        &[
            &format!("--net={}", meshed.netns),
            "iptables",
            "-t",
            "nat",
            "-F",
        ],
    )
    .unwrap();
    wait_for("the repair", Duration::from_secs(15), || {
        agent.metric("interceptor_repairs_total") >= 1 && meshed.iptables_save() == want
    });
    assert!(
        agent.log().contains("repaired istioinaction/"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.metric("interceptor_pods{mode=\"iptables\"}"), 1);
    wait_for("the request counts", Duration::from_secs(10), || {
        agent.metric("interceptor_cni_requests_total{command=\"ADD\",result=\"ok\"}") >= 1
            && agent.metric("interceptor_cni_requests_total{command=\"ADD\",result=\"skipped\"}")
                >= 1
    });

    // `interceptor status` lists the pod, healthy.
    let out = Command::new(interceptor_bin())
        .args(["status", "--state-dir", node.state.to_str().unwrap()])
        .output()
        .unwrap();
    let status = output_text(&out);
    assert!(
        status.contains(&format!(
            "pod {MESHED_NS}/{} mode iptables healthy",
            meshed.name
        )),
        "{status}"
    );

    // The primary CNI rewrites its file: our entry goes back in.
    let rewritten = rewrite_primary(&node);
    wait_for(
        "our entry back in the rewritten conflist",
        Duration::from_secs(10),
        || node.has_our_entry(),
    );
    assert!(String::from_utf8_lossy(&node.conflist()).contains("\"mtu\": 1400"));

    // podman rm: DEL leaves no record.
    meshed.rm();
    assert!(node.record(&meshed.id).is_none());

    // SIGTERM: the conflist is what the primary CNI last wrote, byte for byte, and the
    // binary is gone.
    let log = agent.stop();
    assert_eq!(
        String::from_utf8_lossy(&node.conflist()),
        String::from_utf8_lossy(&rewritten),
        "{log}"
    );
    assert!(!bin_has_plugin(&node));
    assert!(
        std::fs::read_dir(&node.bin).unwrap().next().is_none(),
        "the bin dir is empty again"
    );
}

#[test]
fn sigterm_restores_the_conflist_byte_for_byte() {
    require_tools();
    let node = Node::new();
    let agent = node.agent("iptables");
    assert_ne!(node.conflist(), node.original);
    agent.stop();
    assert_eq!(node.conflist(), node.original);
    let names: Vec<_> = std::fs::read_dir(&node.conf)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names,
        ["10-test.conflist"],
        "nothing else is left in the conf dir"
    );
    assert!(!bin_has_plugin(&node));
}

#[test]
fn an_agent_killed_and_restarted_loses_nothing() {
    require_tools();
    let node = Node::new();
    let mut agent = node.agent("iptables");
    let meshed = node.container(MESHED_NS);
    let want = meshed.iptables_save();
    assert!(want.contains("ISTIO_REDIRECT"), "{want}");
    let status = agent.signal("KILL");
    assert!(!status.success());
    // While no agent runs: the plugin still works (installed), and the rules get flushed.
    let second = node.container(MESHED_NS);
    assert!(second.iptables_save().contains("ISTIO_REDIRECT"));
    run(
        "nsenter",
        &[
            &format!("--net={}", meshed.netns),
            "iptables",
            "-t",
            "nat",
            "-F",
        ],
    )
    .unwrap();

    let agent = node.agent("iptables");
    wait_for(
        "both pods tracked and the flushed one repaired",
        Duration::from_secs(15),
        || {
            agent.metric("interceptor_pods{mode=\"iptables\"}") == 2
                && agent.metric("interceptor_repairs_total") >= 1
                && meshed.iptables_save() == want
        },
    );
    // Requests made before the restart and while the agent was down are all counted.
    wait_for("both ADDs counted", Duration::from_secs(10), || {
        agent.metric("interceptor_cni_requests_total{command=\"ADD\",result=\"ok\"}") == 2
    });
    assert!(node.has_our_entry());
    drop(second);
    drop(meshed);
    agent.stop();
    assert_eq!(node.conflist(), node.original);
}

/// The node programs' cgroup attachments at the cgroup v2 root, by program name.
fn root_programs() -> Vec<String> {
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find(|p| {
            Command::new("stat")
                .args(["-f", "-c", "%T", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "cgroup2fs")
                .unwrap_or(false)
        })
        .expect("a cgroup v2 mount");
    let out = run("bpftool", &["cgroup", "show", root]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .filter(|n| {
            [
                "connect4",
                "connect6",
                "sendmsg4",
                "recvmsg4",
                "getsockopt",
                "track_sockets",
            ]
            .contains(&n.as_str())
        })
        .collect()
}

/// The node's `SETTINGS` entries, as netns cookies.
fn settings_cookies() -> Vec<u64> {
    let out = run(
        "bpftool",
        &[
            "--json",
            "map",
            "dump",
            "pinned",
            &format!("{NODE_DIR}/SETTINGS"),
        ],
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let bytes: Vec<u8> = e["key"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .collect();
            u64::from_ne_bytes(bytes[..8].try_into().unwrap())
        })
        .collect()
}

/// A proxy stand-in (uid 1337) on 127.0.0.1:15001 answering with the original
/// destination, and a client (uid 1000) connecting to 10.1.2.3:80: the client's output.
const ORIG_DST_PROXY: &str = "import socket,struct\n\
s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
s.bind(('127.0.0.1',15001));s.listen(5)\n\
while True:\n c,_=s.accept();v=c.getsockopt(socket.SOL_IP,80,16)\n \
c.sendall(('proxy %s:%d'%(socket.inet_ntoa(v[4:8]),struct.unpack('!H',v[2:4])[0])).encode());c.close()\n";
const CLIENT: &str = "import socket\n\
try:\n c=socket.create_connection(('10.1.2.3',80),timeout=2);print(c.recv(100).decode())\n\
except OSError as e:\n print('failed',e)\n";

fn connect_through_proxy(c: &Container) -> String {
    let mut proxy = Command::new("nsenter")
        .args([
            &format!("--net={}", c.netns),
            "setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            "--",
            "/usr/bin/python3",
            "-c",
            ORIG_DST_PROXY,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the proxy stand-in on 15001",
        Duration::from_secs(10),
        || {
            let out = run(
                "nsenter",
                &[
                    &format!("--net={}", c.netns),
                    "ss",
                    "-Hltn",
                    "sport = :15001",
                ],
            )
            .unwrap();
            !String::from_utf8_lossy(&out.stdout).trim().is_empty()
        },
    );
    let out = c.sh_as(1000, &format!("/usr/bin/python3 -c \"{CLIENT}\""));
    let _ = proxy.kill();
    let _ = proxy.wait();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn ebpf_agent_meshes_with_the_node_programs_and_detaches_on_sigterm() {
    require_tools();
    let _one = node_ebpf_lock();
    let node = Node::new();
    let mut agent = node.agent("ebpf");
    for pin in [
        "prog_sklookup",
        "link_connect4",
        "link_track_sockets",
        "SETTINGS",
    ] {
        assert!(Path::new(NODE_DIR).join(pin).exists(), "{pin} not pinned");
    }
    assert_eq!(root_programs().len(), 6, "{:?}", root_programs());

    let mut meshed = node.container(MESHED_NS);
    let other = node.container("default");
    let rec = node.record(&meshed.id).expect("a record");
    assert_eq!(rec["mode"], "ebpf");
    let cookie = rec["netns_cookie"].as_u64().unwrap();
    assert!(settings_cookies().contains(&cookie));
    assert!(Path::new(NODE_DIR).join(format!("netns_{cookie}")).exists());
    // No program was loaded for the pod: still the node's six at the root, and no iptables.
    assert_eq!(root_programs().len(), 6);
    assert!(!meshed.iptables_save().contains("ISTIO"));

    assert_eq!(connect_through_proxy(&meshed), "proxy 10.1.2.3:80");
    assert!(
        connect_through_proxy(&other).starts_with("failed"),
        "the other namespace's connect was redirected"
    );
    assert!(node.record(&other.id).is_none());
    let redirected = format!(
        "interceptor_ebpf_connects_redirected_total{{namespace=\"{MESHED_NS}\",pod=\"{}\"}}",
        meshed.name
    );
    wait_for("the per-pod counter", Duration::from_secs(10), || {
        agent.metric(&redirected) >= 1
    });

    // Map entry and link removed by hand: repaired, counted, interception back.
    let key: Vec<String> = cookie.to_ne_bytes().iter().map(u8::to_string).collect();
    let mut a = vec!["map", "delete", "pinned"];
    let settings = format!("{NODE_DIR}/SETTINGS");
    a.push(&settings);
    a.push("key");
    a.extend(key.iter().map(String::as_str));
    run("bpftool", &a).unwrap();
    std::fs::remove_file(Path::new(NODE_DIR).join(format!("netns_{cookie}"))).unwrap();
    wait_for("the eBPF repair", Duration::from_secs(15), || {
        agent.metric("interceptor_repairs_total") >= 1 && settings_cookies().contains(&cookie)
    });
    assert!(Path::new(NODE_DIR).join(format!("netns_{cookie}")).exists());
    assert_eq!(connect_through_proxy(&meshed), "proxy 10.1.2.3:80");

    // A restart (SIGKILL) keeps the programs and the pod; the new agent updates in place.
    assert!(!agent.signal("KILL").success());
    assert!(
        settings_cookies().contains(&cookie),
        "SIGKILL must not detach anything"
    );
    agent = node.agent("ebpf");
    assert!(agent.log().contains("updated in place"), "{}", agent.log());
    wait_for("the pod tracked again", Duration::from_secs(10), || {
        agent.metric("interceptor_pods{mode=\"ebpf\"}") == 1
    });
    assert_eq!(connect_through_proxy(&meshed), "proxy 10.1.2.3:80");
    assert_eq!(
        root_programs().len(),
        6,
        "nothing stacked: {:?}",
        root_programs()
    );

    // podman rm: record, map entry and link gone.
    meshed.rm();
    assert!(node.record(&meshed.id).is_none());
    assert!(!settings_cookies().contains(&cookie));
    assert!(!Path::new(NODE_DIR).join(format!("netns_{cookie}")).exists());

    agent.stop();
    assert!(!Path::new(NODE_DIR).exists(), "{NODE_DIR} still pinned");
    assert!(root_programs().is_empty(), "{:?}", root_programs());
    assert_eq!(node.conflist(), node.original);
    assert!(!bin_has_plugin(&node));
}

#[test]
fn startup_errors_name_the_path_and_install_nothing() {
    require_tools();
    let node = Node::new();
    let agent = |extra: &[&str], conf: &Path| -> Output {
        Command::new(interceptor_bin())
            .args([
                "agent",
                "--cni-conf-dir",
                conf.to_str().unwrap(),
                "--cni-bin-dir",
            ])
            .arg(&node.bin)
            .args([
                "--state-dir",
                node.state.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let missing = node.root.join("no-such-dir");
    let out = agent(&[], &missing);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains(missing.to_str().unwrap()),
        "{}",
        output_text(&out)
    );

    let broken = node.root.join("broken.d");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("10-broken.conflist"), b"{ not json").unwrap();
    let out = agent(&[], &broken);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("10-broken.conflist"),
        "{}",
        output_text(&out)
    );
    assert_eq!(
        std::fs::read(broken.join("10-broken.conflist")).unwrap(),
        b"{ not json"
    );

    let out = agent(&["--mode", "ebpf", "--cgroup-root", "/tmp"], &node.conf);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("--cgroup-root /tmp"),
        "{}",
        output_text(&out)
    );

    let out = Command::new(interceptor_bin())
        .args([
            "agent",
            "--cni-conf-dir",
            node.conf.to_str().unwrap(),
            "--cni-bin-dir",
        ])
        .arg(node.root.join("no-bin"))
        .args([
            "--state-dir",
            node.state.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("no-bin"),
        "{}",
        output_text(&out)
    );

    // Nothing of ours anywhere.
    assert_eq!(node.conflist(), node.original);
    assert!(std::fs::read_dir(&node.bin).unwrap().next().is_none());
}

// ---------------------------------------------------------------------------------------
// A runtime calling the plugin as CRI-O and containerd do.

/// One request to the plugin: (exit status, stdout as JSON or Null, stderr).
fn cni(command: &str, env: &[(&str, &str)], conf: &Value) -> (i32, Value, String) {
    let out = cni_plugin(command, env, conf);
    let stdout = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    (
        out.status.code().unwrap_or(-1),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The conflist entry as the runtime hands it to us: our keys, the network's name and
/// version, runtimeConfig, prevResult.
fn runtime_conf(version: &str, state: &Path, mode: &str, annotations: Option<Value>) -> Value {
    let mut c = json!({
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "interceptor",
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        "mode": mode,
        "namespaces": [],
        "exclude_namespaces": ["kube-system", "interceptor-system"],
        "state_dir": state.to_str().unwrap(),
        "log_file": state.join("cni.log").to_str().unwrap(),
        "prevResult": {
            "cniVersion": version,
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 0}],
            "dns": {}
        }
    });
    if let Some(a) = annotations {
        c["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": a});
    }
    c
}

fn injected(extra: &[(&str, &str)]) -> Value {
    let mut a = json!({
        "sidecar.istio.io/status":
            "{\"initContainers\":null,\"containers\":[\"istio-proxy\"],\"volumes\":[\"istio-envoy\"]}",
        "kubectl.kubernetes.io/default-container": "webapp",
    });
    for (k, v) in extra {
        a[*k] = json!(v);
    }
    a
}

fn temp_state(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "icagent-rt-{tag}-{}-{}",
        std::process::id(),
        SUBNET.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ns_save(ns: &Netns) -> String {
    normalize_save(&ns.sh("iptables-save").unwrap())
}

#[test]
fn a_cri_runtime_calls_every_command_in_every_spec_version() {
    require_tools();
    let state = temp_state("versions");
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let ns = Netns::new("agrt").unwrap();
        let id = format!("sandbox{i}x{}", std::process::id());
        let env_for = |netns: &str| -> Vec<(String, String)> {
            vec![
                ("CNI_CONTAINERID".into(), id.clone()),
                ("CNI_NETNS".into(), netns.into()),
                ("CNI_IFNAME".into(), "eth0".into()),
                (
                    "CNI_ARGS".into(),
                    format!(
                        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-{i};\
                         K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID=uid-{i}"
                    ),
                ),
            ]
        };
        let env_owned = env_for(&ns.path());
        let env: Vec<(&str, &str)> = env_owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let conf = runtime_conf(
            version,
            &state,
            "iptables",
            Some(injected(&[
                ("traffic.sidecar.istio.io/excludeInboundPorts", "3333"),
                (
                    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                    "10.96.0.1/32",
                ),
            ])),
        );

        let (code, out, err) = cni("VERSION", &[], &json!({"cniVersion": version}));
        assert_eq!(code, 0, "{err}");
        assert_eq!(out["cniVersion"], version);
        assert!(out["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!(version)));

        let (code, out, err) = cni("ADD", &env, &conf);
        assert_eq!(code, 0, "{version} ADD: {out} {err}");
        let mut want = conf["prevResult"].clone();
        want["cniVersion"] = json!(version);
        assert_eq!(out, want, "{version}: ADD passes prevResult through");
        let rec: Value = serde_json::from_slice(
            &std::fs::read(state.join("pods").join(format!("{id}.json"))).unwrap(),
        )
        .unwrap();
        let args = args_of(&rec);
        // istio-cni's reading of the annotations.
        let d = args.iter().position(|a| a == "-d").unwrap();
        assert_eq!(args[d + 1], "3333,15020,15021,15090", "{args:?}");
        let x = args.iter().position(|a| a == "-x").unwrap();
        assert_eq!(args[x + 1], "10.96.0.1/32");
        assert_eq!(ns_save(&ns), dry_run_ruleset(&args), "{version}");
        assert_eq!(rec["ip"], "10.244.1.7");

        if version != "0.3.1" {
            let (code, out, err) = cni("CHECK", &env, &conf);
            assert_eq!(code, 0, "{version} CHECK: {out} {err}");
            assert_eq!(out, Value::Null, "CHECK prints nothing on success");
            // Rules gone: CHECK says so.
            ns.sh("iptables -t nat -F").unwrap();
            let (code, out, _) = cni("CHECK", &env, &conf);
            assert_eq!(code, 1);
            assert_eq!(out["code"], 101, "{out}");
            assert!(
                out["details"].as_str().unwrap().contains("missing"),
                "{out}"
            );
        } else {
            // CHECK came with 0.4.0.
            let (code, out, _) = cni("CHECK", &env, &conf);
            assert_eq!((code, out["code"].clone()), (1, json!(1)), "{out}");
        }

        let (code, out, err) = cni("DEL", &env, &conf);
        assert_eq!((code, out), (0, Value::Null), "{version} DEL: {err}");
        assert!(!ns_save(&ns).contains("ISTIO"));
        assert!(!state.join("pods").join(format!("{id}.json")).exists());

        let (code, out, _) = cni("STATUS", &[], &conf);
        if version == "1.1.0" {
            assert_eq!((code, out), (0, Value::Null));
            let (code, out, _) = cni("GC", &[], &conf);
            assert_eq!((code, out), (0, Value::Null));
        } else {
            assert_eq!(
                (code, out["code"].clone()),
                (1, json!(1)),
                "STATUS needs 1.1.0"
            );
        }
    }
    // Every request is in the plugin's log, one line each, and in the request log.
    let log = std::fs::read_to_string(state.join("cni.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("pod=shop/web-2 command=ADD outcome=ok")),
        "{log}"
    );
    let requests = std::fs::read_to_string(state.join("cni-requests.log")).unwrap();
    let adds = requests
        .lines()
        .filter(|l| l.contains("\"command\":\"ADD\"") && l.contains("\"result\":\"ok\""))
        .count();
    assert_eq!(adds, 4, "{requests}");
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn annotations_decide_skip_mesh_and_reject() {
    require_tools();
    let state = temp_state("ann");
    let ns = Netns::new("agann").unwrap();
    let path = ns.path();
    let env = |id: &str| -> Vec<(String, String)> {
        vec![
            ("CNI_CONTAINERID".into(), id.into()),
            ("CNI_NETNS".into(), path.clone()),
            ("CNI_IFNAME".into(), "eth0".into()),
            (
                "CNI_ARGS".into(),
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web".into(),
            ),
        ]
    };
    let call = |cmd: &str, id: &str, conf: &Value| {
        let e = env(id);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cni(cmd, &e, conf)
    };
    let mut cases: BTreeMap<&str, Value> = BTreeMap::new();
    cases.insert("no-sidecar", json!({"app": "web"}));
    cases.insert(
        "inject-false",
        injected(&[("sidecar.istio.io/inject", "false")]),
    );
    cases.insert(
        "mode-none",
        injected(&[("sidecar.istio.io/interceptionMode", "NONE")]),
    );
    for (what, ann) in cases {
        let conf = runtime_conf("1.0.0", &state, "iptables", Some(ann));
        let (code, out, err) = call("ADD", what, &conf);
        assert_eq!(code, 0, "{what}: {err}");
        assert_eq!(out["ips"][0]["address"], "10.244.1.7/24");
        assert!(!ns_save(&ns).contains("ISTIO"), "{what} was meshed");
        assert!(!state.join("pods").join(format!("{what}.json")).exists());
    }
    // A bad annotation: error 100 in the spec's form, nothing applied, nothing recorded.
    let conf = runtime_conf(
        "1.0.0",
        &state,
        "iptables",
        Some(injected(&[(
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.0.0.0/33",
        )])),
    );
    let (code, out, _) = call("ADD", "bad", &conf);
    assert_eq!(code, 1);
    assert_eq!(out["code"], 100, "{out}");
    assert_eq!(out["cniVersion"], "1.0.0");
    assert!(
        out["details"]
            .as_str()
            .unwrap()
            .contains("excludeOutboundIPRanges"),
        "{out}"
    );
    assert!(!ns_save(&ns).contains("ISTIO"));
    assert!(!state.join("pods").join("bad.json").exists());
    let log = std::fs::read_to_string(state.join("cni.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("container=bad") && l.contains("error 100")),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn del_twice_unknown_pods_and_missing_namespaces_succeed() {
    require_tools();
    let state = temp_state("del");
    let ns = Netns::new("agdel").unwrap();
    let conf = runtime_conf("1.0.0", &state, "iptables", Some(injected(&[])));
    let with = |netns: &str| -> Vec<(String, String)> {
        vec![
            ("CNI_CONTAINERID".into(), "deltwice".into()),
            ("CNI_NETNS".into(), netns.into()),
            ("CNI_IFNAME".into(), "eth0".into()),
            (
                "CNI_ARGS".into(),
                "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web".into(),
            ),
        ]
    };
    let call = |cmd: &str, env: &[(String, String)]| {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cni(cmd, &e, &conf)
    };
    let (code, _, err) = call("ADD", &with(&ns.path()));
    assert_eq!(code, 0, "{err}");
    assert!(ns_save(&ns).contains("ISTIO_OUTPUT"));
    for _ in 0..2 {
        let (code, out, err) = call("DEL", &with(&ns.path()));
        assert_eq!((code, out), (0, Value::Null), "{err}");
    }
    assert!(!ns_save(&ns).contains("ISTIO"));
    // A pod never seen, with and without a namespace (the runtime may have lost it).
    let mut e = with("");
    e[0].1 = "neverseen".into();
    assert_eq!(call("DEL", &e).0, 0);
    let mut e = with("/run/netns/no-such-namespace");
    e[0].1 = "neverseen".into();
    assert_eq!(call("DEL", &e).0, 0);

    // ADD into a namespace that does not exist fails closed: 101, nothing recorded.
    let mut e = with("/run/netns/no-such-namespace");
    e[0].1 = "nonetns".into();
    let (code, out, _) = call("ADD", &e);
    assert_eq!(code, 1);
    assert_eq!(out["code"], 101, "{out}");
    assert!(
        out["details"]
            .as_str()
            .unwrap()
            .contains("no-such-namespace"),
        "{out}"
    );
    assert!(!state.join("pods").join("nonetns.json").exists());
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn ebpf_mode_without_the_agent_fails_closed() {
    require_tools();
    let _one = node_ebpf_lock();
    assert!(
        !Path::new(NODE_DIR).exists(),
        "a node agent is running on this machine"
    );
    let state = temp_state("noagent");
    let ns = Netns::new("agnoag").unwrap();
    let conf = runtime_conf("1.1.0", &state, "ebpf", Some(injected(&[])));
    let path = ns.path();
    let env = [
        ("CNI_CONTAINERID", "noagent"),
        ("CNI_NETNS", path.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web"),
    ];
    let (code, out, _) = cni("STATUS", &[], &conf);
    assert_eq!(code, 1);
    assert_eq!(out["code"], 50, "{out}");
    let (code, out, _) = cni("ADD", &env, &conf);
    assert_eq!(code, 1);
    assert_eq!(out["code"], 101, "{out}");
    assert!(out["details"].as_str().unwrap().contains(NODE_DIR), "{out}");
    assert!(!state.join("pods").join("noagent.json").exists());
    assert!(!Path::new(NODE_DIR).exists());
    let (code, _, _) = cni("DEL", &env, &conf);
    assert_eq!(code, 0);
    let _ = std::fs::remove_dir_all(&state);
}
