//! Shared harness for the integration tests: throw-away network namespaces, veth pairs and
//! processes started inside them. Everything is torn down on drop, so a failing test leaves
//! no namespace behind. The tests need root; `require_root!()` fails a test run without it,
//! loudly: a test that cannot run must never pass.

pub mod netns;
pub mod pcap_synth;
pub mod pod;
pub mod podman;

pub use netns::{routed_pod_link, run, unique, veth, Netns};

/// Path of the `interceptor` binary built for this test run.
pub fn interceptor_bin() -> std::path::PathBuf {
    // Integration tests live in this crate, so CARGO_BIN_EXE_interceptor is not set; find
    // the binary next to the test executable (target/<profile>/deps/..).
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("interceptor");
    assert!(
        bin.exists(),
        "{} not built: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// One request to the CNI plugin (the `interceptor` binary run with `CNI_COMMAND` and no
/// arguments), as a runtime makes it: a clean environment but `PATH`, `CNI_PATH` and
/// `env`, the network configuration on stdin. Exit status and output.
pub fn cni_plugin(
    command: &str,
    env: &[(&str, &str)],
    conf: &serde_json::Value,
) -> std::process::Output {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(interceptor_bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/usr/lib/cni")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the interceptor binary starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(&serde_json::to_vec(conf).expect("JSON"))
        .expect("the plugin reads its configuration");
    child.wait_with_output().expect("the plugin's output")
}

/// Those of `tools` that are not on `PATH`, for a test to fail naming them.
pub fn missing_tools<'a>(tools: &[&'a str]) -> Vec<&'a str> {
    tools
        .iter()
        .copied()
        .filter(|t| {
            !std::process::Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect()
}

/// Polls `ok` every 100 ms until it holds; fails the test, naming `what`, after `timeout`.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A finished command's stdout then stderr, for failure messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Fails the calling test when not running as root: these tests build network namespaces,
/// load iptables rules and eBPF programs, and a run that cannot do so must not count as a
/// pass. Run the suite as root (`sudo bash scripts/test.sh`; CI does).
#[macro_export]
macro_rules! require_root {
    () => {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert!(
            euid == 0,
            "this test needs root (network namespaces, iptables, eBPF) and runs as uid {euid}: \
             run the suite as root (sudo bash scripts/test.sh)"
        );
    };
}

/// Waits for a started `interceptor agent` (stderr piped) to say where it serves metrics:
/// its address (`127.0.0.1:PORT`) and everything it writes on stderr, collected as it comes.
/// An agent that has not said so within 20 s is killed and the test fails with its output.
pub fn agent_listening(
    child: &mut std::process::Child,
) -> (String, std::sync::Arc<std::sync::Mutex<String>>) {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("the agent's stderr is piped");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("metrics on http://").nth(1) {
                let _ = tx.send(addr.trim_end_matches("/metrics").to_string());
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    match rx.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(addr) => (addr, log),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().unwrap();
            panic!(
                "the agent did not start ({status}):\n{}",
                log.lock().unwrap()
            );
        }
    }
}

/// The arguments istio's sidecar injector gives istio-init (injection-template.yaml), as
/// the image's entry point receives them.
pub const INJECTOR_ARGS: &[&str] = &[
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
