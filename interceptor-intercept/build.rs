//! Builds the eBPF programs (`interceptor-ebpf/`) and puts the object in OUT_DIR, where
//! `src/ebpf/object.rs` embeds it, so a plain `cargo build` on the host yields a binary
//! that carries its programs. The nested build is the `interceptor-ebpf-build` crate,
//! shared with `cargo xtask build-ebpf`.
//!
//! `INTERCEPTOR_SKIP_EBPF_BUILD=1` skips it (as aya-build's skip switch does): the object
//! embedded is then empty and the eBPF mode refuses to start, saying why. Everything else
//! (the iptables mode, the sniffer) builds on the stable toolchain alone that way.

use std::env;
use std::path::PathBuf;

use interceptor_ebpf_build as ebpf_build;

/// The switch that skips the nested build.
const SKIP: &str = "INTERCEPTOR_SKIP_EBPF_BUILD";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    let dest = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("interceptor-ebpf.o");
    println!("cargo:rerun-if-env-changed={SKIP}");
    if env::var_os(SKIP).is_some_and(|v| !v.is_empty() && v != "0") {
        println!("cargo:warning={SKIP} is set: the eBPF programs are not built and the eBPF mode will refuse to start");
        std::fs::write(&dest, b"")
            .unwrap_or_else(|e| fail(&format!("writing {}: {e}", dest.display())));
        return;
    }
    for p in ebpf_build::sources(&root) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let object = ebpf_build::build(&root).unwrap_or_else(|e| fail(&e));
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
