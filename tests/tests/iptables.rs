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
fn empty_interception_mode_is_redirect() {
    require_root!();
    // istio-iptables' -m is empty unless given, and empty means REDIRECT.
    assert_eq!(
        ours(&["-m", ""], false),
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
    let addrs_before = ns.sh("ip -6 addr show dev lo").unwrap();
    let out = ns
        .command(interceptor_bin().to_str().unwrap())
        .args(["init", "-n", "--ipv6"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // The `ip` change init would make comes first, as a comment line.
    assert!(
        text.starts_with("# ip -6 addr add ::6/128 dev lo\n# iptables-restore\n*nat\n"),
        "{text}"
    );
    assert_eq!(ns.sh("ip -6 addr show dev lo").unwrap(), addrs_before);
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
        // Values that look like flags reach the checks (clap would say "unexpected
        // argument" and exit 2).
        (&["-p", "-1"][..], "--envoy-port", "-1"),
        (&["-z", "-15006"][..], "--inbound-capture-port", "-15006"),
        // Empty items inside a list; a wholly empty list (-x '') is fine.
        (&["-u", "1337,,"][..], "--proxy-uid", "1337,,"),
        (&["-b", "80,,81"][..], "--istio-inbound-ports", "80,,81"),
        (
            &["-d", "15090,,"][..],
            "--istio-local-exclude-ports",
            "15090,,",
        ),
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
    // A bad value from an environment variable is named by the variable.
    for (var, value, flags) in [
        ("INBOUND_CAPTURE_PORT", "70000", &[][..]),
        ("PROXY_UID", "1337,,", &[][..]),
        ("ISTIO_INBOUND_PORTS", "80,,81", &["-m", ""][..]),
    ] {
        let out = ns
            .command(interceptor_bin().to_str().unwrap())
            .arg("init")
            .args(flags)
            .env(var, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}={value}: {err}");
        assert!(
            err.contains(&format!("invalid value '{value}' for {var}:")),
            "{var}={value}: {err}"
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

#[test]
fn istio_init_command_line_is_accepted_unchanged() {
    require_root!();
    let ns = Netns::new("iinj").unwrap();
    let out = ns
        .command(interceptor_bin().to_str().unwrap())
        .args(interceptor_tests::INJECTOR_ARGS)
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

/// Runs the rest of its command line with every mount read-only (in a mount namespace of
/// its own), after checking that /tmp cannot be written: a read-only root filesystem.
const READ_ONLY: &str = r#"
for m in $(awk '{print $2}' /proc/self/mounts); do mount -o remount,bind,ro "$m" 2>/dev/null; done
if touch /tmp/.interceptor-rw-check 2>/dev/null; then rm -f /tmp/.interceptor-rw-check; echo "still writable" >&2; exit 99; fi
exec "$@"
"#;

#[test]
fn cni_validation_container_validates_as_the_proxy_user() {
    require_root!();
    let b = interceptor_bin();
    let dir = TempDir::new();
    let read_only = dir.write("read-only.sh", READ_ONLY);
    // istio-cni's istio-validation: the injector's arguments plus --run-validation
    // --skip-rule-apply, uid/gid 1337, no capabilities, a read-only root filesystem, the
    // rules made by someone else.
    let validate = |ns: &Netns| {
        ns.sh_output(&format!(
            "unshare --mount --propagation private sh {read_only} \
             setpriv --reuid {PROXY} --regid {PROXY} --clear-groups --inh-caps=-all --bounding-set=-all -- \
             {} {} --run-validation --skip-rule-apply --probe-timeout 3s",
            b.display(),
            interceptor_tests::INJECTOR_ARGS.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
        ))
        .unwrap()
    };
    // A pod with a default route, as every real pod has: the app-side probe's test
    // address is routable, and must not make a proxy-uid validation without capabilities
    // fail (it can only run istio's own probe).
    let pod_with_route = || {
        let pod = Netns::new("icni").unwrap();
        let peer = Netns::new("icnip").unwrap();
        veth(&pod, &format!("{POD4}/24"), &peer, &format!("{PEER4}/24")).unwrap();
        pod.sh(&format!("ip route add default via {PEER4}"))
            .unwrap();
        (pod, peer)
    };

    let (with_rules, _peer) = pod_with_route();
    let out = with_rules
        .command(b.to_str().unwrap())
        .args(interceptor_tests::INJECTOR_ARGS)
        .output()
        .unwrap();
    assert!(out.status.success());
    let before = save4(&with_rules);
    let out = validate(&with_rules);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {err}", out.status.code());
    assert!(err.contains("Validation passed"), "{err}");
    assert_eq!(
        save4(&with_rules),
        before,
        "--skip-rule-apply changed rules"
    );

    let (without, _peer) = pod_with_route();
    let out = validate(&without);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(126), "{err}");
    assert!(
        err.contains("iptables validation failed")
            && err.contains("127.0.0.6:15002")
            && err.contains("uid 1337"),
        "{err}"
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
    // Someone else's IPv6 chain jumps into an istio chain init would remove (ISTIO_DIVERT is
    // TPROXY's, stale under REDIRECT): the IPv6 transaction fails after the IPv4 one went
    // in, and IPv4 must be rolled back. With an IPv4 nat table before, and without one (the
    // nat table the IPv4 transaction created is deleted again, with the nft backend).
    let v6_trap =
        "ip6tables -N MINE && ip6tables -N ISTIO_DIVERT && ip6tables -A MINE -j ISTIO_DIVERT";
    for v4_before in [
        "iptables -t nat -A POSTROUTING -p udp --dport 9 -j RETURN && ",
        "",
    ] {
        let ns = Netns::new("iall").unwrap();
        ns.sh(&format!("{v4_before}{v6_trap}")).unwrap();
        let before4 = save4(&ns);
        let before6 = save6(&ns);
        let out = ns
            .command(interceptor_bin().to_str().unwrap())
            .args(["init", "--ipv6", "--force-iptables-binary", "nft"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("ip6tables"), "{err}");
        assert_eq!(
            save4(&ns),
            before4,
            "IPv4 rules left behind ({v4_before:?})"
        );
        assert_eq!(save6(&ns), before6);
    }
}

#[test]
fn chains_of_other_tools_that_share_the_prefix_survive() {
    require_root!();
    let ns = Netns::new("ipfx").unwrap();
    let b = interceptor_bin();
    let b = b.to_str().unwrap();
    // Another tool's ISTIO_-prefixed chains, in nat and filter, jumped to from built-in
    // chains.
    ns.sh(
        "iptables -t nat -N ISTIO_CUSTOM && iptables -t nat -A ISTIO_CUSTOM -p udp -j RETURN && \
           iptables -t nat -A OUTPUT -p udp -j ISTIO_CUSTOM && iptables -N ISTIO_CUSTOM && \
           iptables -A INPUT -j ISTIO_CUSTOM && iptables -t mangle -N ISTIO_OUTPUT_X",
    )
    .unwrap();
    let before = save4(&ns);
    // cleanup with nothing of ours installed.
    let out = ns.command(b).args(["cleanup"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(save4(&ns), before, "cleanup removed another tool's chains");
    // init (twice) and cleanup.
    for _ in 0..2 {
        let out = ns
            .command(b)
            .args(["init", "-m", "TPROXY"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let now = save4(&ns);
        assert_eq!(now["nat"]["ISTIO_CUSTOM"], before["nat"]["ISTIO_CUSTOM"]);
        assert!(now["nat"]["OUTPUT"]
            .1
            .contains(&"-p udp -j ISTIO_CUSTOM".to_string()));
    }
    let out = ns.command(b).args(["cleanup"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(without_new_empty_tables(save4(&ns), &before), before);
}

/// Whether a variant's ruleset holds any of istio's chains.
fn holds_istio(ns: &Netns, save: &str) -> bool {
    save_has(&ns.sh(save).unwrap())
}

fn save_has(text: &str) -> bool {
    [
        "ISTIO_OUTPUT",
        "ISTIO_INBOUND",
        "ISTIO_REDIRECT",
        "ISTIO_IN_REDIRECT",
    ]
    .iter()
    .any(|c| text.contains(&format!(":{c} ")))
}

#[test]
fn cleanup_cleans_every_iptables_variant() {
    require_root!();
    let b = interceptor_bin();
    let b = b.to_str().unwrap();
    let both = |ns: &Netns| {
        for backend in ["legacy", "nft"] {
            let out = ns
                .command(b)
                .args(["init", "--ipv6", "--force-iptables-binary", backend])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for save in [
            "iptables-legacy-save",
            "iptables-nft-save",
            "ip6tables-legacy-save",
            "ip6tables-nft-save",
        ] {
            assert!(holds_istio(ns, save), "{save} holds no rules after init");
        }
    };
    let clean = |ns: &Netns| {
        for save in [
            "iptables-legacy-save",
            "iptables-nft-save",
            "ip6tables-legacy-save",
            "ip6tables-nft-save",
        ] {
            assert!(
                !holds_istio(ns, save),
                "{save} still holds rules after cleanup"
            );
        }
    };

    // Plain cleanup: both variants, both families.
    let ns = Netns::new("ivar").unwrap();
    both(&ns);
    let out = ns
        .command(b)
        .args(["cleanup", "--dry-run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for head in [
        "# iptables-legacy-restore\n",
        "# iptables-nft-restore\n",
        "# ip6tables-legacy-restore\n",
        "# ip6tables-nft-restore\n",
    ] {
        assert!(
            text.contains(head),
            "{head:?} missing from the dry run:\n{text}"
        );
    }
    let out = ns.command(b).args(["cleanup"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    clean(&ns);

    // A forced cleanup cleans its variant and fails naming what the other still holds;
    // a plain one then finishes the job.
    let ns = Netns::new("ivar").unwrap();
    both(&ns);
    let out = ns
        .command(b)
        .args(["cleanup", "--force-iptables-binary", "nft"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("iptables-legacy") && err.contains("ISTIO_OUTPUT"),
        "{err}"
    );
    assert!(!holds_istio(&ns, "iptables-nft-save") && !holds_istio(&ns, "ip6tables-nft-save"));
    assert!(holds_istio(&ns, "iptables-legacy-save"));
    let out = ns.command(b).args(["cleanup"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    clean(&ns);
}

/// `nft list tables` and both families' iptables-nft-save, normalised: what "as before"
/// means for the nf_tables backend.
fn nft_state(ns: &Netns) -> (String, String, String) {
    let norm = |cmd: &str| normalise_save(&ns.sh(cmd).unwrap());
    (
        ns.sh("nft list tables").unwrap(),
        norm("iptables-nft-save"),
        norm("ip6tables-nft-save"),
    )
}

/// iptables-save output without comments and counters.
fn normalise_save(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix(':') {
            Some(decl) => {
                let mut w = decl.split_whitespace();
                format!(":{} {}\n", w.next().unwrap_or(""), w.next().unwrap_or(""))
            }
            None => format!("{l}\n"),
        })
        .collect()
}

#[test]
fn cleanup_deletes_the_nft_tables_init_created() {
    require_root!();
    let b = interceptor_bin();
    let b = b.to_str().unwrap();
    // Every table: mangle (TPROXY, drop-invalid), nat, raw (DNS), both families.
    let flags = [
        "init",
        "--force-iptables-binary",
        "nft",
        "--ipv6",
        "-m",
        "TPROXY",
        "--drop-invalid",
        "--redirect-dns",
        "--dns-servers",
        "10.96.0.10,fd00::10",
    ];
    for preexisting in [
        None,
        Some("iptables-nft -t nat -A POSTROUTING -p udp --dport 9 -j RETURN"),
    ] {
        let ns = Netns::new("itbl").unwrap();
        if let Some(cmd) = preexisting {
            ns.sh(cmd).unwrap();
        }
        let before = nft_state(&ns);
        let out = ns.command(b).args(flags).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tables = ns.sh("nft list tables").unwrap();
        for t in [
            "ip nat",
            "ip mangle",
            "ip raw",
            "ip6 nat",
            "ip6 mangle",
            "ip6 raw",
        ] {
            assert!(
                tables.contains(&format!("table {t}\n")),
                "{t} missing:\n{tables}"
            );
        }
        // A second init with fewer tables keeps the record of what the first created.
        let out = ns
            .command(b)
            .args(["init", "--force-iptables-binary", "nft"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = ns
            .command(b)
            .args(["cleanup", "--dry-run", "--force-iptables-binary", "nft"])
            .output()
            .unwrap();
        let dry = String::from_utf8_lossy(&out.stdout);
        assert!(
            dry.contains("# nft delete table ip mangle\n")
                && dry.contains("# nft delete table ip6 raw\n"),
            "{dry}"
        );
        assert_eq!(
            dry.contains("# nft delete table ip nat\n"),
            preexisting.is_none(),
            "{dry}"
        );
        let out = ns.command(b).args(["cleanup"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            nft_state(&ns),
            before,
            "after cleanup (preexisting: {preexisting:?})"
        );
    }
    // A table someone else filled after init stays, with their rule.
    let ns = Netns::new("itbl").unwrap();
    let out = ns
        .command(b)
        .args(["init", "--force-iptables-binary", "nft", "--drop-invalid"])
        .output()
        .unwrap();
    assert!(out.status.success());
    ns.sh("iptables-nft -t mangle -A OUTPUT -p udp --dport 9 -j RETURN")
        .unwrap();
    let out = ns.command(b).args(["cleanup"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = ns.sh("nft list tables").unwrap();
    assert!(
        tables.contains("table ip mangle") && !tables.contains("table ip nat"),
        "{tables}"
    );
    assert!(ns
        .sh("iptables-nft-save -t mangle")
        .unwrap()
        .contains("-A OUTPUT -p udp -m udp --dport 9 -j RETURN"));
}

#[test]
fn tproxy_dry_run_shows_the_ip_commands_and_stays_restore_input() {
    require_root!();
    let ns = Netns::new("itpd").unwrap();
    let routing = |ns: &Netns| {
        ns.sh("ip -4 rule; ip -6 rule; ip route show table all; ip -6 addr show dev lo")
            .unwrap()
    };
    let before = routing(&ns);
    let out = ns
        .command(interceptor_bin().to_str().unwrap())
        .args(["init", "-n", "-m", "TPROXY", "--ipv6"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "# ip -6 addr add ::6/128 dev lo\n",
        "# ip -4 rule add fwmark 1337 lookup 133\n",
        "# ip -4 route replace local default dev lo table 133\n",
        "# ip -6 rule add fwmark 1337 lookup 133\n",
        "# ip -6 route replace local default dev lo table 133\n",
    ] {
        assert!(text.contains(cmd), "{cmd:?} missing:\n{text}");
    }
    assert_eq!(routing(&ns), before, "the dry run changed routing");
    // The output is still iptables-restore input, part by part.
    let (v4, v6) = text.split_once("# ip6tables-restore\n").unwrap();
    let dir = TempDir::new();
    ns.sh(&format!(
        "iptables-restore --noflush < {} && ip6tables-restore --noflush < {}",
        dir.write("v4", v4),
        dir.write("v6", v6)
    ))
    .unwrap();
    assert!(save4(&ns)["mangle"].contains_key("ISTIO_TPROXY"));
}

#[test]
fn init_logs_the_configuration_and_the_applied_input() {
    require_root!();
    let b = interceptor_bin();
    let run = |args: &[&str]| {
        let ns = Netns::new("ilog").unwrap();
        let out = ns.command(b.to_str().unwrap()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?}: stdout is for --dry-run's input only"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let applied = [
        "*nat\n",
        ":ISTIO_OUTPUT - [0:0]\n",
        "-A OUTPUT -j ISTIO_OUTPUT\n",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n",
        "COMMIT",
    ];
    // With no flag, and with the injector's (--log_output_level=default:info): plain text,
    // no terminal colours.
    let mut injector = vec!["init"];
    injector.extend_from_slice(&interceptor_tests::INJECTOR_ARGS[1..]);
    for args in [&["init"][..], &injector[..]] {
        let log = run(args);
        assert!(!log.contains('\x1b'), "{args:?}: ANSI codes in {log:?}");
        assert!(log.contains("Istio config:\n"), "{args:?}: {log}");
        for setting in [
            "PROXY_PORT=15001\n",
            "PROXY_UID=1337\n",
            "INBOUND_INTERCEPTION_MODE=REDIRECT\n",
            "OUTBOUND_IP_RANGES_INCLUDE=*\n",
        ] {
            assert!(
                log.contains(setting),
                "{args:?}: {setting:?} missing from\n{log}"
            );
        }
        for line in applied {
            assert!(log.contains(line), "{args:?}: {line:?} missing from\n{log}");
        }
    }
    assert!(run(&injector).contains("INBOUND_PORTS_EXCLUDE=15090,15021,15020\n"));

    // --log_as_json: every line a JSON object; the same content in the messages.
    let mut json_args = injector.clone();
    json_args.push("--log_as_json");
    let log = run(&json_args);
    let messages: Vec<String> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{log}"));
            assert!(v.is_object(), "{l}");
            v["message"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("PROXY_PORT=15001\n")),
        "{log}"
    );
    assert!(
        messages
            .iter()
            .any(|m| applied.iter().all(|a| m.contains(a))),
        "{log}"
    );
    // A failure is a JSON line too.
    let ns = Netns::new("ilog").unwrap();
    let out = ns
        .command(b.to_str().unwrap())
        .args(["init", "-p", "-1", "--log_as_json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(
        lines.iter().any(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.contains("invalid value '-1' for --envoy-port"))),
        "{err}"
    );
}
