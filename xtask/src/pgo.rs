//! `cargo xtask pgo`: the interceptor binary built with profile-guided optimisation.
//!
//! An instrumented build sniffs a synthetic capture of mirrored catalog traffic (not the
//! benchmark's capture: keep-alive exchanges from another server, with JSON bodies and
//! shadow pairs) in the three output modes (--json, text, --shadow), llvm-profdata merges
//! what it counted, and the final build uses it. The offline sniffer is the hot path this
//! serves: on the benchmark capture, the parsing thread runs about a sixth fewer
//! instructions and the run takes about 9% less time.
//!
//! Builds go to target/pgo-generate and target/pgo-use, apart from target/release, so
//! that neither build invalidates the other. The profile is named after the instrumented
//! binary it came from: while the sources stay the same, a second run reuses it and the
//! final build is up to date.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// Requests in the training capture (each mirrored: twice as many exchanges).
const TRAINING_REQUESTS: usize = 20_000;

pub fn build(root: &Path) -> Result<PathBuf> {
    let profdata = llvm_profdata()?;
    let target = root.join("target");
    let work = target.join("pgo");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let raw = work.join("raw");
    let generate = target.join("pgo-generate");
    cargo_build(root, &generate, "-Cprofile-generate", &raw)?;
    let instrumented = generate.join("release/interceptor");

    let profile = work.join(format!("{:016x}.profdata", fnv_file(&instrumented)?));
    if !profile.exists() {
        train(&instrumented, &raw, &work)?;
        let mut merge = Command::new(&profdata);
        merge.arg("merge").arg("-o").arg(&profile).arg(&raw);
        run(&mut merge, "llvm-profdata merge")?;
    }
    let using = target.join("pgo-use");
    cargo_build(root, &using, "-Cprofile-use", &profile)?;
    Ok(using.join("release/interceptor"))
}

/// Runs the instrumented binary over the training capture; its counts land in `raw`.
fn train(instrumented: &Path, raw: &Path, work: &Path) -> Result<()> {
    if raw.exists() {
        std::fs::remove_dir_all(raw).with_context(|| format!("emptying {}", raw.display()))?;
    }
    let pcap = work.join("training.pcap");
    let spec = interceptor_tests::pcap_synth::Spec {
        requests: TRAINING_REQUESTS,
        connections: 16,
        unmirrored_every: Some(50),
        shadow_v2: true,
    };
    let file =
        std::fs::File::create(&pcap).with_context(|| format!("creating {}", pcap.display()))?;
    interceptor_tests::pcap_synth::write(std::io::BufWriter::new(file), &spec)
        .with_context(|| format!("writing {}", pcap.display()))?;
    for mode in [&["--json"][..], &[], &["--shadow", "--json"]] {
        let mut sniff = Command::new(instrumented);
        sniff
            .args(["sniff", "-q", "-I"])
            .arg(&pcap)
            .args(mode)
            .args(["", "tcp port 3000"])
            .stdout(Stdio::null());
        run(
            &mut sniff,
            &format!("training run (sniff {})", mode.join(" ")),
        )?;
    }
    Ok(())
}

/// Builds the binary into `target_dir` with `-C<option>=<path>`.
fn cargo_build(root: &Path, target_dir: &Path, option: &str, path: &Path) -> Result<()> {
    let rustflags = format!("{option}={}", path.display());
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "interceptor",
            "--bin",
            "interceptor",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTFLAGS", &rustflags);
    run(&mut cargo, &format!("cargo build ({rustflags})"))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// llvm-profdata from the toolchain's llvm-tools component.
fn llvm_profdata() -> Result<PathBuf> {
    let rustc = |arg: &str| -> Result<String> {
        let out = Command::new("rustc")
            .arg(arg)
            .output()
            .with_context(|| format!("rustc {arg}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let sysroot = rustc("--print=sysroot")?;
    let host = rustc("-vV")?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| anyhow!("rustc -vV names no host"))?;
    let path = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if !path.exists() {
        bail!(
            "{} not found: run `rustup component add llvm-tools` (scripts/setup.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// FNV-1a of a file's bytes: names the profile after the binary that wrote it.
fn fnv_file(path: &Path) -> Result<u64> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    }))
}
