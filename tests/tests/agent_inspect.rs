//! `interceptor agent --inspect`: the agent sniffs the pods its CNI plugin intercepted and
//! serves their live view and metrics on its listener.
//!
//! Pods are built as routing CNIs do (a namespace behind a veth, a /32 route on the host
//! end) and intercepted by the plugin itself: the test calls its ADD as a runtime does, so
//! the records the agent follows are the plugin's. Three pods in namespace `shop`:
//! catalog v1 and v2 (web servers; v2 adds `imageUrl`) and webapp, which sends a primary to
//! v1 and its mirror to v2 as its sidecar would (uid 1337, which interception leaves
//! alone). Then one pod's veth is deleted: its capture fails alone, is counted and retried,
//! and the others go on. Last, a ratings pod is created after catalog v1's capture started,
//! and v1 calls it: v1's capture names it too. Nothing skips: a missing tool or a run
//! without root fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use interceptor_tests::{
    interceptor_bin, missing_tools, output_text, require_root, routed_pod_link, run, wait_for,
    Netns,
};
use serde_json::{json, Value};

const PY: &str = "/usr/bin/python3";

fn require_tools() {
    require_root!();
    let missing = missing_tools(&[
        "ip",
        "curl",
        "nsenter",
        "setpriv",
        "ss",
        "iptables-save",
        PY,
    ]);
    assert!(
        missing.is_empty(),
        "the agent --inspect test needs {}: run `sudo bash scripts/setup.sh`",
        missing.join(", ")
    );
}

/// A catalog server: GET answers a JSON list, with `imageUrl` in v2.
const SERVER: &str = r#"
import sys, socketserver, http.server as h
ip, body = sys.argv[1], sys.argv[2].encode()
class H(h.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
socketserver.TCPServer.allow_reuse_address = True
socketserver.TCPServer((ip, 8000), H).serve_forever()
"#;

/// The conf, bin and state dirs of one agent.
struct Dirs {
    root: PathBuf,
    conf: PathBuf,
    bin: PathBuf,
    state: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let root = std::env::temp_dir().join(format!("icinspect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (conf, bin, state) = (root.join("net.d"), root.join("bin"), root.join("state"));
        for d in [&conf, &bin, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        // The primary config the agent installs into; nothing runs it here (the test is
        // the runtime and calls our plugin alone).
        std::fs::write(
            conf.join("10-test.conflist"),
            r#"{"cniVersion":"0.4.0","name":"inspect-test","plugins":[{"type":"ptp","ipam":{"type":"host-local","subnet":"10.236.0.0/16"}}]}"#,
        )
        .unwrap();
        std::fs::write(root.join("server.py"), SERVER).unwrap();
        Dirs {
            root,
            conf,
            bin,
            state,
        }
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A pod: a namespace with `ip` on its end of a veth whose host end has a /32 route to it,
/// intercepted by the plugin's ADD.
struct Pod {
    ns: Netns,
    name: String,
    ip: String,
    host_if: String,
    id: String,
}

impl Pod {
    fn new(dirs: &Dirs, n: u8, name: &str) -> Pod {
        let ns = Netns::new("insp").unwrap();
        let ip = format!("10.236.{n}.2");
        let host_if = routed_pod_link(&ns, &ip, &format!("10.236.{n}.1")).unwrap();
        let pod = Pod {
            ns,
            name: name.to_string(),
            ip,
            host_if,
            id: format!("inspect{n}x{}", std::process::id()),
        };
        let (code, out, err) = pod.cni(dirs, "ADD");
        assert_eq!(code, 0, "ADD {name}: {out} {err}");
        pod
    }

    /// One plugin request for this pod, as containerd makes it (annotations of an injected
    /// pod; the catalog port is left to the app, as `excludeInboundPorts` does).
    fn cni(&self, dirs: &Dirs, command: &str) -> (i32, Value, String) {
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "interceptor",
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
            "mode": "iptables",
            "namespaces": [],
            "exclude_namespaces": ["kube-system", "interceptor-system"],
            "state_dir": dirs.state.to_str().unwrap(),
            "log_file": dirs.state.join("cni.log").to_str().unwrap(),
            "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {
                "sidecar.istio.io/status":
                    "{\"initContainers\":null,\"containers\":[\"istio-proxy\"],\"volumes\":[\"istio-envoy\"]}",
                "traffic.sidecar.istio.io/excludeInboundPorts": "8000",
            }},
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": self.ns.path()}],
                "ips": [{"address": format!("{}/32", self.ip), "interface": 0}],
                "dns": {}
            }
        });
        let mut child = Command::new(interceptor_bin())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", "/usr/lib/cni")
            .env("CNI_CONTAINERID", &self.id)
            .env("CNI_NETNS", self.ns.path())
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={};K8S_POD_UID=uid-{}",
                    self.name, self.id
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&serde_json::to_vec(&conf).unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            out.status.code().unwrap_or(-1),
            stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn serve(&mut self, dirs: &Dirs, body: &str) {
        self.ns
            .spawn(&format!(
                "{PY} {} {} '{body}'",
                dirs.root.join("server.py").display(),
                self.ip
            ))
            .unwrap();
        self.ns.wait_listen(8000).unwrap();
    }

    /// curl in this pod as uid 1337 (the sidecar's, which interception leaves alone).
    fn curl_as_sidecar(&self, url: &str, headers: &[&str]) {
        let mut args = vec![
            format!("--net={}", self.ns.path()),
            "setpriv".into(),
            "--reuid=1337".into(),
            "--regid=1337".into(),
            "--clear-groups".into(),
            "--".into(),
            "curl".into(),
            "-sS".into(),
            "-m".into(),
            "5".into(),
            "-o".into(),
            "/dev/null".into(),
        ];
        for h in headers {
            args.push("-H".into());
            args.push(h.to_string());
        }
        args.push(url.into());
        let out = Command::new("nsenter").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "curl {url} from {}: {}",
            self.name,
            output_text(&out)
        );
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}

/// curl from the node to a pod.
fn curl(url: &str) {
    let out = Command::new("curl")
        .args(["-sS", "-m", "5", "-o", "/dev/null", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {url}: {}", output_text(&out));
}

/// A running `interceptor agent --inspect`.
struct Agent {
    child: Option<Child>,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Agent {
    fn start(dirs: &Dirs) -> Agent {
        let mut child = Command::new(interceptor_bin())
            .args(["agent", "--mode", "iptables", "--cni-conf-dir"])
            .arg(&dirs.conf)
            .arg("--cni-bin-dir")
            .arg(&dirs.bin)
            .arg("--state-dir")
            .arg(&dirs.state)
            .args([
                "--namespaces",
                "shop",
                "--listen",
                "127.0.0.1:0",
                "--reconcile-interval",
                "0.5",
            ])
            .args(["--inspect", "--inspect-filter", "tcp port 8000"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (addr, log) = interceptor_tests::agent_listening(&mut child);
        Agent {
            child: Some(child),
            addr,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// (status code, body) of a GET.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, resp.split_once("\r\n\r\n")?.1.to_string()))
    }

    /// The sum of the samples of `family` whose labels contain every one of `labels`
    /// (`name="value"`).
    fn metric(&self, family: &str, labels: &[&str]) -> f64 {
        let (code, body) = self.get("/metrics").expect("/metrics answers");
        assert_eq!(code, 200, "{body}");
        body.lines()
            .filter(|l| {
                l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} "))
            })
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum()
    }

    /// The `/events` stream's events (kind, data) read for at most `dur`.
    fn events(&self, dur: Duration) -> Vec<(String, Value)> {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        write!(
            s,
            "GET /events HTTP/1.1\r\nHost: agent\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let deadline = Instant::now() + dur;
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        let text = String::from_utf8_lossy(&raw);
        let mut out = Vec::new();
        for block in text.split("\n\n") {
            let kind = block.lines().find_map(|l| l.strip_prefix("event: "));
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            if let (Some(k), Ok(v)) = (kind, serde_json::from_str::<Value>(&data)) {
                out.push((k.to_string(), v));
            }
        }
        out
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

#[test]
fn the_agent_sniffs_its_pods_pairs_mirrors_and_survives_a_pod_going() {
    require_tools();
    let dirs = Dirs::new();
    let agent = Agent::start(&dirs);
    let mut v1 = Pod::new(&dirs, 1, "catalog-v1-6d9c5f8b7-xk2lp");
    let mut v2 = Pod::new(&dirs, 2, "catalog-v2-5b8f7d9c4-x7k2p");
    let webapp = Pod::new(&dirs, 3, "webapp-7c8d9f6b4d-q8w4n");
    v1.serve(&dirs, r#"[{"id":1,"name":"Dolphin"}]"#);
    v2.serve(
        &dirs,
        r#"[{"id":1,"name":"Dolphin","imageUrl":"http://lorempixel.com/640/480"}]"#,
    );
    for p in [&v1, &v2, &webapp] {
        assert!(
            dirs.state
                .join("pods")
                .join(format!("{}.json", p.id))
                .exists(),
            "no record of {}",
            p.name
        );
    }
    wait_for("three running captures", Duration::from_secs(20), || {
        agent.metric("interceptor_inspect_captures", &["state=\"running\""]) == 3.0
    });
    // The capture threads open their rings just after they are counted.
    std::thread::sleep(Duration::from_millis(500));

    // The node to catalog v1: counted with v1's workload, an exchange event tagged with it.
    let v1_requests = || {
        agent.metric(
            "interceptor_requests_total",
            &[
                "destination_workload=\"catalog-v1\"",
                "response_code=\"200\"",
            ],
        )
    };
    curl(&format!("http://{}:8000/items", v1.ip));
    wait_for(
        "catalog-v1's request in /metrics",
        Duration::from_secs(10),
        || v1_requests() >= 1.0,
    );
    let events = agent.events(Duration::from_secs(2));
    let ex = events
        .iter()
        .find(|(k, v)| k == "exchange" && v["pod"]["name"] == v1.name.as_str())
        .unwrap_or_else(|| {
            panic!(
                "no exchange event for {}: {events:?}\n{}",
                v1.name,
                agent.log()
            )
        });
    assert_eq!(ex.1["pod"]["namespace"], "shop");
    assert_eq!(ex.1["pod"]["ip"], v1.ip.as_str());

    // webapp's sidecar mirrors one request: the primary to v1, the copy to v2 with a
    // `-shadow` Host and the same request id. Each leg crosses webapp's veth and its
    // destination's: one pair all the same.
    let id = "x-request-id: 6b2f1c1e-inspect";
    webapp.curl_as_sidecar(
        &format!("http://{}:8000/items", v1.ip),
        &["Host: catalog.shop:8000", id],
    );
    webapp.curl_as_sidecar(
        &format!("http://{}:8000/items", v2.ip),
        &["Host: catalog.shop-shadow:8000", id],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.metric("interceptor_shadow_pairs_total", &["verdict=\"different\""]) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no mirrored pair:\n{}\n{}",
            agent.get("/metrics").unwrap().1,
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each leg is seen on two veths; the copies are not paired again.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        agent.metric("interceptor_shadow_pairs_total", &[]),
        1.0,
        "one mirrored request, one pair:\n{}",
        agent.get("/metrics").unwrap().1
    );
    assert!(
        agent.metric(
            "interceptor_shadow_differences_total",
            &["path=\"body:[*].imageUrl\""]
        ) >= 1.0,
        "{}",
        agent.get("/metrics").unwrap().1
    );
    assert!(
        agent.metric(
            "interceptor_requests_total",
            &[
                "source_workload=\"webapp\"",
                "destination_workload=\"catalog-v2\""
            ]
        ) >= 1.0,
        "webapp's capture names both ends:\n{}",
        agent.get("/metrics").unwrap().1
    );
    let events = agent.events(Duration::from_secs(2));
    assert!(
        events
            .iter()
            .any(|(k, v)| k == "shadow" && v["verdict"] == "different"),
        "no shadow event: {events:?}"
    );

    // v2's veth goes (as with a pod deleted under the agent): that capture fails alone,
    // counted, and is retried while the record stays; v1's goes on.
    run("ip", &["link", "del", &v2.host_if]).unwrap();
    wait_for(
        "the failed capture counted",
        Duration::from_secs(10),
        || {
            agent.metric("interceptor_inspect_capture_failures_total", &[]) >= 1.0
                && agent.metric("interceptor_inspect_captures", &["state=\"retrying\""]) == 1.0
        },
    );
    assert_eq!(
        agent.metric("interceptor_inspect_captures", &["state=\"running\""]),
        2.0
    );
    let before = v1_requests();
    curl(&format!("http://{}:8000/items", v1.ip));
    wait_for("catalog-v1 still counted", Duration::from_secs(10), || {
        v1_requests() > before
    });
    // The runtime deletes the pod: the record goes, and so does the retrying capture.
    let (code, out, err) = v2.cni(&dirs, "DEL");
    assert_eq!(code, 0, "DEL: {out} {err}");
    wait_for("the gone pod forgotten", Duration::from_secs(10), || {
        agent.metric("interceptor_inspect_captures", &["state=\"retrying\""]) == 0.0
    });
    let log = agent.log();
    assert!(
        log.contains("inspect: capturing shop/catalog-v1-6d9c5f8b7-xk2lp"),
        "{log}"
    );
    assert!(log.contains("catalog-v2-5b8f7d9c4-x7k2p on"), "{log}");

    // A pod created long after v1's capture started: v1 calls it, and both captures (v1's
    // and the new pod's own) name it as the destination, from the agent's directory of
    // the node's pods.
    let mut ratings = Pod::new(&dirs, 4, "ratings-v1-7d9c5f8b4-k2x7p");
    ratings.serve(&dirs, r#"{"stars":5}"#);
    wait_for("the ratings pod captured", Duration::from_secs(20), || {
        agent.metric("interceptor_inspect_captures", &["state=\"running\""]) == 3.0
    });
    std::thread::sleep(Duration::from_millis(500));
    let v1_to_ratings = |destination: &str| {
        agent.metric(
            "interceptor_requests_total",
            &[
                "source_workload=\"catalog-v1\"",
                &format!("destination_workload=\"{destination}\""),
            ],
        )
    };
    v1.curl_as_sidecar(
        &format!("http://{}:8000/ratings", ratings.ip),
        &["Host: ratings.shop:8000"],
    );
    wait_for(
        "v1's request to ratings counted by both captures",
        Duration::from_secs(10),
        || v1_to_ratings("ratings-v1") >= 2.0,
    );
    assert_eq!(
        (v1_to_ratings("ratings-v1"), v1_to_ratings("unknown")),
        (2.0, 0.0),
        "v1's capture, older than the ratings pod, names it:\n{}",
        agent.get("/metrics").unwrap().1
    );

    for p in [&v1, &webapp, &ratings] {
        let (code, out, err) = p.cni(&dirs, "DEL");
        assert_eq!(code, 0, "DEL {}: {out} {err}", p.name);
    }
    // SIGTERM: the captures and the pairing stage stop, the agent uninstalls, exit 0.
    let mut agent = agent;
    let mut child = agent.child.take().unwrap();
    run("kill", &["-TERM", &child.id().to_string()]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent ignored SIGTERM:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "the agent exited {status}:\n{}",
        agent.log()
    );
}
