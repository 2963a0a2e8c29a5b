//! Shared harness for the integration tests: throw-away network namespaces, veth pairs and
//! processes started inside them. Everything is torn down on drop, so a failing test leaves
//! no namespace behind. The tests need root; `require_root!()` skips them with a message
//! otherwise.

pub mod netns;
pub mod pcap_synth;
pub mod pod;

pub use netns::{run, unique, veth, Netns};

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

/// Skips the calling test (returns early) when not running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (network namespaces, iptables)");
            return;
        }
    };
}
