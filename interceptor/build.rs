//! Builds the eBPF programs (`interceptor-ebpf/`) and puts the object in OUT_DIR, where
//! `src/ebpf/object.rs` embeds it. So a plain `cargo build` on the host yields a binary
//! that carries its programs.
//!
//! The programs need nightly (`-Z build-std=core` for bpfel-unknown-none) and bpf-linker
//! built against that nightly's LLVM; scripts/setup.sh installs both. The nested cargo
//! runs with the outer cargo's settings cleared (they are for the host build: its rustc,
//! wrappers, flags, target dir, toolchain) and its own target dir, target/bpf, so the two
//! builds never share or lock each other's artifacts.
//!
//! Written by hand rather than with aya-build: the nested build must say plainly what to
//! install when the toolchain is missing, must use its own Cargo.lock with `--locked`, and
//! needs nothing of aya-build's cargo-metadata machinery.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    let ebpf_dir = root.join("interceptor-ebpf");
    let common_dir = root.join("interceptor-common");
    for p in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        ebpf_dir.join(".cargo/config.toml"),
        ebpf_dir.join("rust-toolchain.toml"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = root.join("target").join("bpf");
    let rustup = find_rustup();

    check_toolchain(&rustup);

    let mut cmd = Command::new(&rustup);
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir);
    clear_outer_cargo_env(&mut cmd);
    let status = cmd.status().unwrap_or_else(|e| {
        fail(&format!(
            "could not run `{} run nightly cargo`: {e}",
            rustup.display()
        ))
    });
    if !status.success() {
        fail(&format!(
            "building the eBPF programs in {} failed ({status}); see the errors above",
            ebpf_dir.display()
        ));
    }
    let object = target_dir.join("bpfel-unknown-none/release/interceptor-ebpf");
    let dest = out_dir.join("interceptor-ebpf.o");
    std::fs::copy(&object, &dest).unwrap_or_else(|e| {
        fail(&format!(
            "copying {} to {}: {e}",
            object.display(),
            dest.display()
        ))
    });
}

/// rustup's `cargo` proxy may not be first on PATH inside a build script (cargo puts the
/// toolchain's own bin first), so call rustup itself.
fn find_rustup() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(home) = env::var_os("CARGO_HOME") {
        candidates.push(Path::new(&home).join("bin/rustup"));
    }
    if let Some(home) = env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/rustup"));
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("rustup")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            fail("rustup not found; the eBPF programs need the nightly toolchain via rustup")
        })
}

fn check_toolchain(rustup: &Path) {
    let nightly_src = Command::new(rustup)
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib/src/rust/library")
        });
    match nightly_src {
        None => fail("the nightly toolchain is not installed"),
        Some(src) if !src.is_dir() => fail("rust-src is not installed for the nightly toolchain"),
        Some(_) => {}
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !linker_ok {
        fail("bpf-linker is not installed (or cannot load its LLVM)");
    }
}

/// Settings the outer cargo hands its build scripts that would steer the nested build
/// to the host's compiler, flags, target dir or toolchain.
fn clear_outer_cargo_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let outer = key == "RUSTC"
            || key == "RUSTDOC"
            || key.starts_with("RUSTC_")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
            || key == "RUSTUP_TOOLCHAIN"
            || key == "CARGO"
            || key == "CARGO_MAKEFLAGS"
            || key == "CARGO_ENCODED_RUSTFLAGS"
            || key == "CARGO_ENCODED_RUSTDOCFLAGS"
            || key == "CARGO_TARGET_DIR"
            || key == "CARGO_BUILD_TARGET_DIR"
            || key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_TARGET_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("DEP_")
            || key == "MAKEFLAGS"
            || key == "MFLAGS"
            || key == "OUT_DIR"
            || key == "TARGET"
            || key == "HOST"
            || key == "PROFILE"
            || key == "OPT_LEVEL"
            || key == "DEBUG";
        if outer {
            cmd.env_remove(key);
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}.");
    eprintln!("error: the eBPF programs are built with nightly Rust (rust-src) and bpf-linker;");
    eprintln!("error: run `sudo scripts/setup.sh` once to install them, then build again.");
    // `cargo:warning` lines show even when cargo hides the script's output.
    println!("cargo:warning={msg}; run scripts/setup.sh to install nightly Rust with rust-src and bpf-linker");
    std::process::exit(1);
}
