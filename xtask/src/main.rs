//! Development tasks: `cargo xtask <task>`.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {}

fn main() -> Result<()> {
    match Cli::parse().task {}
}
