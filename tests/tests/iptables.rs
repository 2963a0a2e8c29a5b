//! `interceptor init` (iptables) and `interceptor cleanup` in real network namespaces.
//!
//! A pod namespace holds the app (uid 1000), a real sidecar (HAProxy from Debian, its
//! sockets owned by uid 1337, listening on 15001 and 15006) and marker servers; a peer
//! namespace behind a veth plays the rest of the mesh. The tests assert what traffic does,
//! and compare rulesets only as `iptables-save` reads them back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use interceptor_tests::{interceptor_bin, require_root, unique, veth, Netns};

const APP: u32 = 1000;
const PROXY: u32 = 1337;
const POD4: &str = "10.77.0.2";
const PEER4: &str = "10.77.0.1";
const POD6: &str = "fd77::2";
const PEER6: &str = "fd77::1";

/// A directory removed on drop, readable by the sidecar's uid.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(unique("icpt-"));
        std::fs::create_dir_all(&p).unwrap();
        std::process::Command::new("chmod")
            .arg("755")
            .arg(&p)
            .status()
            .unwrap();
        TempDir(p)
    }
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// HTTP server answering every request with `marker` (both families on `::`).
const MARKER_SERVER: &str = r#"
import socket, sys
port, marker = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port)); s.listen(64)
while True:
    c, _ = s.accept()
    try:
        c.settimeout(3); c.recv(4096)
        body = (marker + "\n").encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    except Exception:
        pass
    finally:
        c.close()
"#;

/// DNS stand-in: answers UDP and TCP on addr:port with `marker`. The agent's resolver binds
/// 127.0.0.1 (as istio-agent does), so its UDP answers leave from the address the
/// REDIRECTed query arrived at and conntrack maps them back.
const DNS_SERVER: &str = r#"
import socket, sys, threading
addr, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((addr, port))
    while True:
        data, peer = u.recvfrom(2048)
        u.sendto(marker, peer)
threading.Thread(target=udp, daemon=True).start()
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((addr, port)); t.listen(16)
while True:
    c, _ = t.accept()
    try:
        c.settimeout(3); c.recv(2048); c.sendall(marker)
    except Exception:
        pass
    finally:
        c.close()
"#;

/// DNS client: one query over `proto` to host:port, prints the answer.
const DNS_CLIENT: &str = r#"
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
s.settimeout(3)
s.connect((host, port))
s.send(b"query")
print(s.recv(2048).decode())
"#;

/// The sidecar: HAProxy started as root, running as uid/gid 1337 once its sockets are bound
/// (so every connection it makes is the proxy's). IPv4 traffic is forwarded to its original
/// destination (`server 0.0.0.0:0`), adding `x-via` to the response; IPv6 is answered
/// directly with a marker.
fn haproxy_config(transparent_inbound: bool) -> String {
    let tp = if transparent_inbound {
        " transparent"
    } else {
        ""
    };
    format!(
        "global
    uid {PROXY}
    gid {PROXY}
defaults
    mode http
    timeout connect 3s
    timeout client 10s
    timeout server 10s
frontend out4
    bind 0.0.0.0:15001
    http-response add-header x-via sidecar-15001
    default_backend orig_out
backend orig_out
    server orig 0.0.0.0:0
frontend out6
    bind :::15001 v6only
    http-request return status 200 content-type text/plain string via-sidecar-15001
frontend in4
    bind 0.0.0.0:15006{tp}
    http-response add-header x-via sidecar-15006
    default_backend orig_in
backend orig_in
    server orig 0.0.0.0:0 source 127.0.0.6
frontend in6
    bind :::15006 v6only
    http-request return status 200 content-type text/plain string via-sidecar-15006
"
    )
}

struct Mesh {
    pod: Netns,
    peer: Netns,
    dir: TempDir,
}

impl Mesh {
    /// Pod and peer joined by a veth, IPv4 and ULA IPv6 addresses; markers servers on the
    /// peer (8080) and in the pod (8080 for the app, 15020 and 15008 excluded from capture).
    fn new() -> Mesh {
        let pod = Netns::new("ipod").unwrap();
        let mut peer = Netns::new("ipeer").unwrap();
        let (ipod, ipeer) =
            veth(&pod, &format!("{POD4}/24"), &peer, &format!("{PEER4}/24")).unwrap();
        pod.sh(&format!("ip -6 addr add {POD6}/64 dev {ipod} nodad"))
            .unwrap();
        peer.sh(&format!("ip -6 addr add {PEER6}/64 dev {ipeer} nodad"))
            .unwrap();
        let dir = TempDir::new();
        let server = dir.write("marker.py", MARKER_SERVER);
        peer.spawn(&format!("/usr/bin/python3 {server} 8080 peer-8080"))
            .unwrap();
        peer.wait_listen(8080).unwrap();
        let mut mesh = Mesh { pod, peer, dir };
        for (port, marker) in [
            (8080, "pod-8080"),
            (15020, "pod-15020"),
            (15008, "pod-15008"),
        ] {
            mesh.pod
                .spawn_as(
                    APP,
                    APP,
                    &format!("/usr/bin/python3 {server} {port} {marker}"),
                )
                .unwrap();
            mesh.pod.wait_listen(port).unwrap();
        }
        mesh
    }

    fn start_sidecar(&mut self, transparent_inbound: bool) {
        let cfg = self
            .dir
            .write("haproxy.cfg", &haproxy_config(transparent_inbound));
        self.pod.spawn(&format!("haproxy -db -f {cfg}")).unwrap();
        self.pod.wait_listen(15001).unwrap();
        self.pod.wait_listen(15006).unwrap();
    }

    fn interceptor(&self, args: &[&str]) -> Output {
        self.pod
            .command(interceptor_bin().to_str().unwrap())
            .args(args)
            .output()
            .unwrap()
    }

    fn init(&self, args: &[&str]) {
        let mut all = vec!["init"];
        all.extend_from_slice(args);
        let out = self.interceptor(&all);
        assert!(
            out.status.success(),
            "init {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `curl -si` from a namespace as uid, returning headers and body (empty on failure).
fn curl(ns: &Netns, uid: u32, url: &str) -> String {
    let out = ns
        .sh_as(uid, uid, &format!("curl -s -i --max-time 5 '{url}'"))
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

fn via(resp: &str) -> Option<&str> {
    resp.lines()
        .find_map(|l| l.strip_prefix("x-via: "))
        .map(str::trim)
}

/// A saved ruleset as table -> chain -> (policy, rules), counters and comments dropped.
type Ruleset = BTreeMap<String, BTreeMap<String, (String, Vec<String>)>>;

fn save(ns: &Netns, cmd: &str) -> Ruleset {
    let text = ns.sh(cmd).unwrap();
    let mut out = Ruleset::new();
    let mut table = String::new();
    for line in text.lines() {
        if line.starts_with('#') || line == "COMMIT" || line.trim().is_empty() {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            out.entry(table.clone()).or_default();
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut w = decl.split_whitespace();
            let (chain, policy) = (w.next().unwrap().to_string(), w.next().unwrap().to_string());
            out.get_mut(&table).unwrap().entry(chain).or_default().0 = policy;
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, args) = rest.split_once(' ').unwrap();
            out.get_mut(&table)
                .unwrap()
                .entry(chain.to_string())
                .or_default()
                .1
                .push(args.to_string());
        }
    }
    out
}

fn save4(ns: &Netns) -> Ruleset {
    save(ns, "iptables-save")
}

fn save6(ns: &Netns) -> Ruleset {
    save(ns, "ip6tables-save")
}

/// `after` less the tables that were not in `before` and hold nothing (no rule, no own
/// chain, ACCEPT policies): iptables cannot remove a table once created, and an empty one
/// changes nothing.
fn without_new_empty_tables(mut after: Ruleset, before: &Ruleset) -> Ruleset {
    after.retain(|t, chains| {
        before.contains_key(t) || chains.values().any(|(p, r)| !r.is_empty() || p != "ACCEPT")
    });
    after
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

/// Loads a hand-written istio ruleset into a fresh namespace and returns it as saved.
fn istio_reference(file: &str, restore: &str) -> Ruleset {
    let ns = Netns::new("iref").unwrap();
    ns.sh(&format!("{restore} --noflush < {}", data(file).display()))
        .unwrap();
    if restore.starts_with("ip6") {
        save6(&ns)
    } else {
        save4(&ns)
    }
}

fn ours(args: &[&str], v6: bool) -> Ruleset {
    ours_env(args, &[], v6)
}

fn ours_env(args: &[&str], env: &[(&str, &str)], v6: bool) -> Ruleset {
    let ns = Netns::new("iour").unwrap();
    let mut all = vec!["init"];
    all.extend_from_slice(args);
    let out = ns
        .command(interceptor_bin().to_str().unwrap())
        .args(&all)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if v6 {
        save6(&ns)
    } else {
        save4(&ns)
    }
}

#[test]
fn ruleset_equals_istio_default_profile() {
    require_root!();
    assert_eq!(
        ours(&[], false),
        istio_reference("istio-default.v4.rules", "iptables-restore")
    );
}

#[test]
fn ruleset_equals_istio_tproxy_dns_and_more() {
    require_root!();
    let flags = [
        "-m",
        "TPROXY",
        "-b",
        "*",
        "-d",
        "22,15090",
        "--redirect-dns",
        "--dns-servers",
        "10.96.0.10",
        "--drop-invalid",
        "-c",
        "eth9",
        "-k",
        "virt0",
        "-i",
        "10.0.0.0/8",
        "-x",
        "10.1.0.0/16",
        "-q",
        "3306",
        "-o",
        "25",
        "-u",
        "1337,1500",
        "-g",
        "1337",
    ];
    assert_eq!(
        ours(&flags, false),
        istio_reference("istio-tproxy-dns.v4.rules", "iptables-restore")
    );
}

#[test]
fn ruleset_equals_istio_ipv6_capture_all_dns() {
    require_root!();
    let flags = [
        "--ipv6",
        "--redirect-dns",
        "--capture-all-dns",
        "-b",
        "8080",
    ];
    assert_eq!(
        ours(&flags, true),
        istio_reference("istio-dns-all.v6.rules", "ip6tables-restore")
    );
}

#[test]
fn ruleset_equals_istio_ipv6_tproxy_and_cidrs() {
    require_root!();
    let flags = [
        "--ipv6",
        "-m",
        "TPROXY",
        "-b",
        "8080",
        "-i",
        "fd00::/8,10.0.0.0/8",
        "-x",
        "fd01::/16",
        "-k",
        "virt0",
    ];
    assert_eq!(
        ours(&flags, true),
        istio_reference("istio-tproxy-cidrs.v6.rules", "ip6tables-restore")
    );
}

#[test]
fn ruleset_equals_istio_owner_groups_and_loopback_env() {
    require_root!();
    let flags = [
        "-u",
        "1337",
        "-g",
        "1400",
        "-i",
        "127.0.0.1/32,10.0.0.0/8",
        "-b",
        "",
    ];
    let env = [
        ("ISTIO_OUTBOUND_OWNER_GROUPS", "100,200"),
        ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.0/8"),
    ];
    assert_eq!(
        ours_env(&flags, &env, false),
        istio_reference("istio-owner-groups.v4.rules", "iptables-restore")
    );
}

#[test]
fn redirect_mode_intercepts_and_cleanup_restores() {
    require_root!();
    let mut m = Mesh::new();
    // Rules someone else already has in the pod: they must survive init and cleanup.
    m.pod
        .sh("iptables -A INPUT -p icmp -j ACCEPT && iptables -t nat -A POSTROUTING -p udp --dport 9 -j RETURN && \
             iptables -t mangle -A OUTPUT -p udp --dport 9 -j RETURN && iptables -t raw -A PREROUTING -p udp --dport 9 -j RETURN")
        .unwrap();
    let before = save4(&m.pod);
    m.start_sidecar(false);
    m.init(&[]);
    let first = save4(&m.pod);
    assert_ne!(first, before);

    // Outbound from the app goes through 15001, which forwards to the original destination.
    let r = curl(&m.pod, APP, &format!("http://{PEER4}:8080/"));
    assert!(
        r.contains("peer-8080") && via(&r) == Some("sidecar-15001"),
        "outbound: {r}"
    );
    // The sidecar's own traffic is not looped back into it.
    let r = curl(&m.pod, PROXY, &format!("http://{PEER4}:8080/"));
    assert!(
        r.contains("peer-8080") && via(&r).is_none(),
        "proxy's own: {r}"
    );
    // Inbound goes through 15006, then to the app.
    let r = curl(&m.peer, 0, &format!("http://{POD4}:8080/"));
    assert!(
        r.contains("pod-8080") && via(&r) == Some("sidecar-15006"),
        "inbound: {r}"
    );
    // The ISTIO_INBOUND exceptions bypass the sidecar.
    for (port, marker) in [(15020, "pod-15020"), (15008, "pod-15008")] {
        let r = curl(&m.peer, 0, &format!("http://{POD4}:{port}/"));
        assert!(
            r.contains(marker) && via(&r).is_none(),
            "excluded {port}: {r}"
        );
    }
    // The app reaching itself over lo is not captured.
    let r = curl(&m.pod, APP, "http://127.0.0.1:8080/");
    assert!(
        r.contains("pod-8080") && via(&r).is_none(),
        "localhost: {r}"
    );

    // A second init changes nothing.
    m.init(&[]);
    assert_eq!(save4(&m.pod), first);
    let r = curl(&m.pod, APP, &format!("http://{PEER4}:8080/"));
    assert_eq!(via(&r), Some("sidecar-15001"));

    // cleanup --dry-run only prints.
    let out = m.interceptor(&["cleanup", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("-D OUTPUT -j ISTIO_OUTPUT")
            && text.contains("-X ISTIO_OUTPUT"),
        "{text}"
    );
    assert_eq!(save4(&m.pod), first);
    // cleanup puts the ruleset back exactly, and traffic goes direct again.
    let out = m.interceptor(&["cleanup"]);
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(save4(&m.pod), before);
    let r = curl(&m.pod, APP, &format!("http://{PEER4}:8080/"));
    assert!(
        r.contains("peer-8080") && via(&r).is_none(),
        "after cleanup: {r}"
    );
}

#[test]
fn excluded_outbound_ports_and_cidrs_bypass_the_sidecar() {
    require_root!();
    let mut m = Mesh::new();
    m.start_sidecar(false);
    m.init(&["-o", "8080"]);
    let r = curl(&m.pod, APP, &format!("http://{PEER4}:8080/"));
    assert!(r.contains("peer-8080") && via(&r).is_none(), "-o 8080: {r}");
    m.init(&["-x", "10.77.0.0/24"]);
    let r = curl(&m.pod, APP, &format!("http://{PEER4}:8080/"));
    assert!(r.contains("peer-8080") && via(&r).is_none(), "-x: {r}");
    m.init(&["-i", "10.77.0.1/32"]);
    let r = curl(&m.pod, APP, &format!("http://{PEER4}:8080/"));
    assert_eq!(via(&r), Some("sidecar-15001"), "-i includes the peer: {r}");
    m.init(&["-i", "10.99.0.0/16", "-b", "15020"]);
    let r = curl(&m.pod, APP, &format!("http://{PEER4}:8080/"));
    assert!(via(&r).is_none(), "-i excludes the peer: {r}");
    // -b 15020: only that port is captured inbound now.
    let r = curl(&m.peer, 0, &format!("http://{POD4}:8080/"));
    assert!(
        r.contains("pod-8080") && via(&r).is_none(),
        "8080 not listed: {r}"
    );
    let r = curl(&m.peer, 0, &format!("http://{POD4}:15020/"));
    assert!(
        r.contains("pod-15020") && via(&r) == Some("sidecar-15006"),
        "15020 listed: {r}"
    );
}

#[test]
fn tproxy_mode_intercepts_inbound() {
    require_root!();
    let mut m = Mesh::new();
    let before = save4(&m.pod);
    let rules_before = m
        .pod
        .sh("ip rule; ip route show table all | grep -c . || true")
        .unwrap();
    m.start_sidecar(true);
    m.init(&["-m", "TPROXY"]);
    let r = curl(&m.peer, 0, &format!("http://{POD4}:8080/"));
    assert!(
        r.contains("pod-8080") && via(&r) == Some("sidecar-15006"),
        "TPROXY inbound: {r}"
    );
    let r = curl(&m.pod, APP, &format!("http://{PEER4}:8080/"));
    assert!(
        r.contains("peer-8080") && via(&r) == Some("sidecar-15001"),
        "outbound: {r}"
    );
    let r = curl(&m.peer, 0, &format!("http://{POD4}:15020/"));
    assert!(
        r.contains("pod-15020") && via(&r).is_none(),
        "excluded: {r}"
    );
    let first = save4(&m.pod);
    m.init(&["-m", "TPROXY"]);
    assert_eq!(save4(&m.pod), first, "second init");
    assert_eq!(
        m.pod
            .sh("ip rule | grep -c 'fwmark 0x539 lookup 133'")
            .unwrap()
            .trim(),
        "1"
    );
    let out = m.interceptor(&["cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Tables init had to create stay (empty); everything else is as before.
    let mut after = save4(&m.pod);
    after.retain(|t, chains| {
        before.contains_key(t) || chains.values().any(|(p, r)| !r.is_empty() || p != "ACCEPT")
    });
    assert_eq!(after, before);
    assert_eq!(
        m.pod
            .sh("ip rule; ip route show table all | grep -c . || true")
            .unwrap(),
        rules_before
    );
}

#[test]
fn ipv6_is_intercepted() {
    require_root!();
    let mut m = Mesh::new();
    m.pod
        .sh("ip6tables -A INPUT -p ipv6-icmp -j ACCEPT")
        .unwrap();
    let before4 = save4(&m.pod);
    let before6 = save6(&m.pod);
    m.start_sidecar(false);
    m.init(&["--ipv6"]);
    let r = curl(&m.pod, APP, &format!("http://[{PEER6}]:8080/"));
    assert!(r.contains("via-sidecar-15001"), "IPv6 outbound: {r}");
    let r = curl(&m.peer, 0, &format!("http://[{POD6}]:8080/"));
    assert!(r.contains("via-sidecar-15006"), "IPv6 inbound: {r}");
    let r = curl(&m.peer, 0, &format!("http://[{POD6}]:15020/"));
    assert!(r.contains("pod-15020"), "IPv6 excluded port: {r}");
    let first = save6(&m.pod);
    m.init(&["--ipv6"]);
    assert_eq!(save6(&m.pod), first, "second init (IPv6)");
    // And IPv4 still goes its own way.
    let r = curl(&m.pod, APP, &format!("http://{PEER4}:8080/"));
    assert_eq!(via(&r), Some("sidecar-15001"));
    // cleanup covers both families.
    let out = m.interceptor(&["cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(without_new_empty_tables(save6(&m.pod), &before6), before6);
    assert_eq!(without_new_empty_tables(save4(&m.pod), &before4), before4);
    let r = curl(&m.pod, APP, &format!("http://[{PEER6}]:8080/"));
    assert!(r.contains("peer-8080"), "IPv6 after cleanup: {r}");
}

fn dns_query(m: &Mesh, proto: &str, server: &str) -> String {
    let client = m.dir.write("dns_client.py", DNS_CLIENT);
    let out = m
        .pod
        .sh_as(
            APP,
            APP,
            &format!("/usr/bin/python3 {client} {proto} {server} 53"),
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_udp(ns: &Netns, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !ns
            .sh(&format!("ss -Hlun 'sport = :{port}'"))
            .unwrap()
            .trim()
            .is_empty()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no UDP listener on {port}");
}

#[test]
fn dns_capture_sends_udp_and_tcp_53_to_15053() {
    require_root!();
    let mut m = Mesh::new();
    let server = m.dir.write("dns_server.py", DNS_SERVER);
    m.peer
        .spawn(&format!("/usr/bin/python3 {server} 0.0.0.0 53 peer-dns"))
        .unwrap();
    m.peer.wait_listen(53).unwrap();
    wait_udp(&m.peer, 53);
    // The agent's resolver runs as the proxy uid.
    m.pod
        .spawn_as(
            PROXY,
            PROXY,
            &format!("/usr/bin/python3 {server} 127.0.0.1 15053 agent-dns"),
        )
        .unwrap();
    m.pod.wait_listen(15053).unwrap();
    wait_udp(&m.pod, 15053);
    m.start_sidecar(false);

    m.init(&[]);
    assert_eq!(
        dns_query(&m, "udp", PEER4),
        "peer-dns",
        "without --redirect-dns"
    );
    m.init(&["--redirect-dns", "--dns-servers", PEER4]);
    assert_eq!(dns_query(&m, "udp", PEER4), "agent-dns");
    assert_eq!(dns_query(&m, "tcp", PEER4), "agent-dns");
    // The agent's own upstream queries are not captured.
    let client = m.dir.write("dns_client.py", DNS_CLIENT);
    let out = m
        .pod
        .sh_as(
            PROXY,
            PROXY,
            &format!("/usr/bin/python3 {client} udp {PEER4} 53"),
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "peer-dns");
    // Only the listed server: another address is not redirected (nothing answers there).
    m.init(&["--redirect-dns", "--capture-all-dns"]);
    assert_eq!(
        dns_query(&m, "udp", "10.77.0.99"),
        "agent-dns",
        "capture-all catches any server"
    );
}

#[test]
fn dry_run_prints_restore_input_and_applies_nothing() {
    require_root!();
    let ns = Netns::new("idry").unwrap();
    let before = save4(&ns);
    let out = ns
        .command(interceptor_bin().to_str().unwrap())
        .args(["init", "-n", "--ipv6"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("# iptables-restore\n*nat\n"), "{text}");
    let (v4, v6) = text.split_once("# ip6tables-restore\n").expect("IPv6 part");
    assert_eq!(save4(&ns), before, "dry run changed the ruleset");
    // The printed input is exactly what loads the ruleset.
    let dir = TempDir::new();
    let f4 = dir.write("v4", v4);
    let f6 = dir.write("v6", v6);
    ns.sh(&format!(
        "iptables-restore --noflush < {f4} && ip6tables-restore --noflush < {f6}"
    ))
    .unwrap();
    assert_eq!(save4(&ns), ours(&["--ipv6"], false));
    assert_eq!(save6(&ns), ours(&["--ipv6"], true));
    // Flags can come from istio's environment variables; the command line wins.
    let out = ns
        .command(interceptor_bin().to_str().unwrap())
        .args(["init", "-n"])
        .env("ISTIO_INBOUND_PORTS", "8081")
        .env("ISTIO_META_DNS_CAPTURE", "true")
        .env("CAPTURE_ALL_DNS", "true")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--dport 8081 -j ISTIO_IN_REDIRECT") && text.contains("ISTIO_OUTPUT_DNS"),
        "{text}"
    );
    let out = ns
        .command(interceptor_bin().to_str().unwrap())
        .args(["init", "-n", "-b", "8082"])
        .env("ISTIO_INBOUND_PORTS", "8081")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--dport 8082 -j") && !text.contains("8081"),
        "{text}"
    );
}

#[test]
fn bad_input_fails_naming_flag_and_value_and_applies_nothing() {
    require_root!();
    let ns = Netns::new("ibad").unwrap();
    let before = save4(&ns);
    for (args, flag, value) in [
        (&["-p", "70000"][..], "--envoy-port", "70000"),
        (
            &["-i", "10.0.0.0/40"][..],
            "--istio-service-cidr",
            "10.0.0.0/40",
        ),
        (
            &["-m", "BOGUS"][..],
            "--istio-inbound-interception-mode",
            "BOGUS",
        ),
        (&["-u", ""][..], "--proxy-uid", ""),
        (&["-b", "80,0"][..], "--istio-inbound-ports", "0"),
    ] {
        let mut all = vec!["init"];
        all.extend_from_slice(args);
        let out = ns
            .command(interceptor_bin().to_str().unwrap())
            .args(&all)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(flag) && err.contains(&format!("'{value}'")),
            "{args:?}: {err}"
        );
        assert_eq!(save4(&ns), before);
    }
}

#[test]
fn missing_iptables_or_net_admin_applies_nothing() {
    require_root!();
    let ns = Netns::new("icap").unwrap();
    let before = save4(&ns);
    let bin = interceptor_bin();
    let out = ns
        .sh_output(&format!(
            "setpriv --inh-caps=-all --bounding-set=-net_admin -- {} init",
            bin.display()
        ))
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    assert_eq!(save4(&ns), before);
    let empty = TempDir::new();
    let out = ns
        .sh_output(&format!(
            "PATH={} {} init",
            empty.0.display(),
            bin.display()
        ))
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no iptables found"),
        "{err}"
    );
    let out = ns
        .sh_output(&format!(
            "PATH={} {} init --force-iptables-binary legacy",
            empty.0.display(),
            bin.display()
        ))
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--force-iptables-binary legacy"),
        "{err}"
    );
    assert_eq!(save4(&ns), before);
}

#[test]
fn backend_follows_existing_rules_and_the_override() {
    require_root!();
    let ns = Netns::new("ibk").unwrap();
    let bin = interceptor_bin();
    let b = bin.to_str().unwrap();
    // Forced legacy: the rules are in x_tables, nothing in nf_tables.
    let out = ns
        .command(b)
        .args(["init", "--force-iptables-binary", "legacy"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ns
        .sh("iptables-legacy-save")
        .unwrap()
        .contains("ISTIO_OUTPUT"));
    assert!(!ns.sh("iptables-nft-save").unwrap().contains("ISTIO_OUTPUT"));
    // Unforced: legacy holds rules now, so a second init and cleanup go there too, and the
    // second init changes nothing.
    let first = save(&ns, "iptables-legacy-save");
    let out = ns.command(b).args(["init"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(save(&ns, "iptables-legacy-save"), first);
    assert!(!ns.sh("iptables-nft-save").unwrap().contains("ISTIO"));
    let out = ns.command(b).args(["cleanup"]).output().unwrap();
    assert!(out.status.success());
    assert!(!ns.sh("iptables-legacy-save").unwrap().contains("ISTIO"));
    // Nothing anywhere: the system default (nft here) is used.
    let fresh = Netns::new("ibk").unwrap();
    let default_is_nft = fresh
        .sh("iptables --version")
        .unwrap()
        .contains("nf_tables");
    let out = fresh.command(b).args(["init"]).output().unwrap();
    assert!(out.status.success());
    let (used, unused) = if default_is_nft {
        ("iptables-nft-save", "iptables-legacy-save")
    } else {
        ("iptables-legacy-save", "iptables-nft-save")
    };
    assert!(fresh.sh(used).unwrap().contains("ISTIO_OUTPUT"));
    assert!(!fresh.sh(unused).unwrap().contains("ISTIO_OUTPUT"));
}

#[test]
fn validation_passes_with_rules_and_fails_with_126_without() {
    require_root!();
    let b = interceptor_bin();
    let b = b.to_str().unwrap();
    let validate = |ns: &Netns, timeout: &str| {
        ns.command(b)
            .args(["init", "--run-validation", "--probe-timeout", timeout])
            .output()
            .unwrap()
    };
    // Pods with a default route (into a peer namespace of ours), so the app-side probe to
    // the TEST-NET address runs as well as istio's proxy-side one.
    let pod_with_route = || {
        let pod = Netns::new("ival").unwrap();
        let peer = Netns::new("ivalp").unwrap();
        veth(&pod, &format!("{POD4}/24"), &peer, &format!("{PEER4}/24")).unwrap();
        pod.sh(&format!("ip route add default via {PEER4}"))
            .unwrap();
        (pod, peer)
    };

    let (pod, _peer) = pod_with_route();
    let out = validate(&pod, "10s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A rule ahead of ours that lets all TCP through: the rules are there, interception isn't.
    let broken = Netns::new("ival").unwrap();
    broken
        .sh("iptables -t nat -A OUTPUT -p tcp -j RETURN")
        .unwrap();
    let out = validate(&broken, "2s");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(126), "{err}");
    assert!(
        err.contains("validation failed") && err.contains("127.0.0.6:15002"),
        "{err}"
    );

    // Only the app's traffic escapes: istio's proxy-side probe would pass, the app probe fails.
    let (pod, _peer) = pod_with_route();
    pod.sh("iptables -t nat -A OUTPUT -m owner ! --uid-owner 1337 -j RETURN")
        .unwrap();
    let out = validate(&pod, "2s");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(126), "{err}");
    assert!(err.contains("192.0.2.1:15002"), "{err}");
}

/// The arguments istio's sidecar injector gives istio-init (injection-template.yaml).
const INJECTOR_ARGS: &[&str] = &[
    "istio-iptables",
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
    "--log_output_level=default:info",
];

#[test]
fn istio_init_command_line_is_accepted_unchanged() {
    require_root!();
    let ns = Netns::new("iinj").unwrap();
    let out = ns
        .command(interceptor_bin().to_str().unwrap())
        .args(INJECTOR_ARGS)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The reference without the port-22 exception, which the injector does not pass.
    let dir = TempDir::new();
    let text = std::fs::read_to_string(data("istio-default.v4.rules")).unwrap();
    let without_22: String = text
        .lines()
        .filter(|l| !l.contains("--dport 22 "))
        .map(|l| format!("{l}\n"))
        .collect();
    let f = dir.write("ref", &without_22);
    let reference = Netns::new("iref").unwrap();
    reference
        .sh(&format!("iptables-restore --noflush < {f}"))
        .unwrap();
    assert_eq!(save4(&ns), save4(&reference));
}

#[test]
fn cni_validation_container_validates_as_the_proxy_user() {
    require_root!();
    let b = interceptor_bin();
    // istio-cni's istio-validation: uid/gid 1337, no capabilities, rules made by someone else.
    let validate = |ns: &Netns| {
        ns.sh_output(&format!(
            "setpriv --reuid={PROXY} --regid={PROXY} --clear-groups --inh-caps=-all --bounding-set=-all -- {} {} --run-validation --skip-rule-apply --probe-timeout 3s",
            b.display(),
            INJECTOR_ARGS.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
        ))
        .unwrap()
    };
    let with_rules = Netns::new("icni").unwrap();
    let out = with_rules
        .command(b.to_str().unwrap())
        .args(["init"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let before = save4(&with_rules);
    let out = validate(&with_rules);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        save4(&with_rules),
        before,
        "--skip-rule-apply changed rules"
    );
    let without = Netns::new("icni").unwrap();
    let out = validate(&without);
    assert_eq!(
        out.status.code(),
        Some(126),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn network_namespace_flag_and_cleanup_only() {
    require_root!();
    let ns = Netns::new("inet").unwrap();
    let before = save4(&ns);
    let b = interceptor_bin();
    // Run from the test's own namespace, pointing at the pod's.
    let out = std::process::Command::new(&b)
        .args(["init", "--network-namespace", &ns.path()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(save4(&ns).contains_key("nat") && save4(&ns)["nat"].contains_key("ISTIO_OUTPUT"));
    let out = std::process::Command::new(&b)
        .args([
            "istio-iptables",
            "--cleanup-only",
            "--network-namespace",
            &ns.path(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(without_new_empty_tables(save4(&ns), &before), before);
    let out = std::process::Command::new(&b)
        .args(["init", "--network-namespace", "/nonexistent/ns"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("--network-namespace")
            && err.contains("/nonexistent/ns"),
        "{err}"
    );
}

#[test]
fn a_failing_family_leaves_nothing_applied() {
    require_root!();
    let ns = Netns::new("iall").unwrap();
    // Someone else's IPv6 chain jumps into an ISTIO_ chain init would remove: the IPv6
    // transaction fails after the IPv4 one went in, and IPv4 must be rolled back.
    ns.sh("iptables -t nat -A POSTROUTING -p udp --dport 9 -j RETURN && ip6tables -N MINE && ip6tables -N ISTIO_OLD && ip6tables -A MINE -j ISTIO_OLD")
        .unwrap();
    let before4 = save4(&ns);
    let before6 = save6(&ns);
    let out = ns
        .command(interceptor_bin().to_str().unwrap())
        .args(["init", "--ipv6"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ip6tables"), "{err}");
    assert_eq!(save4(&ns), before4, "IPv4 rules left behind");
    assert_eq!(save6(&ns), before6);
}
