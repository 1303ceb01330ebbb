//! `imgbuild login` and `imgbuild logout`: credentials for registries, kept in the containers
//! auth.json (see imgbuild_registry::auth for where).

use crate::build::inputs::registry_options;
use imgbuild_registry::Credentials;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The user name (asked for on a terminal when missing).
    #[arg(short, long)]
    pub username: Option<String>,
    /// The password (visible to other users in the process list: prefer --password-stdin).
    #[arg(short, long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    /// Speak plain http to this registry (`HOST` or `HOST:PORT`); loopback always is.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure: Vec<String>,
    /// The registry: `HOST[:PORT]`.
    pub registry: String,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    /// The registry: `HOST[:PORT]`.
    pub registry: String,
}

pub fn login(a: LoginArgs) -> anyhow::Result<ExitCode> {
    let username = match a.username {
        Some(u) => u,
        None if std::io::stdin().is_terminal() && !a.password_stdin => {
            eprint!("Username: ");
            std::io::stderr().flush()?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
        None => {
            eprintln!("error: login needs --username");
            return Ok(ExitCode::from(2));
        }
    };
    let password = if let Some(p) = a.password {
        p
    } else if a.password_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        // No echo control without a terminal crate: say so rather than pretend.
        eprint!("Password (shown as typed; prefer --password-stdin): ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if username.is_empty() || password.is_empty() {
        eprintln!("error: login needs a user name and a password");
        return Ok(ExitCode::from(2));
    }
    let creds = Credentials { username, password };
    match imgbuild_registry::login(&a.registry, &creds, registry_options(&a.insecure)) {
        Ok(file) => {
            eprintln!("Login Succeeded (credentials in {})", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

pub fn logout(a: LogoutArgs) -> anyhow::Result<ExitCode> {
    match imgbuild_registry::logout(&a.registry) {
        Ok(true) => {
            eprintln!("Removed login credentials for {}", a.registry);
            Ok(ExitCode::SUCCESS)
        }
        Ok(false) => {
            eprintln!("error: not logged in to {}", a.registry);
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
