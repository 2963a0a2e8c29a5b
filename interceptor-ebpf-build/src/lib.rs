//! The nested build of the eBPF programs, shared by `interceptor-intercept/build.rs` (which
//! embeds the object) and `cargo xtask build-ebpf` (which only builds it), so both build it the
//! same way: `rustup run nightly cargo build --release --locked` in `interceptor-ebpf/`,
//! into `target/bpf`, with the outer cargo's settings cleared (they are for the host
//! build: its rustc, wrappers, flags, target dir, toolchain).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What to tell a user whose machine cannot build the programs.
pub const SETUP_HINT: &str =
    "the eBPF programs are built with nightly Rust (rust-src) and bpf-linker; \
run `sudo scripts/setup.sh` once to install them, then build again \
(or set INTERCEPTOR_SKIP_EBPF_BUILD=1 to build without the eBPF mode)";

/// Files whose change means the object must be built again.
pub fn sources(root: &Path) -> Vec<PathBuf> {
    let ebpf_dir = root.join("interceptor-ebpf");
    let common_dir = root.join("interceptor-common");
    vec![
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        ebpf_dir.join(".cargo/config.toml"),
        ebpf_dir.join("rust-toolchain.toml"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ]
}

/// Builds the programs of the workspace at `root`; returns the object's path.
pub fn build(root: &Path) -> Result<PathBuf, String> {
    let ebpf_dir = root.join("interceptor-ebpf");
    let target_dir = root.join("target").join("bpf");
    let rustup = find_rustup()?;
    check_toolchain(&rustup)?;

    let mut cmd = Command::new(&rustup);
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir);
    clear_outer_cargo_env(&mut cmd);
    let status = cmd.status().map_err(|e| {
        format!(
            "could not run `{} run nightly cargo`: {e}",
            rustup.display()
        )
    })?;
    if !status.success() {
        return Err(format!(
            "building the eBPF programs in {} failed ({status}); see the errors above",
            ebpf_dir.display()
        ));
    }
    Ok(target_dir.join("bpfel-unknown-none/release/interceptor-ebpf"))
}

/// rustup's `cargo` proxy may not be first on PATH inside a build script (cargo puts the
/// toolchain's own bin first), so call rustup itself.
fn find_rustup() -> Result<PathBuf, String> {
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
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "rustup not found; the eBPF programs need the nightly toolchain via rustup".to_string()
    })
}

fn check_toolchain(rustup: &Path) -> Result<(), String> {
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
        None => return Err("the nightly toolchain is not installed".into()),
        Some(src) if !src.is_dir() => {
            return Err("rust-src is not installed for the nightly toolchain".into())
        }
        Some(_) => {}
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !linker_ok {
        return Err("bpf-linker is not installed (or cannot load its LLVM)".into());
    }
    Ok(())
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
