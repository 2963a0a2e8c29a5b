//! `interceptor sniff --shadow` end to end: the seed's mirroring scenario built by
//! scripts/lab.sh (webapp pod with an nginx sidecar mirroring to catalog v2, `interceptor
//! init` in the pod), sniffed live on the node's veth and again from a pcap of the same
//! traffic; and synthetic captures that need no root.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use interceptor_tests::{interceptor_bin, pcap_synth, require_root, unique};
use serde_json::Value;

const IMAGE_URL: &str = "http://lorempixel.com/640/480";
const PRIMARY: &str = "10.123.2.2:3000";
const SHADOW: &str = "10.123.3.2:3000";

fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab.sh")
}

/// A lab from scripts/lab.sh, torn down on drop.
struct Lab {
    name: String,
    dir: PathBuf,
}

impl Lab {
    fn up(shadow_version: &str) -> Result<Lab> {
        let name = unique("sh");
        let dir = std::env::temp_dir().join(format!("interceptor-{name}"));
        let lab = Lab { name, dir };
        let out = lab
            .script()
            .arg("up")
            .env("SHADOW_VERSION", shadow_version)
            .output()?;
        if !out.status.success() {
            bail!(
                "lab.sh up: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(lab)
    }

    fn script(&self) -> Command {
        let mut c = Command::new("bash");
        c.arg(lab_script())
            .env("LAB", &self.name)
            .env("LAB_DIR", &self.dir)
            .env("INTERCEPTOR", interceptor_bin());
        c
    }

    fn node(&self) -> String {
        format!("/run/netns/{}-node", self.name)
    }

    fn webapp_veth(&self) -> String {
        format!("{}-w", self.name)
    }

    /// The app calls the catalog `n` times; every call must succeed.
    fn app(&self, n: usize) -> Result<()> {
        let out = self.script().args(["app", &n.to_string()]).output()?;
        let codes = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || codes.lines().filter(|l| *l == "200").count() != n {
            bail!(
                "lab.sh app {n}: {codes}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Requests a catalog has logged (the mirror is fire-and-forget: it may lag the app).
    fn served(&self, pod: &str) -> usize {
        std::fs::read_to_string(self.dir.join(format!("catalog-{pod}.log")))
            .map(|s| s.lines().filter(|l| l.starts_with("GET ")).count())
            .unwrap_or(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.script().arg("down").status();
    }
}

/// A process started in a namespace whose stdout lines and stderr lines arrive on channels.
struct Proc {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    err_seen: Vec<String>,
}

impl Proc {
    fn start(netns: &str, program: &Path, args: &[&str]) -> Result<Proc> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let (otx, stdout) = channel();
        let (etx, stderr) = channel();
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = otx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = etx.send(l);
            }
        });
        Ok(Proc {
            child,
            stdout,
            stderr,
            err_seen: Vec::new(),
        })
    }

    /// Waits for a stderr line containing `needle` (the tool says it is listening).
    fn wait_stderr(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(100)) {
                let hit = l.contains(needle);
                self.err_seen.push(l);
                if hit {
                    return Ok(());
                }
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "exited ({st}) before saying {needle:?}: {}",
                    self.err_seen.join("\n")
                );
            }
        }
        bail!(
            "no {needle:?} on stderr after 10 s: {}",
            self.err_seen.join("\n")
        )
    }

    /// Reads JSON lines until `n` of type `shadow` have come (or 20 s passed).
    fn wait_pairs(&mut self, n: usize, into: &mut Vec<Value>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while into.iter().filter(|v| v["type"] == "shadow").count() < n {
            if Instant::now() > deadline {
                bail!(
                    "{} of {n} pairs after 20 s: {into:#?}",
                    into.iter().filter(|v| v["type"] == "shadow").count()
                );
            }
            if let Ok(l) = self.stdout.recv_timeout(Duration::from_millis(100)) {
                into.push(serde_json::from_str(&l).with_context(|| format!("not JSON: {l}"))?);
            }
        }
        Ok(())
    }

    /// Waits for the process to end by itself and collects the rest of its output.
    fn wait_exit(&mut self, into: &mut Vec<Value>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let st = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                bail!(
                    "still running 20 s after its last pair: {}",
                    self.err_seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for l in self.stdout.iter() {
            into.push(serde_json::from_str(&l).with_context(|| format!("not JSON: {l}"))?);
        }
        self.err_seen.extend(self.stderr.iter());
        if !st.success() {
            bail!("exited {st}: {}", self.err_seen.join("\n"));
        }
        Ok(())
    }

    /// Interrupts the process and collects the rest of its output.
    fn stop(mut self, into: &mut Vec<Value>) -> Result<Vec<String>> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let st = self.child.wait()?;
        for l in self.stdout.iter() {
            into.push(serde_json::from_str(&l).with_context(|| format!("not JSON: {l}"))?);
        }
        self.err_seen.extend(self.stderr.iter());
        if !st.success() {
            bail!("exited {st}: {}", self.err_seen.join("\n"));
        }
        Ok(std::mem::take(&mut self.err_seen))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn where_set(pair: &Value) -> BTreeSet<String> {
    pair["differences"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| d["where"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The catalog v2 answer adds imageUrl to each of the four items, and nothing else differs.
fn assert_v2_pair(p: &Value) {
    assert_eq!(p["verdict"], "different", "{p:#}");
    let expected: BTreeSet<String> = (0..4).map(|i| format!("body:[{i}].imageUrl")).collect();
    assert_eq!(where_set(p), expected, "{p:#}");
    for d in p["differences"].as_array().unwrap() {
        assert_eq!(d["kind"], "added", "{d}");
        assert_eq!(d["primary"], Value::Null, "{d}");
        assert_eq!(d["shadow"], IMAGE_URL, "{d}");
    }
}

fn check_pairs(objs: &[Value], n: usize, v2: bool) -> Result<()> {
    let pairs: Vec<&Value> = objs.iter().filter(|v| v["type"] == "shadow").collect();
    assert_eq!(pairs.len(), n, "{objs:#?}");
    let mut ids = BTreeSet::new();
    for p in &pairs {
        assert_eq!(p["method"], "GET");
        assert_eq!(p["target"], "/items");
        assert_eq!(p["matched_by"], "request-id");
        let id = p["request_id"].as_str().context("request_id")?;
        assert!(!id.is_empty());
        ids.insert(id.to_string());
        assert_eq!(p["primary"]["server"], PRIMARY, "{p:#}");
        assert_eq!(p["shadow"]["server"], SHADOW, "{p:#}");
        assert_eq!(p["primary"]["status"], 200);
        assert_eq!(p["shadow"]["status"], 200);
        assert!(
            p["primary"]["latency_us"].is_u64() && p["shadow"]["latency_us"].is_u64(),
            "{p:#}"
        );
        if v2 {
            assert_v2_pair(p);
        } else {
            assert_eq!(p["verdict"], "same", "{p:#}");
            assert!(where_set(p).is_empty(), "{p:#}");
        }
    }
    assert_eq!(ids.len(), n, "every request has its own id");
    let s = objs
        .iter()
        .find(|v| v["type"] == "shadow_summary")
        .context("no summary")?;
    assert_eq!(s["pairs"], n as u64, "{s:#}");
    assert_eq!(s[if v2 { "different" } else { "same" }], n as u64, "{s:#}");
    assert_eq!(s["primaries_without_shadow"], 0, "{s:#}");
    assert_eq!(s["shadows_without_primary"], 0, "{s:#}");
    if v2 {
        assert_eq!(
            s["top_differences"][0]["where"], "body:[*].imageUrl",
            "{s:#}"
        );
        assert_eq!(s["top_differences"][0]["pairs"], n as u64, "{s:#}");
    }
    assert_eq!(s["latency_us"]["primary"]["count"], n as u64);
    assert_eq!(s["latency_us"]["shadow"]["count"], n as u64);
    Ok(())
}

/// The scenario live: sniff the webapp's veth on the node while the app calls the catalog,
/// with tcpdump recording the same traffic; then the recording through `sniff -I`.
/// `any` instead of the veth sees each packet twice (routed in, routed out), and primary
/// and shadow on different interfaces.
fn scenario(shadow_version: &str, on_any: bool) -> Result<()> {
    const N: usize = 6;
    let lab = Lab::up(shadow_version)?;
    let veth = if on_any {
        "any".to_string()
    } else {
        lab.webapp_veth()
    };
    let bin = interceptor_bin();
    let mut sniff = Proc::start(
        &lab.node(),
        &bin,
        &[
            "sniff",
            "--shadow",
            "--json",
            // Two exchanges per request: the sniffer ends by itself after the last one.
            "-n",
            &(2 * N).to_string(),
            "-d",
            &veth,
            "",
            "tcp port 3000",
        ],
    )?;
    sniff.wait_stderr("listening on")?;
    // The same traffic recorded, to replay through `sniff -I` (on the veth: a file with
    // each packet twice, from `any`, is the reassembler's business, not this test's).
    let pcap = lab.dir.join("webapp.pcap");
    let tcpdump = if on_any {
        None
    } else {
        let mut t = Proc::start(
            &lab.node(),
            Path::new("tcpdump"),
            &[
                "-U",
                // Each packet to the file at once: the ring's block timeout would hold the last
                // ones back past the SIGINT that ends it.
                "--immediate-mode",
                // Keep root: the lab's folder belongs to the sidecar's uid.
                "-Z",
                "root",
                "-i",
                &veth,
                "-w",
                pcap.to_str().context("path")?,
                "tcp port 3000",
            ],
        )?;
        t.wait_stderr("listening on")?;
        Some(t)
    };

    lab.app(N)?;
    let mut live = Vec::new();
    sniff.wait_pairs(N, &mut live)?;
    assert_eq!(lab.served("v1"), N);
    assert_eq!(lab.served("v2"), N, "every request mirrored");
    sniff.wait_exit(&mut live)?;
    check_pairs(&live, N, shadow_version == "v2")?;
    let Some(tcpdump) = tcpdump else {
        return Ok(());
    };
    tcpdump.stop(&mut Vec::new())?;

    let out = Command::new(&bin)
        .args([
            "sniff",
            "--shadow",
            "--json",
            "-I",
            pcap.to_str().context("path")?,
            "",
            "tcp port 3000",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replay: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    check_pairs(&replay, N, shadow_version == "v2")?;
    // The same pairs, by request id.
    let ids = |v: &[Value]| -> BTreeSet<String> {
        v.iter()
            .filter_map(|o| o["request_id"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(ids(&live), ids(&replay));
    Ok(())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn mirror_to_v2_reports_image_url_added_for_every_item() {
    require_root!();
    assert!(
        have("nginx") && have("tcpdump") && Path::new("/usr/bin/python3").exists(),
        "run scripts/setup.sh"
    );
    scenario("v2", false).unwrap();
}

#[test]
fn capturing_on_any_pairs_across_interfaces_once() {
    require_root!();
    assert!(
        have("nginx") && have("tcpdump") && Path::new("/usr/bin/python3").exists(),
        "run scripts/setup.sh"
    );
    scenario("v2", true).unwrap();
}

#[test]
fn mirror_to_the_same_version_is_same() {
    require_root!();
    assert!(
        have("nginx") && have("tcpdump") && Path::new("/usr/bin/python3").exists(),
        "run scripts/setup.sh"
    );
    scenario("v1", false).unwrap();
}

fn synth(spec: &pcap_synth::Spec) -> Result<(PathBuf, pcap_synth::Written)> {
    let path = std::env::temp_dir().join(format!("{}.pcap", unique("shadow-synth")));
    let w = pcap_synth::write(std::io::BufWriter::new(std::fs::File::create(&path)?), spec)?;
    Ok((path, w))
}

fn sniff_file(path: &Path, extra: &[&str]) -> Result<std::process::Output> {
    let mut args = vec!["sniff", "--shadow", "-q"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-I", path.to_str().context("path")?]);
    Ok(Command::new(interceptor_bin()).args(&args).output()?)
}

fn json_lines(out: &std::process::Output) -> Result<Vec<Value>> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

#[test]
fn pcap_pairs_across_connections_and_counts_the_unmirrored() {
    let spec = pcap_synth::Spec {
        requests: 50,
        connections: 3,
        unmirrored_every: Some(10),
        shadow_v2: true,
    };
    let (path, w) = synth(&spec).unwrap();
    assert_eq!((w.pairs, w.unmirrored), (45, 5));
    let objs = json_lines(&sniff_file(&path, &["--json"]).unwrap()).unwrap();
    let pairs: Vec<&Value> = objs.iter().filter(|v| v["type"] == "shadow").collect();
    assert_eq!(pairs.len(), 45);
    for p in &pairs {
        assert_v2_pair(p);
        assert_eq!(p["primary"]["server"], PRIMARY);
        assert_eq!(p["shadow"]["server"], SHADOW);
    }
    let lonely: Vec<&Value> = objs
        .iter()
        .filter(|v| v["type"] == "shadow_unmatched")
        .collect();
    assert_eq!(lonely.len(), 5, "{lonely:#?}");
    assert!(lonely.iter().all(|u| u["role"] == "primary"));
    let s = objs.iter().find(|v| v["type"] == "shadow_summary").unwrap();
    assert_eq!(
        (s["pairs"].as_u64(), s["different"].as_u64()),
        (Some(45), Some(45))
    );
    assert_eq!(s["primaries_without_shadow"], 5);
    assert_eq!(s["shadows_without_primary"], 0);
    // The synthetic primary answers in 300 or 500 µs, the shadow in 450 or 350 µs.
    let p50 = s["latency_us"]["primary"]["p50"].as_u64().unwrap();
    assert!((290..=510).contains(&p50), "{s:#}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn pcap_ignore_path_and_same_version() {
    let (path, _) = synth(&pcap_synth::Spec {
        requests: 20,
        ..Default::default()
    })
    .unwrap();
    let objs =
        json_lines(&sniff_file(&path, &["--json", "--ignore-path", "[*].imageUrl"]).unwrap())
            .unwrap();
    let pairs: Vec<&Value> = objs.iter().filter(|v| v["type"] == "shadow").collect();
    assert_eq!(pairs.len(), 20);
    assert!(pairs.iter().all(|p| p["verdict"] == "same"), "{pairs:#?}");

    let (same, _) = synth(&pcap_synth::Spec {
        requests: 20,
        shadow_v2: false,
        ..Default::default()
    })
    .unwrap();
    let objs = json_lines(&sniff_file(&same, &["--json"]).unwrap()).unwrap();
    assert_eq!(objs.iter().filter(|v| v["verdict"] == "same").count(), 20);
    // --strict: the Host's -shadow suffix and the Date headers count.
    let objs = json_lines(&sniff_file(&same, &["--json", "--strict"]).unwrap()).unwrap();
    let pairs: Vec<&Value> = objs.iter().filter(|v| v["type"] == "shadow").collect();
    assert!(
        pairs
            .iter()
            .all(|p| where_set(p).contains("request.header:host")),
        "{pairs:#?}"
    );
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(same);
}

#[test]
fn pcap_text_output_shows_two_columns_and_a_summary() {
    let (path, _) = synth(&pcap_synth::Spec {
        requests: 4,
        ..Default::default()
    })
    .unwrap();
    let out = sniff_file(&path, &[]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("different GET /items"))
            .count(),
        4,
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("body:[2].imageUrl")
                && l.contains("│ http://lorempixel.com/640/480"))
            .count(),
        4,
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    assert!(text.contains("pairs 4: 0 same, 4 different"), "{text}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn bad_shadow_flags_are_refused_by_name() {
    let (path, _) = synth(&pcap_synth::Spec {
        requests: 1,
        ..Default::default()
    })
    .unwrap();
    let out = sniff_file(&path, &["--ignore-path", "items["]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ignore-path") && err.contains("items["),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing reported on bad flags");
    let out = Command::new(interceptor_bin())
        .args(["sniff", "--strict", "-I", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shadow"));
    let _ = std::fs::remove_file(path);
}
