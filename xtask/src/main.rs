//! Development tasks: `cargo xtask <task>`.

mod image;
mod pgo;

use interceptor_ebpf_build as ebpf_build;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the eBPF programs (interceptor-ebpf) on their own and print the object's path
    BuildEbpf,
    /// Build the interceptor binary with profile-guided optimisation (trained on a
    /// synthetic capture) and print its path; needs the llvm-tools component
    Pgo,
    /// Build the init-container image offline with buildah (localhost/interceptor:<version>
    /// and :latest) and print its reference; needs buildah and podman (scripts/setup.sh)
    Image,
    /// Writes a pcap of mirrored catalog traffic (primary and shadow exchanges) for the
    /// shadow benchmark and tests.
    ShadowPcap {
        /// Primary requests; each is mirrored unless --unmirrored-every says otherwise.
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
        /// Keep-alive connections per side.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Leave every Nth request without its mirror.
        #[arg(long, value_name = "N")]
        unmirrored_every: Option<usize>,
        /// The shadow serves the same catalog as the primary (v1) instead of v2.
        #[arg(long)]
        same: bool,
        /// Output file.
        #[arg(long, short)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?;
    match Cli::parse().task {
        Task::BuildEbpf => {
            let object =
                ebpf_build::build(root).map_err(|e| anyhow!("{e}; {}", ebpf_build::SETUP_HINT))?;
            println!("{}", object.display());
        }
        Task::Pgo => println!("{}", pgo::build(root)?.display()),
        Task::Image => println!("{}", image::build(root)?),
        Task::ShadowPcap {
            requests,
            connections,
            unmirrored_every,
            same,
            out,
        } => {
            if connections == 0 {
                anyhow::bail!("--connections 0: need at least one connection per side");
            }
            let spec = interceptor_tests::pcap_synth::Spec {
                requests,
                connections,
                unmirrored_every,
                shadow_v2: !same,
            };
            let file =
                std::fs::File::create(&out).with_context(|| format!("--out {}", out.display()))?;
            let w = interceptor_tests::pcap_synth::write(std::io::BufWriter::new(file), &spec)?;
            eprintln!(
                "{}: {} mirrored pairs, {} unmirrored primaries, {} packets, {} bytes",
                out.display(),
                w.pairs,
                w.unmirrored,
                w.packets,
                w.bytes
            );
        }
    }
    Ok(())
}
