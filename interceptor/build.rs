//! Builds the eBPF programs (`interceptor-ebpf/`) and puts the object in OUT_DIR, where
//! `src/ebpf/object.rs` embeds it. So a plain `cargo build` on the host yields a binary
//! that carries its programs. The nested build itself is in `ebpf_build.rs`, shared with
//! `cargo xtask build-ebpf`.
//!
//! Written by hand rather than with aya-build: the nested build must say plainly what to
//! install when the toolchain is missing, must use its own Cargo.lock with `--locked`, and
//! needs nothing of aya-build's cargo-metadata machinery.

#[path = "ebpf_build.rs"]
mod ebpf_build;

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    for p in ebpf_build::sources(&root) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let object = ebpf_build::build(&root).unwrap_or_else(|e| fail(&e));
    let dest = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("interceptor-ebpf.o");
    std::fs::copy(&object, &dest).unwrap_or_else(|e| {
        fail(&format!(
            "copying {} to {}: {e}",
            object.display(),
            dest.display()
        ))
    });
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}.");
    eprintln!("error: {}.", ebpf_build::SETUP_HINT);
    // `cargo:warning` lines show even when cargo hides the script's output.
    println!("cargo:warning={msg}; {}", ebpf_build::SETUP_HINT);
    std::process::exit(1);
}
