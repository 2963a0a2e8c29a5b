//! The live web view against the real server: the seed's mirroring scenario as a capture
//! file (catalog v1 primary, v2 shadow adding `imageUrl`), `interceptor sniff --shadow -I
//! capture --serve 127.0.0.1:0`, and the browser test (tests/browser/view.test.mjs, Debian's
//! chromium driven by playwright-core) pointed at it. A missing node, chromium or
//! playwright-core fails the test: it never skips.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use interceptor_tests::{interceptor_bin, pcap_synth};

const REQUESTS: usize = 30;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `interceptor sniff … --serve`, interrupted (then killed if need be) on drop.
struct Sniff {
    child: Child,
    stderr: Receiver<String>,
}

impl Sniff {
    fn start(args: &[&str]) -> Sniff {
        let mut child = Command::new(interceptor_bin())
            .arg("sniff")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting interceptor sniff");
        let (tx, rx) = channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Sniff { child, stderr: rx }
    }

    /// Waits for a stderr line containing `what`; returns it.
    fn wait_for(&self, what: &str, seen: &mut Vec<String>) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no stderr line with {what:?} within 30 s; saw {seen:?}"),
            }
        }
    }

    /// SIGINT, then the exit status.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().expect("waiting for sniff") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "sniff --serve did not end within 10 s of SIGINT"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sniff {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connecting to --serve");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn the_live_view_shows_the_seed_scenarios_exchanges_and_shadow_diff() {
    let dir = std::env::temp_dir().join(format!("interceptor-view-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let capture = dir.join("mirrored.pcap");
    let spec = pcap_synth::Spec {
        requests: REQUESTS,
        ..pcap_synth::Spec::default()
    };
    assert!(
        spec.shadow_v2,
        "the shadow must serve v2, which adds imageUrl"
    );
    let file = std::fs::File::create(&capture).unwrap();
    let written = pcap_synth::write(std::io::BufWriter::new(file), &spec).unwrap();
    assert_eq!(written.pairs, REQUESTS);

    let mut sniff = Sniff::start(&[
        "--shadow",
        "--json",
        "-I",
        capture.to_str().unwrap(),
        "--serve",
        "127.0.0.1:0",
    ]);
    let mut seen = Vec::new();
    let line = sniff.wait_for("serving the live view", &mut seen);
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the serving line names its URL")
        .to_string();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // The file is read in a moment; the server stays up after it.
    sniff.wait_for("capture ended; still serving", &mut seen);

    // The metrics say what the capture held.
    let metrics = get(&addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "interceptor_shadow_pairs_total{{verdict=\"different\"}} {REQUESTS}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "interceptor_shadow_differences_total{{path=\"body:[*].imageUrl\"}} {REQUESTS}"
    )));
    assert!(metrics.contains("destination_service=\"catalog.istioinaction-shadow\""));
    assert!(get(&addr, "/readyz").starts_with("HTTP/1.1 200 OK"));

    // The browser test, against the real server. Its own prerequisites (chromium,
    // playwright-core) fail it, never skip it; node missing fails here.
    let browser = repo().join("tests/browser");
    let screenshot = dir.join("web-view.png");
    let out = Command::new("node")
        .args(["--test", "view.test.mjs"])
        .current_dir(&browser)
        .env("INTERCEPTOR_VIEW_URL", &url)
        .env("EXPECT_EXCHANGES", (2 * REQUESTS).to_string())
        // What the synthetic v2 adds: imageUrl on each of the four items.
        .env("EXPECT_DIFF_PATH", "body:[0].imageUrl")
        .env("EXPECT_MISSED", "0")
        .env("SCREENSHOT", &screenshot)
        .output()
        .unwrap_or_else(|e| panic!("running node (install nodejs; scripts/setup.sh does): {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser test failed:\n{report}");
    assert!(
        report.contains("# pass 8") && report.contains("# skipped 0"),
        "{report}"
    );
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");

    // SIGINT ends the serving cleanly.
    let st = sniff.interrupt();
    assert!(st.success(), "sniff --serve exited with {st}");
    let _ = std::fs::remove_dir_all(&dir);
}
