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
