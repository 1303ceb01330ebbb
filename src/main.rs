//! The `imgbuild` command line.

mod build;
mod cmd;
mod report;
mod unikernel;

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
    /// Build an image from a Dockerfile (`imgbuild .` is the same as `imgbuild build .`).
    Build(Box<cmd::build::Args>),
    /// Show the build DAG: each step's key and whether the store has it.
    Plan(cmd::plan::Args),
    /// List the images in the store.
    Images(cmd::store::RootArg),
    /// Remove what no tagged image needs (with --all, the build cache too).
    Prune(cmd::store::PruneArgs),
    /// Show how much space the store uses.
    Du(cmd::store::RootArg),
    /// Print what the parser makes of Dockerfiles.
    Parse(cmd::parse::Args),
    /// Parse and validate a Dockerfile without building it.
    Check(cmd::check::Args),
    /// Push an image from the store to a registry.
    Push(cmd::push::Args),
    /// Check and store credentials for a registry.
    Login(cmd::login::LoginArgs),
    /// Remove stored credentials for a registry.
    Logout(cmd::login::LogoutArgs),
    /// Pin every base image, ADD URL and git ref of a build in imgbuild.lock.
    Lock(cmd::lock::Args),
    /// Boot a unikernel (an ELF `imgbuild build` wrote, or one tagged with -t) under qemu.
    Run(cmd::run::Args),
}

/// Exit statuses: 0 ok, 1 the work failed (bad Dockerfile, failed build), 2 usage error.
/// The subcommand names: any other first argument means `build` (`imgbuild .`).
const SUBCOMMANDS: &[&str] = &[
    "build", "plan", "images", "prune", "du", "parse", "check", "push", "login", "logout", "lock",
    "run", "help",
];

fn main() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The RUN sandbox helper: a re-exec of ourselves, handled before anything starts a thread.
    if argv.get(1).is_some_and(|a| a == "__sandbox") {
        match argv.get(2) {
            Some(spec) => imgbuild_executor::sandbox::helper_main(std::path::Path::new(spec)),
            None => return ExitCode::from(2),
        }
    }
    if let Some(first) = argv.get(1).and_then(|a| a.to_str()) {
        let is_flag = first.starts_with('-');
        if !is_flag && !SUBCOMMANDS.contains(&first) {
            argv.insert(1, "build".into());
        } else if is_flag && !matches!(first, "-h" | "--help" | "-V" | "--version") {
            // `imgbuild -t x .` builds too.
            argv.insert(1, "build".into());
        }
    }
    let cli = Cli::parse_from(argv);
    // Without root, commands that use the store run in a user namespace of their own
    // (rootless builds); still single-threaded here, as entering one requires.
    if matches!(
        cli.command,
        Command::Build(_)
            | Command::Plan(_)
            | Command::Images(_)
            | Command::Prune(_)
            | Command::Du(_)
            | Command::Push(_)
            | Command::Lock(_)
    ) && let Err(e) = imgbuild_executor::userns::enter()
    {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    let result = match cli.command {
        Command::Build(a) => cmd::build::run(*a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Images(a) => cmd::store::images(a),
        Command::Prune(a) => cmd::store::prune(a),
        Command::Du(a) => cmd::store::du(a),
        Command::Parse(a) => cmd::parse::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Push(a) => cmd::push::run(a),
        Command::Login(a) => cmd::login::login(a),
        Command::Logout(a) => cmd::login::logout(a),
        Command::Lock(a) => cmd::lock::run(a),
        Command::Run(a) => cmd::run::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
