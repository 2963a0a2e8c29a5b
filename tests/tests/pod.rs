//! `interceptor sniff --pod`: the interface that leads to a pod found from the node's
//! routes, records tagged with the pod, and the errors for pods that are not here.
//!
//! The root tests build pods the way routing CNIs do: a namespace with the pod's address
//! on its end of a veth, the host end in the root namespace with a /32 route to the pod.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use interceptor_tests::{interceptor_bin, require_root, routed_pod_link, Netns};
use serde_json::Value;

const PY: &str = "/usr/bin/python3";

fn sniff(args: &[&str]) -> Output {
    Command::new(interceptor_bin())
        .arg("sniff")
        .args(args)
        .output()
        .expect("running interceptor sniff")
}

#[test]
fn pods_that_are_not_here_are_named_and_exit_2() {
    let records = std::env::temp_dir().join(format!("interceptor-pods-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&records);
    for (args, want) in [
        // The default route goes through a gateway (or there is none): not a pod here.
        (vec!["--pod", "203.0.113.7"], "--pod 203.0.113.7: "),
        (
            vec!["--pod", "shop/catalog-v1"],
            "--pod shop/catalog-v1: the node agent has no record of this pod",
        ),
        (
            vec!["--pod", "not-a-pod"],
            "--pod not-a-pod: neither an IP address nor NAMESPACE/NAME",
        ),
    ] {
        let mut all = args.clone();
        all.extend(["--pod-records", records.to_str().unwrap()]);
        let out = sniff(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A loopback or uplink address is not behind a veth either.
    let out = sniff(&["--pod", "127.0.0.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pod on this node"));
    // --pod picks the interface: -d with it is refused.
    let out = sniff(&["--pod", "10.0.0.1", "-d", "eth0"]);
    assert_ne!(out.status.code(), Some(0));
}

/// A pod: a namespace with `ip` on its end of a veth whose host end, in the root namespace,
/// has a /32 route to it; a web server on port 8000 inside. Host link removed on drop.
struct Pod {
    ns: Netns,
    ip: String,
    host_if: String,
}

impl Pod {
    fn new(n: u8) -> Pod {
        let mut ns = Netns::new("pod").unwrap();
        let ip = format!("10.231.{n}.2");
        let host_if = routed_pod_link(&ns, &ip, &format!("10.231.{n}.1")).unwrap();
        // socketserver rather than `-m http.server`, whose start looks the address up in
        // DNS, which a pod namespace with a default route waits on.
        ns.spawn(&format!(
            "{PY} -c 'import socketserver, http.server as h; socketserver.TCPServer((\"{ip}\", 8000), h.SimpleHTTPRequestHandler).serve_forever()'"
        ))
        .unwrap();
        ns.wait_listen(8000).unwrap();
        Pod { ns, ip, host_if }
    }

    fn get(&self, path: &str) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-m",
                "5",
                "-o",
                "/dev/null",
                &format!("http://{}:8000{path}", self.ip),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
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

/// `interceptor sniff …` with stdout and stderr read line by line.
struct Sniff {
    child: Child,
    out: Receiver<String>,
    err: Receiver<String>,
}

impl Sniff {
    fn start(args: &[&str]) -> Sniff {
        let mut child = Command::new(interceptor_bin())
            .arg("sniff")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().unwrap()));
        let err = lines(Box::new(child.stderr.take().unwrap()));
        Sniff { child, out, err }
    }

    /// Waits for the "listening on" notice.
    fn listening(&self) -> String {
        let line = self
            .err
            .recv_timeout(Duration::from_secs(10))
            .expect("sniff said nothing");
        assert!(line.contains("listening on"), "{line}");
        line
    }

    /// Stdout lines until `n` JSON exchanges came (or 10 s passed).
    fn exchanges(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.out.recv_timeout(left) else {
                break;
            };
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["type"] == "exchange" {
                got.push(v);
            }
        }
        got
    }
}

impl Drop for Sniff {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn one_pod_is_captured_on_its_veth_and_tagged() {
    require_root!();
    let pod = Pod::new(1);
    let s = Sniff::start(&["--pod", &pod.ip, "--json", "", "tcp port 8000"]);
    let line = s.listening();
    assert!(
        line.contains(&format!("listening on {}", pod.host_if)),
        "{line}"
    );
    pod.get("/one");
    let ex = s.exchanges(1);
    assert_eq!(ex.len(), 1, "no exchange captured");
    assert_eq!(ex[0]["request"]["target"], "/one");
    assert_eq!(ex[0]["interface"], pod.host_if.as_str());
    assert_eq!(
        ex[0]["pod"],
        serde_json::json!({"ip": pod.ip, "name": null, "namespace": null})
    );
}

#[test]
fn pods_by_name_from_the_agents_records_and_several_pods_at_once() {
    require_root!();
    let a = Pod::new(2);
    let b = Pod::new(3);
    let records =
        std::env::temp_dir().join(format!("interceptor-pod-records-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&records);
    std::fs::create_dir_all(&records).unwrap();
    let rec = serde_json::json!({
        "namespace": "shop", "name": "catalog-v1-6d9c5f8b7-xk2lp", "uid": "uid-a",
        "ip": a.ip, "netns": a.ns.path(), "mode": "iptables",
    });
    std::fs::write(records.join("uid-a.json"), rec.to_string()).unwrap();
    let dir = records.to_str().unwrap();
    // By name, with the text output: the T lines name the pod.
    let s = Sniff::start(&[
        "--pod-records",
        dir,
        "--pod",
        "shop/catalog-v1-6d9c5f8b7-xk2lp",
        "-n",
        "1",
        "",
        "tcp port 8000",
    ]);
    assert!(s
        .listening()
        .contains(&format!("listening on {}", a.host_if)));
    a.get("/by-name");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut t_lines = Vec::new();
    while t_lines.len() < 2 && Instant::now() < deadline {
        if let Ok(l) = s.out.recv_timeout(Duration::from_millis(200)) {
            if l.starts_with("T ") {
                t_lines.push(l);
            }
        }
    }
    assert_eq!(t_lines.len(), 2, "{t_lines:?}");
    for l in &t_lines {
        assert!(l.ends_with("] pod shop/catalog-v1-6d9c5f8b7-xk2lp"), "{l}");
    }
    drop(s);
    // Two pods: one capture on `any`, kept to their two veths; each record names its own.
    let s = Sniff::start(&[
        "--pod-records",
        dir,
        "--pod",
        &a.ip,
        "--pod",
        &b.ip,
        "--json",
        "",
        "tcp port 8000",
    ]);
    let line = s.listening();
    assert!(
        line.contains("listening on any") && line.contains("ifindex"),
        "{line}"
    );
    a.get("/a");
    b.get("/b");
    let ex = s.exchanges(2);
    assert_eq!(ex.len(), 2, "{ex:?}");
    for e in &ex {
        let (want_pod, want_if) = if e["request"]["target"] == "/a" {
            (
                serde_json::json!({"ip": a.ip, "name": "catalog-v1-6d9c5f8b7-xk2lp", "namespace": "shop"}),
                &a.host_if,
            )
        } else {
            (
                serde_json::json!({"ip": b.ip, "name": null, "namespace": null}),
                &b.host_if,
            )
        };
        assert_eq!(e["pod"], want_pod);
        assert_eq!(e["interface"], want_if.as_str());
    }
    let _ = std::fs::remove_dir_all(&records);
}

#[test]
fn plain_json_has_no_pod_key() {
    // Without --pod the output stays as it was: no "pod" anywhere.
    let dir = std::env::temp_dir().join(format!("interceptor-nopod-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let capture = dir.join("c.pcap");
    interceptor_tests::pcap_synth::write(
        std::io::BufWriter::new(std::fs::File::create(&capture).unwrap()),
        &interceptor_tests::pcap_synth::Spec {
            requests: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let plain = sniff(&["--json", "-q", "-I", capture.to_str().unwrap()]);
    assert!(plain.status.success());
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("\"pod\""));
    // With --pod on a file, records are tagged by address (no interface to find).
    let tagged = sniff(&[
        "--json",
        "-q",
        "--pod",
        "10.123.2.2",
        "--pod-records",
        dir.to_str().unwrap(),
        "-I",
        capture.to_str().unwrap(),
    ]);
    assert!(
        tagged.status.success(),
        "{}",
        String::from_utf8_lossy(&tagged.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&tagged.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["type"] == "exchange")
        .collect();
    assert_eq!(lines.len(), 6);
    for l in &lines {
        let want = if l["server"] == "10.123.2.2:3000" {
            serde_json::json!({"ip": "10.123.2.2", "name": null, "namespace": null})
        } else {
            Value::Null
        };
        assert_eq!(l["pod"], want, "{l}");
    }
    // Byte for byte, a tagged line is the plain line with the pod key added last.
    let plain_first = String::from_utf8_lossy(&plain.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let tagged_first = String::from_utf8_lossy(&tagged.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(
        tagged_first.starts_with(plain_first.trim_end_matches('}')),
        "{plain_first}\n{tagged_first}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
