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
        w.packet(1_700_000_000_000_000 + i as u64 * 1000, f).unwrap();
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
