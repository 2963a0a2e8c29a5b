//! Development tasks: `cargo xtask <task>`.

// `sources()` there is for build.rs's rerun list only.
#[allow(dead_code)]
#[path = "../../interceptor/ebpf_build.rs"]
mod ebpf_build;

use std::path::Path;

use anyhow::{anyhow, Result};
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
    }
    Ok(())
}
