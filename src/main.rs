//! The `imgbuild` command line.

mod cmd;
mod report;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// The parser and the store allocate many small, short-lived strings; mimalloc handles that
// pattern better than glibc's malloc (measured in bench/parse.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "imgbuild",
    version,
    about = "Build OCI images and unikernels from Dockerfiles, daemonless and reproducibly"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what the parser makes of Dockerfiles.
    Parse(cmd::parse::Args),
    /// Parse and validate a Dockerfile without building it.
    Check(cmd::check::Args),
}

/// Exit statuses: 0 ok, 1 the work failed (bad Dockerfile, failed build), 2 usage error.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parse(a) => cmd::parse::run(a),
        Command::Check(a) => cmd::check::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
