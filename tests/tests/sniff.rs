//! `interceptor sniff` against real traffic: namespaces joined by a veth, real servers and
//! clients (nginx, python, curl, wrk, raw sockets), captured by tcpdump, and the sniffer's
//! findings compared with tshark's HTTP dissector on the same file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use interceptor_tests::{interceptor_bin, require_root, unique, veth, Netns};
use serde_json::Value;

const PY: &str = "/usr/bin/python3";

/// A client and a server namespace joined by a veth: 10.x.0.1 (client), 10.x.0.2 (server).
struct Pair {
    client: Netns,
    server: Netns,
    client_if: String,
    server_if: String,
    server_ip: String,
    dir: PathBuf,
}

impl Pair {
    fn new(octet: u8) -> Result<Pair> {
        let client = Netns::new("snc")?;
        let server = Netns::new("sns")?;
        let (client_if, server_if) = veth(
            &client,
            &format!("10.{octet}.0.1/24"),
            &server,
            &format!("10.{octet}.0.2/24"),
        )?;
        let dir = std::env::temp_dir().join(unique("sniff-test-"));
        std::fs::create_dir_all(&dir)?;
        // nginx workers run as nobody and must read the document root.
        Command::new("chmod")
            .args(["0755", dir.to_str().unwrap_or("/")])
            .status()?;
        Ok(Pair {
            client,
            server,
            client_if,
            server_if,
            server_ip: format!("10.{octet}.0.2"),
            dir,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn nginx(&mut self, port: u16) -> Result<()> {
        let www = self.path("www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), "<h1>hello from nginx</h1>\n")?;
        let big: String = (0..4000)
            .map(|i| format!("line {i} of a larger page\n"))
            .collect();
        std::fs::write(www.join("big.txt"), big)?;
        let conf = format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; keepalive_requests 100000;\n\
               server {{ listen {ip}:{port}; location / {{ root {www}; }} }} }}\n",
            d = self.dir.display(),
            ip = self.server_ip,
            www = www.display()
        );
        std::fs::write(self.path("nginx.conf"), conf)?;
        Command::new("chmod")
            .args(["-R", "a+rX", self.dir.to_str().unwrap_or("/")])
            .status()?;
        self.server.spawn(&format!(
            "nginx -c {}/nginx.conf -p {}",
            self.dir.display(),
            self.dir.display()
        ))?;
        self.server.wait_listen(port)
    }

    /// A python server with chunked (+ trailer), gzip, deflate and close-delimited bodies;
    /// every body names the path, so pairing can be checked.
    fn python(&mut self, port: u16) -> Result<()> {
        let script = r#"
import gzip, socketserver, sys, zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def body_text(self):
        return ("you asked for %s\n" % self.path).encode() * 3
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(n)
        out = b"got " + str(len(data)).encode() + b" bytes for " + self.path.encode()
        self.send_response(201); self.send_header("Content-Length", str(len(out))); self.end_headers()
        self.wfile.write(out)
    def do_GET(self):
        b = self.body_text()
        if self.path.startswith("/chunked"):
            self.send_response(200); self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum"); self.end_headers()
            for piece in (b[:7], b[7:20], b[20:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece)); self.wfile.flush()
            self.wfile.write(b"0\r\nX-Checksum: 42\r\n\r\n")
        elif self.path.startswith("/gzip"):
            z = gzip.compress(b)
            self.send_response(200); self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(z))); self.end_headers(); self.wfile.write(z)
        elif self.path.startswith("/deflate"):
            z = zlib.compress(b)
            self.send_response(200); self.send_header("Content-Encoding", "deflate")
            self.send_header("Content-Length", str(len(z))); self.end_headers(); self.wfile.write(z)
        elif self.path.startswith("/close"):
            self.send_response(200); self.send_header("Connection", "close"); self.end_headers()
            self.wfile.write(b); self.close_connection = True
        elif self.path.startswith("/empty"):
            self.send_response(204); self.end_headers()
        else:
            self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers()
            self.wfile.write(b)
class S(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
S((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"#;
        std::fs::write(self.path("server.py"), script)?;
        self.server.spawn(&format!(
            "{PY} {} {} {port}",
            self.path("server.py").display(),
            self.server_ip
        ))?;
        self.server.wait_listen(port)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// tcpdump writing to a file, stopped (and flushed) by `stop`.
struct Tcpdump(Child, BufReader<std::process::ChildStderr>);

impl Tcpdump {
    fn start(ns: &Netns, iface: &str, file: &Path, filter: &str) -> Result<Tcpdump> {
        let mut child = ns
            .command("tcpdump")
            .args(["-i", iface, "-B", "65536", "-U", "-s", "0", "-w"])
            .arg(file)
            .args(filter.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        // Ready once it says it is listening.
        let mut stderr = BufReader::new(child.stderr.take().context("tcpdump stderr")?);
        let mut line = String::new();
        stderr.read_line(&mut line)?;
        if !line.contains("listening") {
            bail!("tcpdump did not start: {line}");
        }
        Ok(Tcpdump(child, stderr))
    }

    /// Stops tcpdump and checks the kernel dropped nothing (the comparison with tshark
    /// is about decoding, not about holes in the capture).
    fn stop(mut self) -> Result<()> {
        // Packets wait in a ring block until its timeout (1 s in tcpdump); interrupting
        // earlier would lose them.
        std::thread::sleep(Duration::from_millis(1500));
        Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status()?;
        self.0.wait()?;
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.1, &mut rest)?;
        if !rest
            .lines()
            .any(|l| l.trim() == "0 packets dropped by kernel")
        {
            bail!("tcpdump dropped packets: {rest}");
        }
        Ok(())
    }
}

/// Rewrites a classic pcap with packets swapped pairwise and duplicated, as a network
/// that reorders and duplicates would deliver them (netem is not always available).
fn disturb(src: &Path, dst: &Path) -> Result<(usize, usize)> {
    let b = std::fs::read(src)?;
    if b.len() < 24 || b[..4] != [0xd4, 0xc3, 0xb2, 0xa1] {
        bail!("expected a little-endian microsecond pcap from tcpdump");
    }
    let mut recs: Vec<&[u8]> = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let caplen = u32::from_le_bytes(b[at + 8..at + 12].try_into()?) as usize;
        recs.push(&b[at..at + 16 + caplen]);
        at += 16 + caplen;
    }
    let mut out = b[..24].to_vec();
    let mut x: u64 = 0x2545f4914f6cdd1d;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % 100
    };
    let (mut swapped, mut duplicated) = (0, 0);
    // Only packets travelling the same way can overtake each other on the wire. Only
    // segments that carry data are disturbed: reordered or repeated bare ACKs would leave
    // the reassembler nothing to prove, and how many a capture has depends on timing.
    let same_way = |a: &[u8], b: &[u8]| a.get(16 + 26..16 + 34) == b.get(16 + 26..16 + 34);
    let mut moved = vec![false; recs.len()];
    for i in 0..recs.len() {
        if moved[i] {
            continue;
        }
        if carries_data(recs[i]) && rnd() < 50 {
            // The next data segment the same way, a few packets on, overtakes this one, as
            // segments of one flight can on the wire; not past data going the other way,
            // which it could not have been sent before.
            let next = (i + 1..recs.len().min(i + 6))
                .take_while(|&j| same_way(recs[i], recs[j]) || !carries_data(recs[j]))
                .find(|&j| !moved[j] && carries_data(recs[j]));
            if let Some(j) = next {
                out.extend_from_slice(recs[j]);
                moved[j] = true;
                swapped += 1;
            }
        }
        out.extend_from_slice(recs[i]);
        if carries_data(recs[i]) && rnd() < 15 {
            out.extend_from_slice(recs[i]);
            duplicated += 1;
        }
    }
    std::fs::write(dst, out)?;
    Ok((swapped, duplicated))
}

/// Whether a pcap record (16-byte record header, Ethernet, IPv4, TCP) carries TCP payload.
fn carries_data(rec: &[u8]) -> bool {
    let ip = 16 + 14;
    let (Some(&vihl), Some(len)) = (rec.get(ip), rec.get(ip + 2..ip + 4)) else {
        return false;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let Some(&off) = rec.get(ip + ihl + 12) else {
        return false;
    };
    total > ihl + usize::from(off >> 4) * 4
}

/// Runs the sniffer on a file; returns its JSON records.
fn sniff_file(file: &Path, extra: &[&str]) -> Result<Vec<Value>> {
    let out = Command::new(interceptor_bin())
        .args(["sniff", "-q", "--json", "-I"])
        .arg(file)
        .args(extra)
        .output()?;
    if !out.status.success() {
        bail!("sniff failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_lines(&out.stdout)
}

fn parse_lines(b: &[u8]) -> Result<Vec<Value>> {
    String::from_utf8_lossy(b)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad JSON line: {l}")))
        .collect()
}

fn of_type<'a>(records: &'a [Value], t: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == t).collect()
}

fn header<'a>(msg: &'a Value, name: &str) -> Option<&'a str> {
    msg["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

/// What both tools must agree on: requests (method, target, host) and responses
/// (status, content-length), as multisets.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    requests: BTreeMap<(String, String, String), usize>,
    responses: BTreeMap<(u16, String), usize>,
}

fn ours(records: &[Value]) -> Seen {
    let mut s = Seen::default();
    for ex in of_type(records, "exchange") {
        let req = &ex["request"];
        let key = (
            req["method"].as_str().unwrap_or("").to_string(),
            req["target"].as_str().unwrap_or("").to_string(),
            header(req, "host").unwrap_or("").to_string(),
        );
        *s.requests.entry(key).or_default() += 1;
        if ex["response"].is_object() {
            let r = &ex["response"];
            let key = (
                r["status"].as_u64().unwrap_or(0) as u16,
                header(r, "content-length").unwrap_or("").to_string(),
            );
            *s.responses.entry(key).or_default() += 1;
        }
    }
    for r in of_type(records, "response") {
        let r = &r["response"];
        let key = (
            r["status"].as_u64().unwrap_or(0) as u16,
            header(r, "content-length").unwrap_or("").to_string(),
        );
        *s.responses.entry(key).or_default() += 1;
    }
    s
}

/// tshark's view. A frame can carry several pipelined messages, so fields come as lists.
fn tshark(file: &Path, port: u16) -> Result<Seen> {
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(file)
        .args([
            "-o",
            "tcp.reassemble_out_of_order:TRUE",
            "-d",
            &format!("tcp.port=={port},http"),
            "-Y",
            "http",
            "-T",
            "fields",
            "-E",
            "separator=\t",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=\u{1}",
            "-e",
            "http.request.method",
            "-e",
            "http.request.uri",
            "-e",
            "http.host",
            "-e",
            "http.response.code",
            "-e",
            "http.content_length_header",
            "-e",
            "http.transfer_encoding",
        ])
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!("tshark failed");
    }
    let mut s = Seen::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<Vec<&str>> = line
            .split('\t')
            .map(|x| {
                if x.is_empty() {
                    vec![]
                } else {
                    x.split('\u{1}').collect()
                }
            })
            .collect();
        let get = |i: usize| f.get(i).cloned().unwrap_or_default();
        let (methods, uris, hosts, codes, lengths, te) =
            (get(0), get(1), get(2), get(3), get(4), get(5));
        for (i, m) in methods.iter().enumerate() {
            let key = (
                m.to_string(),
                uris.get(i).unwrap_or(&"").to_string(),
                hosts.get(i).unwrap_or(&"").to_string(),
            );
            *s.requests.entry(key).or_default() += 1;
        }
        // Responses of one frame: chunked ones carry no Content-Length, so lengths are
        // matched to codes only when every response in the frame has one.
        for (i, c) in codes.iter().enumerate() {
            let cl = if lengths.len() == codes.len() {
                lengths[i].to_string()
            } else if te.is_empty() && lengths.len() == 1 && codes.len() == 1 {
                lengths[0].to_string()
            } else {
                String::new()
            };
            *s.responses.entry((c.parse().unwrap_or(0), cl)).or_default() += 1;
        }
    }
    Ok(s)
}

fn assert_agrees_with_tshark(file: &Path, port: u16, records: &[Value]) {
    let theirs = tshark(file, port).expect("tshark");
    if theirs.requests.is_empty() {
        let _ = std::fs::copy(file, "/tmp/snifft/failed.pcap");
    }
    let ours = ours(records);
    assert!(
        !theirs.requests.is_empty(),
        "tshark found no HTTP in {}",
        file.display()
    );
    assert_eq!(
        ours.requests, theirs.requests,
        "requests differ from tshark's"
    );
    assert_eq!(
        ours.responses, theirs.responses,
        "responses differ from tshark's"
    );
}

fn stats(records: &[Value]) -> &Value {
    records
        .iter()
        .rev()
        .find(|r| r["type"] == "stats")
        .expect("a stats record")
}

#[test]
fn nginx_curl_and_wrk_agree_with_tshark() {
    require_root!();
    let mut p = Pair::new(61).unwrap();
    p.nginx(80).unwrap();
    let file = p.path("nginx.pcap");
    let td = Tcpdump::start(&p.client, &p.client_if, &file, "tcp port 80").unwrap();
    let ip = &p.server_ip;
    p.client
        .sh(&format!(
            "curl -sf http://{ip}/ http://{ip}/big.txt -o /dev/null -o /dev/null && \
             curl -s http://{ip}/missing -o /dev/null && curl -sI http://{ip}/ -o /dev/null && \
             curl -s -X POST --data-binary 'name=value&x=1' http://{ip}/ -o /dev/null && \
             curl -s -H 'Host: catalog.istioinaction:80' http://{ip}/ -o /dev/null && \
             wrk -t1 -c4 -d1s http://{ip}/ >/dev/null"
        ))
        .unwrap();
    td.stop().unwrap();
    let records = sniff_file(&file, &[]).unwrap();
    assert_agrees_with_tshark(&file, 80, &records);
    let ex = of_type(&records, "exchange");
    assert!(
        ex.len() > 100,
        "wrk should have made many exchanges, got {}",
        ex.len()
    );
    // Every request got its response, with a latency from the packet timestamps, except
    // those wrk's connections had in flight when it stopped.
    let unanswered = ex.iter().filter(|e| e["response"].is_null()).count();
    assert!(unanswered <= 4, "{unanswered} unanswered");
    assert!(ex
        .iter()
        .filter(|e| e["response"].is_object())
        .all(|e| e["latency_us"].is_u64()));
    assert!(ex
        .iter()
        .filter(|e| header(&e["request"], "user-agent").is_some_and(|u| u.starts_with("curl")))
        .all(|e| e["response"].is_object()));
    let big = ex
        .iter()
        .find(|e| e["request"]["target"] == "/big.txt")
        .expect("big.txt");
    assert_eq!(
        big["response"]["body_len"].as_u64(),
        Some(std::fs::metadata(p.path("www/big.txt")).unwrap().len())
    );
    assert_eq!(big["response"]["body_truncated"], true);
    let head = ex
        .iter()
        .find(|e| e["request"]["method"] == "HEAD")
        .expect("HEAD");
    assert_eq!(head["response"]["body_len"], 0);
    let host = ex
        .iter()
        .find(|e| header(&e["request"], "host") == Some("catalog.istioinaction:80"));
    assert!(host.is_some());
    assert_eq!(stats(&records)["exchanges"].as_u64(), Some(ex.len() as u64));
}

#[test]
fn chunked_gzip_close_and_pipelined_agree_with_tshark() {
    require_root!();
    let mut p = Pair::new(62).unwrap();
    p.python(8000).unwrap();
    let file = p.path("py.pcap");
    let td = Tcpdump::start(&p.client, &p.client_if, &file, "tcp port 8000").unwrap();
    let ip = p.server_ip.clone();
    let base = format!("http://{ip}:8000");
    p.client
        .sh(&format!(
            "curl -sf {base}/chunked {base}/gzip {base}/deflate {base}/empty {base}/plain -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null && \
             curl -sf -H 'Accept-Encoding: gzip' {base}/gzip -o /dev/null && \
             curl -s {base}/close -o /dev/null && \
             curl -sf -H 'Expect:' --data-binary @/etc/services {base}/upload -o /dev/null"
        ))
        .unwrap();
    // Three requests in one write on one connection: pipelining from a raw socket.
    let pipelined = format!(
        "import socket,time\ns=socket.create_connection(('{ip}',8000))\n\
         s.sendall(b'GET /p1 HTTP/1.1\\r\\nHost: a\\r\\n\\r\\nGET /p2 HTTP/1.1\\r\\nHost: a\\r\\n\\r\\nGET /chunked-p3 HTTP/1.1\\r\\nHost: a\\r\\nConnection: close\\r\\n\\r\\n')\n\
         d=b''\nwhile True:\n    x=s.recv(65536)\n    if not x: break\n    d+=x\nassert d.count(b'HTTP/1.1 200')==3, d\n"
    );
    std::fs::write(p.path("pipe.py"), pipelined).unwrap();
    p.client
        .sh(&format!("{PY} {}", p.path("pipe.py").display()))
        .unwrap();
    td.stop().unwrap();

    let records = sniff_file(&file, &[]).unwrap();
    assert_agrees_with_tshark(&file, 8000, &records);
    let ex = of_type(&records, "exchange");
    // Each response answers its own request (the body names the path).
    for e in &ex {
        let target = e["request"]["target"].as_str().unwrap();
        let body = e["response"]["body"].as_str().unwrap_or("");
        if e["request"]["method"] == "GET" && target != "/empty" {
            assert_eq!(
                body,
                format!("you asked for {target}\n").repeat(3),
                "pairing of {target}"
            );
        }
    }
    let find = |t: &str| {
        ex.iter()
            .find(|e| e["request"]["target"] == t)
            .unwrap_or_else(|| panic!("{t} missing"))
    };
    assert_eq!(
        header(&find("/chunked")["response"], "x-checksum"),
        Some("42")
    );
    assert_eq!(
        header(&find("/gzip")["response"], "content-encoding"),
        Some("gzip")
    );
    assert_eq!(find("/empty")["response"]["status"], 204);
    let upload = ex
        .iter()
        .find(|e| e["request"]["method"] == "POST")
        .unwrap();
    let size = std::fs::metadata("/etc/services").unwrap().len();
    assert_eq!(upload["request"]["body_len"].as_u64(), Some(size));
    assert_eq!(
        upload["response"]["body"],
        format!("got {size} bytes for /upload")
    );
    // The three pipelined requests, in order, on one connection.
    let piped: Vec<&str> = ex
        .iter()
        .filter(|e| header(&e["request"], "host") == Some("a"))
        .map(|e| e["request"]["target"].as_str().unwrap())
        .collect();
    assert_eq!(piped, ["/p1", "/p2", "/chunked-p3"]);
}

#[test]
fn reordered_and_duplicated_segments_agree_with_tshark() {
    require_root!();
    let mut p = Pair::new(63).unwrap();
    p.nginx(80).unwrap();
    // Small segments, so the large page spans many of them.
    p.client
        .sh(&format!("ip link set {} mtu 600", p.client_if))
        .unwrap();
    p.server
        .sh(&format!("ip link set {} mtu 600", p.server_if))
        .unwrap();
    let file = p.path("clean.pcap");
    let td = Tcpdump::start(&p.client, &p.client_if, &file, "tcp port 80").unwrap();
    let ip = &p.server_ip;
    p.client
        .sh(&format!(
            "for i in 1 2 3 4 5; do curl -sf http://{ip}/big.txt http://{ip}/?n=$i -o /dev/null -o /dev/null; done"
        ))
        .unwrap();
    td.stop().unwrap();
    let disturbed = p.path("disturbed.pcap");
    let (swapped, duplicated) = disturb(&file, &disturbed).unwrap();
    assert!(
        swapped > 5 && duplicated > 5,
        "swapped {swapped}, duplicated {duplicated}"
    );
    let clean = sniff_file(&file, &[]).unwrap();
    let records = sniff_file(&disturbed, &[]).unwrap();
    assert_agrees_with_tshark(&disturbed, 80, &records);
    let st = stats(&records);
    assert!(
        st["out_of_order"].as_u64().unwrap() > 0 && st["retransmitted"].as_u64().unwrap() > 0,
        "{st}"
    );
    assert_eq!(st["gaps"], 0);
    // Same exchanges, same bodies as from the clean capture.
    let bodies = |r: &[Value]| -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = of_type(r, "exchange")
            .iter()
            .map(|e| {
                (
                    e["request"]["target"].as_str().unwrap().to_string(),
                    e["response"]["body"].as_str().unwrap().to_string(),
                    e["response"]["body_len"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(bodies(&records), bodies(&clean));
    assert_eq!(of_type(&records, "exchange").len(), 10);
    let size = std::fs::metadata(p.path("www/big.txt")).unwrap().len();
    assert!(bodies(&records)
        .iter()
        .filter(|b| b.0 == "/big.txt")
        .all(|b| b.2 == size));
}

#[test]
fn tls_client_hello_is_reported_with_sni_and_alpn_not_as_http() {
    require_root!();
    let mut p = Pair::new(64).unwrap();
    let ip = p.server_ip.clone();
    // A TCP server that reads the ClientHello and hangs up: the handshake is all we need.
    let server = format!(
        "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{ip}',15443)); s.listen()\nwhile True:\n    c,_=s.accept(); c.recv(65536); c.close()\n"
    );
    std::fs::write(p.path("tls-server.py"), server).unwrap();
    p.server
        .spawn(&format!("{PY} {}", p.path("tls-server.py").display()))
        .unwrap();
    p.server.wait_listen(15443).unwrap();
    let client = format!(
        "import socket,ssl\nctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE\n\
         ctx.set_alpn_protocols(['istio-peer-exchange','istio-http/1.1'])\n\
         s=socket.create_connection(('{ip}',15443))\ntry:\n    ctx.wrap_socket(s, server_hostname='outbound_.80_._.catalog.istioinaction.svc.cluster.local')\nexcept Exception: pass\n"
    );
    std::fs::write(p.path("tls-client.py"), client).unwrap();
    let file = p.path("tls.pcap");
    let td = Tcpdump::start(&p.client, &p.client_if, &file, "tcp port 15443").unwrap();
    p.client
        .sh(&format!("{PY} {}", p.path("tls-client.py").display()))
        .unwrap();
    td.stop().unwrap();
    let records = sniff_file(&file, &[]).unwrap();
    let tls = of_type(&records, "tls");
    assert_eq!(tls.len(), 1, "{records:?}");
    assert_eq!(
        tls[0]["sni"],
        "outbound_.80_._.catalog.istioinaction.svc.cluster.local"
    );
    assert_eq!(
        tls[0]["alpn"],
        serde_json::json!(["istio-peer-exchange", "istio-http/1.1"])
    );
    assert_eq!(tls[0]["server"], format!("{ip}:15443"));
    assert!(of_type(&records, "exchange").is_empty());
    // tshark sees the same name.
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args([
            "-Y",
            "tls.handshake.type == 1",
            "-T",
            "fields",
            "-e",
            "tls.handshake.extensions_server_name",
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        tls[0]["sni"].as_str().unwrap()
    );
}

#[test]
fn match_filter_text_layouts_and_pcap_output() {
    require_root!();
    let mut p = Pair::new(65).unwrap();
    p.python(8000).unwrap();
    let file = p.path("m.pcap");
    let td = Tcpdump::start(&p.client, &p.client_if, &file, "tcp").unwrap();
    let base = format!("http://{}:8000", p.server_ip);
    p.client
        .sh(&format!(
            "curl -sf {base}/alpha {base}/beta {base}/gamma -o /dev/null -o /dev/null -o /dev/null"
        ))
        .unwrap();
    td.stop().unwrap();
    // MATCH selects exchanges by either message.
    let only = sniff_file(&file, &["beta"]).unwrap();
    let ex = of_type(&only, "exchange");
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0]["request"]["target"], "/beta");
    // FILTER is libpcap syntax; a port with no traffic finds nothing.
    assert!(of_type(
        &sniff_file(&file, &["", "tcp", "port", "9999"]).unwrap(),
        "exchange"
    )
    .is_empty());
    // -n stops after COUNT exchanges.
    assert_eq!(
        of_type(&sniff_file(&file, &["-n", "2"]).unwrap(), "exchange").len(),
        2
    );
    // Text, byline with timestamps: T line, start line, headers one per line.
    let out = Command::new(interceptor_bin())
        .args(["sniff", "-q", "-tW", "byline", "-I"])
        .arg(&file)
        .arg("gamma")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("T 20")
            && lines[0].ends_with(&format!("-> {}:8000 [request]", p.server_ip)),
        "{text}"
    );
    assert_eq!(lines[1], "GET /gamma HTTP/1.1");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("HTTP/1.0 200 OK") || l.starts_with("HTTP/1.1 200 OK")));
    assert!(text.contains("you asked for /gamma"));
    let out = Command::new(interceptor_bin())
        .args(["sniff", "-q", "-W", "single", "-I"])
        .arg(&file)
        .arg("alpha")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("[request] GET /alpha HTTP/1.1..Host: "),
        "{text}"
    );
    // -O writes the packets that carry the match, readable by tshark.
    let saved = p.path("saved.pcap");
    let out = Command::new(interceptor_bin())
        .args(["sniff", "-q", "--json", "-I"])
        .arg(&file)
        .arg("-O")
        .arg(&saved)
        .arg("alpha")
        .output()
        .unwrap();
    assert!(out.status.success());
    let n = Command::new("tshark")
        .arg("-r")
        .arg(&saved)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let frames = String::from_utf8_lossy(&n.stdout).lines().count();
    assert!((1..=3).contains(&frames), "{frames} frames saved");
}

#[test]
fn bad_arguments_name_the_flag() {
    let run = |args: &[&str]| {
        let out = Command::new(interceptor_bin())
            .arg("sniff")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["-I", "/nonexistent.pcap"]).contains("-I /nonexistent.pcap"));
    assert!(run(&["-I", "/etc/services"]).contains("not a pcap"));
    assert!(run(&["-I", "/etc/services", "("]).contains("MATCH"));
    assert!(run(&["-I", "/tmp", "", "tcp", "port", "banana"]).contains("-I /tmp"));
    assert!(run(&["-d", "nosuchif0", "", "tcp"]).contains("-d nosuchif0"));
    assert!(run(&["-W", "sideways"]).contains("sideways"));
    assert!(run(&["--max-body", "lots"]).contains("--max-body"));
}

/// Waits for a child with a deadline; kills it on timeout.
fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

/// Starts a live sniffer in the client namespace as an unprivileged user holding only
/// CAP_NET_RAW.
fn live_sniffer(p: &Pair, args: &[&str]) -> Child {
    let bin = interceptor_bin();
    let mut c = p.client.command("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all,+net_raw",
        "--ambient-caps=-all,+net_raw",
        "--bounding-set=-all,+net_raw",
        "--",
    ])
    .arg(bin)
    .arg("sniff")
    .args(args)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // Ready when it says it is listening.
    let stderr = child.stderr.take().unwrap();
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        line.contains("listening on"),
        "sniffer did not start: {line}"
    );
    // Keep draining stderr into a file of this sniffer's own (tests run side by side) for
    // the summary line.
    child.stderr = None;
    let file = stderr_file(&child);
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        let _ = std::fs::write(file, rest);
    });
    child
}

/// Where `live_sniffer` keeps what its sniffer wrote on stderr after it started.
fn stderr_file(child: &Child) -> PathBuf {
    std::env::temp_dir().join(format!(
        "sniff-stderr-{}-{}",
        std::process::id(),
        child.id()
    ))
}

/// What a `live_sniffer` that has exited wrote on stderr (the drain may lag its exit).
fn sniffer_stderr(child: &Child) -> String {
    let file = stderr_file(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    text
}

#[test]
fn live_capture_with_cap_net_raw_only_stops_at_count() {
    require_root!();
    let mut p = Pair::new(66).unwrap();
    p.python(8000).unwrap();
    let ifc = p.client_if.clone();
    let mut child = live_sniffer(&p, &["--json", "-n", "3", "-d", &ifc, "", "tcp port 8000"]);
    let base = format!("http://{}:8000", p.server_ip);
    for i in 0..3 {
        p.client
            .sh(&format!("curl -sf {base}/live{i} -o /dev/null"))
            .unwrap();
    }
    let status =
        wait_for(&mut child, Duration::from_secs(20)).expect("sniffer stops after 3 exchanges");
    assert!(status.success());
    let mut out = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let records = parse_lines(&out).unwrap();
    let targets: Vec<&str> = of_type(&records, "exchange")
        .iter()
        .map(|e| e["request"]["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["/live0", "/live1", "/live2"]);
    let st = stats(&records);
    assert_eq!(st["kernel_dropped"], 0);
    assert!(st["kernel_received"].as_u64().unwrap() >= 6);
    assert!(of_type(&records, "exchange")
        .iter()
        .all(|e| e["interface"] == ifc.as_str()));
}

#[test]
fn live_capture_stops_on_sigterm() {
    require_root!();
    let mut p = Pair::new(67).unwrap();
    p.python(8000).unwrap();
    let ifc = p.client_if.clone();
    // SIGTERM: prints what it has, the stats, exits 0.
    let mut child = live_sniffer(&p, &["--json", "-d", &ifc, "", "tcp port 8000"]);
    p.client
        .sh(&format!(
            "curl -sf http://{}:8000/before-term -o /dev/null",
            p.server_ip
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_for(&mut child, Duration::from_secs(10)).expect("exits on SIGTERM");
    assert!(status.success());
    let mut out = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let records = parse_lines(&out).unwrap();
    assert_eq!(
        of_type(&records, "exchange")[0]["request"]["target"],
        "/before-term"
    );
    assert!(stats(&records)["kernel_dropped"].is_u64());
}

/// The interface disappears (the pod was deleted): what was found and the summary are
/// written, then the run fails naming the interface, with a non-zero status as tcpdump's,
/// so a script can tell it from a capture that ended as asked.
#[test]
fn live_capture_fails_when_the_interface_goes() {
    require_root!();
    let mut p = Pair::new(69).unwrap();
    p.python(8000).unwrap();
    let ifc = p.client_if.clone();
    let mut child = live_sniffer(&p, &["--json", "-d", &ifc, "", "tcp port 8000"]);
    p.client
        .sh(&format!(
            "curl -sf http://{}:8000/before-gone -o /dev/null",
            p.server_ip
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    p.client.sh(&format!("ip link del {ifc}")).unwrap();
    let status =
        wait_for(&mut child, Duration::from_secs(10)).expect("exits when the interface goes");
    assert_eq!(status.code(), Some(2));
    let mut out = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let records = parse_lines(&out).unwrap();
    assert_eq!(
        of_type(&records, "exchange")[0]["request"]["target"],
        "/before-gone"
    );
    assert_eq!(stats(&records)["exchanges"], 1);
    let err = sniffer_stderr(&child);
    assert!(err.contains("dropped by kernel"), "stderr: {err}");
    assert!(
        err.contains(&format!("interceptor: interface {ifc} is gone"))
            && err.trim_end().ends_with("; the capture ended early"),
        "stderr: {err}"
    );
}

/// `-s 0` is tcpdump's default (whole packets); a snap length that cuts packets is
/// reported (a notice, `truncated` in the stats) rather than only showing as gaps.
#[test]
fn live_snaplen_zero_keeps_whole_packets_and_cut_ones_are_reported() {
    require_root!();
    let mut p = Pair::new(70).unwrap();
    p.python(8000).unwrap();
    let ifc = p.client_if.clone();
    // 100 bytes cut every packet that carries data (its headers take 66).
    for (snaplen, cut) in [("0", false), ("100", true)] {
        let mut child = live_sniffer(
            &p,
            &["--json", "-s", snaplen, "-d", &ifc, "", "tcp port 8000"],
        );
        p.client
            .sh(&format!(
                "curl -sf http://{}:8000/snap-{snaplen} -o /dev/null",
                p.server_ip
            ))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = wait_for(&mut child, Duration::from_secs(10)).expect("exits on SIGTERM");
        assert!(status.success(), "-s {snaplen}");
        let mut out = Vec::new();
        std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let records = parse_lines(&out).unwrap();
        let st = stats(&records);
        let err = sniffer_stderr(&child);
        let noticed = err.contains("(snap length)") && err.contains("-s 0 captures whole packets");
        if cut {
            assert!(st["truncated"].as_u64().unwrap() >= 1, "-s {snaplen}: {st}");
            assert!(st["gap_bytes"].as_u64().unwrap() >= 1, "-s {snaplen}: {st}");
            assert!(noticed, "-s {snaplen}: {err}");
        } else {
            assert_eq!(
                (&st["truncated"], &st["gaps"]),
                (&0.into(), &0.into()),
                "-s {snaplen}"
            );
            assert!(!noticed, "-s {snaplen}: {err}");
            let body = of_type(&records, "exchange")[0]["response"]["body"].clone();
            assert_eq!(body, "you asked for /snap-0\n".repeat(3), "-s {snaplen}");
        }
    }
}

/// tcpdump writing to a pipe (`-U -w -`) and the sniffer reading it (`-I -`): exchanges are
/// reported while tcpdump still runs, and the end of the pipe ends the run cleanly.
#[test]
fn a_pipe_from_tcpdump_is_sniffed_as_it_comes() {
    require_root!();
    let mut p = Pair::new(71).unwrap();
    p.python(8000).unwrap();
    let mut tcpdump = p
        .client
        .command("tcpdump")
        .args([
            "-i",
            &p.client_if,
            "-U",
            "-s",
            "0",
            "-w",
            "-",
            "tcp",
            "port",
            "8000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut td_err = BufReader::new(tcpdump.stderr.take().unwrap());
    let mut line = String::new();
    td_err.read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "tcpdump: {line}");
    let mut sniff = Command::new(interceptor_bin())
        .args(["sniff", "--json", "-I", "-"])
        .stdin(tcpdump.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sniff.stdout.take().unwrap()).lines();
    p.client
        .sh(&format!(
            "curl -sf http://{}:8000/through-a-pipe -o /dev/null",
            p.server_ip
        ))
        .unwrap();
    // Read on a thread: a line that never comes must fail the test, not hang it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.by_ref() {
            if tx.send(l.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the exchange while tcpdump runs");
    let ex: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(ex["request"]["target"], "/through-a-pipe");
    assert!(tcpdump.try_wait().unwrap().is_none(), "tcpdump still runs");
    Command::new("kill")
        .args(["-INT", &tcpdump.id().to_string()])
        .status()
        .unwrap();
    tcpdump.wait().unwrap();
    let status = wait_for(&mut sniff, Duration::from_secs(10)).expect("ends with the pipe");
    assert!(status.success());
    let stats_line = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let st: Value = serde_json::from_str(&stats_line).unwrap();
    assert_eq!(
        (&st["type"], &st["exchanges"]),
        (&"stats".into(), &1.into())
    );
}

#[test]
fn live_output_shows_each_exchange_while_the_capture_runs() {
    require_root!();
    let mut p = Pair::new(68).unwrap();
    p.python(8000).unwrap();
    let ifc = p.client_if.clone();
    // Text layout, as the seeds watch it: the exchange must appear on stdout within a
    // moment, not when a buffer fills or the capture ends.
    let mut child = live_sniffer(&p, &["-d", &ifc, "", "tcp port 8000"]);
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    p.client
        .sh(&format!(
            "curl -sf http://{}:8000/shown-at-once -o /dev/null",
            p.server_ip
        ))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("HTTP/1.1 200") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.extend(chunk),
            Err(_) => panic!(
                "no response on stdout 5 s after the exchange; got: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    assert!(String::from_utf8_lossy(&seen).contains("GET /shown-at-once HTTP/1.1"));
    // The capture was still running all along.
    assert!(child.try_wait().unwrap().is_none());
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(wait_for(&mut child, Duration::from_secs(10)).is_some_and(|s| s.success()));
}
