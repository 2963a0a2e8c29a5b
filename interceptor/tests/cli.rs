//! The command line as a user meets it. Being an integration test of this package, it also
//! makes `cargo test` build the `interceptor` binary that the root-only suites in `tests/`
//! run.

use std::process::Command;

fn interceptor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_interceptor"))
        .args(args)
        .output()
        .expect("run interceptor")
}

#[test]
fn help_lists_the_interception_commands() {
    let out = interceptor(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["init", "cleanup", "status"] {
        assert!(text.contains(cmd), "{cmd} missing from\n{text}");
    }
}

#[test]
fn init_help_uses_istio_iptables_flag_names() {
    let out = interceptor(&["init", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--envoy-port",
        "--inbound-capture-port",
        "--proxy-uid",
        "--proxy-gid",
        "--istio-inbound-ports",
        "--istio-local-exclude-ports",
        "--istio-service-cidr",
        "--istio-service-exclude-cidr",
        "--istio-outbound-ports",
        "--istio-local-outbound-ports-exclude",
        "--redirect-dns",
        "--cgroup",
    ] {
        assert!(text.contains(flag), "{flag} missing from\n{text}");
    }
}

#[test]
fn a_bad_flag_value_fails_naming_flag_and_value_before_touching_anything() {
    let out = interceptor(&[
        "init",
        "--mode",
        "ebpf",
        "--cgroup",
        "/nonexistent",
        "-q",
        "80,web",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--istio-outbound-ports") && err.contains("'web'"),
        "{err}"
    );
}

#[test]
fn an_unknown_mode_is_refused() {
    let out = interceptor(&["init", "--mode", "nftables"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nftables"));
}

/// A capture file cut off inside a packet record: the exchanges before the cut are still
/// written, with the closing stats line, and then the run fails naming the damage (as
/// tcpdump reports a truncated dump after printing what it read).
#[test]
fn a_capture_file_cut_short_still_reports_what_came_before() {
    use interceptor_sniff::wire::packet::build::ethernet_tcp;
    use interceptor_sniff::wire::packet::flags::{ACK, PSH, SYN};
    use interceptor_sniff::wire::pcap;
    use std::net::SocketAddr;

    let client: SocketAddr = "10.1.0.1:40000".parse().unwrap();
    let server: SocketAddr = "10.1.0.2:80".parse().unwrap();
    let req = b"GET /items HTTP/1.1\r\nHost: catalog\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let frames = [
        ethernet_tcp(client, server, 100, 0, SYN, b""),
        ethernet_tcp(server, client, 500, 101, SYN | ACK, b""),
        ethernet_tcp(client, server, 101, 501, ACK, b""),
        ethernet_tcp(client, server, 101, 501, ACK | PSH, req),
        ethernet_tcp(server, client, 501, 101 + req.len() as u32, ACK | PSH, resp),
        ethernet_tcp(
            client,
            server,
            101 + req.len() as u32,
            501 + resp.len() as u32,
            ACK | PSH,
            req,
        ),
    ];
    let mut w = pcap::Writer::new(Vec::new(), pcap::LINKTYPE_ETHERNET, 65535).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.packet(1_700_000_000_000_000 + i as u64 * 1000, f)
            .unwrap();
    }
    let mut pcap = w.into_inner();
    // Cut inside the last record.
    pcap.truncate(pcap.len() - 10);
    let dir = std::env::temp_dir().join(format!("interceptor-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cut.pcap");
    std::fs::write(&file, &pcap).unwrap();

    let out = interceptor(&[
        "sniff",
        "-I",
        file.to_str().unwrap(),
        "--json",
        "",
        "tcp port 80",
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("pcap: truncated packet at the end"),
        "stderr: {stderr}"
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let exchange = &lines[0];
    assert_eq!(exchange["type"], "exchange");
    assert_eq!(exchange["request"]["target"], "/items");
    assert_eq!(exchange["response"]["status"], 200);
    assert_eq!(exchange["response"]["body"], "ok");
    let stats = lines.last().unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["packets"], 5);
}

/// The frames of one keep-alive connection (handshake, then GET /PATH answered with a
/// 20-byte body, per path), each with how many bytes a snap length cut off its end.
fn connection(paths: &[(&str, usize)]) -> Vec<(Vec<u8>, usize)> {
    use interceptor_sniff::wire::packet::build::ethernet_tcp;
    use interceptor_sniff::wire::packet::flags::{ACK, PSH, SYN};
    use std::net::SocketAddr;

    let c: SocketAddr = "10.1.0.1:40000".parse().unwrap();
    let s: SocketAddr = "10.1.0.2:80".parse().unwrap();
    let mut frames = vec![
        (ethernet_tcp(c, s, 100, 0, SYN, b""), 0),
        (ethernet_tcp(s, c, 500, 101, SYN | ACK, b""), 0),
    ];
    let (mut cs, mut ss) = (101u32, 501u32);
    for (path, cut) in paths {
        let req = format!("GET /{path} HTTP/1.1\r\nHost: catalog\r\n\r\n");
        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{path:>20}");
        frames.push((ethernet_tcp(c, s, cs, ss, ACK | PSH, req.as_bytes()), 0));
        cs += req.len() as u32;
        frames.push((ethernet_tcp(s, c, ss, cs, ACK | PSH, resp.as_bytes()), *cut));
        ss += resp.len() as u32;
    }
    frames
}

/// A classic pcap of `frames`, a millisecond apart.
fn pcap_of(frames: &[(Vec<u8>, usize)]) -> Vec<u8> {
    use interceptor_sniff::wire::pcap::{Writer, LINKTYPE_ETHERNET};
    let mut w = Writer::new(Vec::new(), LINKTYPE_ETHERNET, 262_144).unwrap();
    for (i, (f, cut)) in frames.iter().enumerate() {
        let t = 1_700_000_000_000_000 + i as u64 * 1000;
        w.packet_cut(t, &f[..f.len() - cut], f.len()).unwrap();
    }
    w.into_inner()
}

/// A scratch directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("interceptor-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn json_lines(b: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(b)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Runs the binary with `stdin` as its standard input.
fn interceptor_with_stdin(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_interceptor"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run interceptor");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // Written from a thread: the child's stdout fills while it reads.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// tcpdump's `-r -`: a capture on standard input (a pipe, not mappable) gives what the
/// same file gives.
#[test]
fn dash_i_reads_the_capture_from_a_pipe() {
    let dir = Scratch::new("stdin");
    let pcap = pcap_of(&connection(&[("alpha", 0), ("beta", 0)]));
    let file = dir.file("c.pcap", &pcap);
    let from_file = interceptor(&["sniff", "-q", "--json", "-I", &file]);
    assert!(from_file.status.success());
    let piped = interceptor_with_stdin(&["sniff", "-q", "--json", "-I", "-"], &pcap);
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(piped.stdout, from_file.stdout);
    let lines = json_lines(&piped.stdout);
    assert_eq!(lines.len(), 3, "two exchanges and the stats");
    assert_eq!(lines[1]["request"]["target"], "/beta");
    // Not a capture: named as such, on stdin as on a file.
    let junk = interceptor_with_stdin(&["sniff", "-I", "-"], b"hello, this is no pcap at all");
    assert_eq!(junk.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&junk.stderr).contains("-I -: not a pcap or pcapng file"),
        "{}",
        String::from_utf8_lossy(&junk.stderr)
    );
}

/// `-O -` gives stdout to the pcap alone, so tshark can read it from the pipe; the
/// exchanges (JSON here) and the summary go to stderr.
#[test]
fn dash_o_writes_only_the_pcap_to_stdout_for_tshark() {
    use std::process::Stdio;
    let dir = Scratch::new("stdout");
    let file = dir.file(
        "c.pcap",
        &pcap_of(&connection(&[("alpha", 0), ("beta", 0)])),
    );
    let mut sniff = Command::new(env!("CARGO_BIN_EXE_interceptor"))
        .args(["sniff", "--json", "-I", &file, "-O", "-", "beta"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tshark = Command::new("tshark")
        .args([
            "-r",
            "-",
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
        ])
        .stdin(sniff.stdout.take().unwrap())
        .stderr(Stdio::null())
        .output()
        .expect("run tshark");
    let sniffed = sniff.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&sniffed.stderr);
    assert!(sniffed.status.success(), "{err}");
    assert!(tshark.status.success());
    assert_eq!(String::from_utf8_lossy(&tshark.stdout).trim(), "/beta");
    let mut lines = err.lines();
    let ex: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(ex["request"]["target"], "/beta");
    let stats: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(stats["type"], "stats");
    assert!(
        lines.next().unwrap().contains("1 exchanges (2 seen)"),
        "{err}"
    );
}

/// tcpdump's words for a directory (not mmap's "No such device"); a missing file named.
#[test]
fn dash_i_on_a_directory_or_a_missing_file_says_so() {
    let dir = Scratch::new("dir");
    let path = dir.0.to_str().unwrap();
    let out = interceptor(&["sniff", "-I", path]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("interceptor: -I {path}: is a directory\n")
    );
    let missing = format!("{path}/none.pcap");
    let out = interceptor(&["sniff", "-I", &missing]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("interceptor: -I {missing}: No such file or directory (os error 2)\n")
    );
}

/// `-s 0` is tcpdump's default snap length; packets a snap length cut are reported: a
/// notice when the first comes, `truncated` in the summary line and the stats record.
#[test]
fn snaplen_zero_is_the_default_and_cut_packets_are_reported() {
    let dir = Scratch::new("snap");
    let file = dir.file(
        "c.pcap",
        &pcap_of(&connection(&[("alpha", 0), ("beta", 12)])),
    );
    let out = interceptor(&["sniff", "-s", "0", "--json", "-I", &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("interceptor sniff: packet 6 was captured ") && err.contains("(snap length)"),
        "{err}"
    );
    assert!(err.contains(" packets, 1 truncated, "), "{err}");
    let lines = json_lines(&out.stdout);
    let stats = lines.last().unwrap();
    assert_eq!(
        (&stats["truncated"], &stats["gap_bytes"]),
        (&1.into(), &12.into())
    );
    // -q: counted, not noticed.
    let quiet = interceptor(&["sniff", "-q", "-I", &file]);
    assert!(quiet.stderr.is_empty());
    let out = interceptor(&["sniff", "-s", "10", "-I", &file]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-s 10: the snap length is 0"));
}

/// The summary's `exchanges` are those MATCH selected; `exchanges_seen` all of them.
#[test]
fn the_summary_counts_the_exchanges_match_selected() {
    let dir = Scratch::new("match");
    let file = dir.file(
        "c.pcap",
        &pcap_of(&connection(&[("alpha", 0), ("beta", 0), ("gamma", 0)])),
    );
    let out = interceptor(&["sniff", "--json", "-I", &file, "beta"]);
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 2);
    let stats = &lines[1];
    assert_eq!(
        (&stats["exchanges"], &stats["exchanges_seen"]),
        (&1.into(), &3.into())
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(", 1 exchanges (3 seen), "), "{err}");
}

/// pcapng with if_tsresol 0 (whole seconds) and a count near 2^64: once a panic of the
/// reading thread, now damage, reported after what came before it.
#[test]
fn a_pcapng_timestamp_no_clock_holds_is_reported_as_damage() {
    fn block(f: &mut Vec<u8>, kind: u32, body: &[u8]) {
        let len = 12 + body.len().div_ceil(4) * 4;
        f.extend(kind.to_le_bytes());
        f.extend((len as u32).to_le_bytes());
        f.extend_from_slice(body);
        f.resize(f.len() + body.len().div_ceil(4) * 4 - body.len(), 0);
        f.extend((len as u32).to_le_bytes());
    }
    let mut f = Vec::new();
    let mut shb = 0x1a2b3c4du32.to_le_bytes().to_vec();
    shb.extend([1, 0, 0, 0]);
    shb.extend(u64::MAX.to_le_bytes());
    block(&mut f, 0x0a0d0d0a, &shb);
    // Ethernet, if_tsresol 0.
    block(
        &mut f,
        1,
        &[1, 0, 0, 0, 0, 0, 4, 0, 9, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    let frames = connection(&[("alpha", 0)]);
    let hostile = u64::MAX - 1;
    for (i, (frame, _)) in frames.iter().enumerate() {
        let ts = if i + 1 == frames.len() {
            hostile
        } else {
            1_700_000_000 + i as u64
        };
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend(((ts >> 32) as u32).to_le_bytes());
        epb.extend((ts as u32).to_le_bytes());
        epb.extend((frame.len() as u32).to_le_bytes());
        epb.extend((frame.len() as u32).to_le_bytes());
        epb.extend(frame);
        block(&mut f, 6, &epb);
    }
    let dir = Scratch::new("pcapng");
    let file = dir.file("c.pcapng", &f);
    let out = interceptor(&["sniff", "--json", "-I", &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(&format!(
            "timestamp {hostile} (units of 1/1 s) is out of range"
        )),
        "{err}"
    );
    // The request came before the damage: reported, unanswered.
    let lines = json_lines(&out.stdout);
    assert_eq!(lines[0]["request"]["target"], "/alpha");
    assert_eq!(lines.last().unwrap()["packets"], 3);
}
