//! `fleetgate`: the operator's command line.
//!
//! `validate` checks bundles offline, like `nginx -t`: operators run it in CI before every
//! apply. The other commands (see [`remote`]) are clients of a manager's admin API over HTTPS.
//!
//! Exit codes: 0 ok; 1 invalid input or the server refused (one error per line on stderr);
//! 2 bad usage or unreadable input; 3 the server cannot be reached.

mod remote;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetgate_shared::{LoadError, Snapshot, load_paths, validate};

#[derive(Parser, Debug)]
#[command(
    name = "fleetgate",
    version,
    about = "Fleetgate: one gateway for every cloud"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: remote::Connection,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Remote(remote::RemoteCommand),
    /// Check bundles offline: parse every document in every file and directory given, validate
    /// them as one config, and print a summary (exit 0), every problem (exit 1), or why input
    /// could not be read (exit 2).
    Validate {
        /// Files or directories (walked for *.yaml, *.yml and *.json).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Hash a basic-auth password for a Consumer's `credentials.basic.password_hash`. The
    /// password is read from standard input (one line), never from the command line, so that
    /// it stays out of shell history and process listings.
    HashPassword {
        /// PBKDF2 iterations; more is slower to verify and slower to crack.
        #[arg(long, default_value_t = fleetgate_shared::password::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}

const EXIT_INVALID: u8 = 1;
const EXIT_UNREADABLE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { paths } => run_validate(&paths),
        Command::HashPassword { iterations } => run_hash_password(iterations),
        Command::Remote(command) => remote::run(command, cli.connection),
    }
}

fn run_validate(paths: &[PathBuf]) -> ExitCode {
    let resources = match load_paths(paths) {
        Ok(resources) => resources,
        Err(LoadError::Unreadable { path, reason }) => {
            eprintln!("error: cannot read {}: {reason}", path.display());
            return ExitCode::from(EXIT_UNREADABLE);
        }
        Err(LoadError::Invalid(errors)) => {
            for error in &errors {
                eprintln!("{error}");
            }
            eprintln!("invalid: {} problem(s) found while parsing", errors.len());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    if let Err(errors) = validate(&resources) {
        for error in &errors {
            eprintln!("{error}");
        }
        eprintln!(
            "invalid: {} problem(s) in {} resource(s)",
            errors.len(),
            resources.len()
        );
        return ExitCode::from(EXIT_INVALID);
    }
    let count = resources.len();
    match Snapshot::new(0, resources) {
        Ok(snapshot) => {
            println!("ok: {count} resources, checksum {}", snapshot.checksum());
            ExitCode::SUCCESS
        }
        // validate() reports duplicates first, so this is unreachable in practice; still an
        // error line rather than a panic.
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn run_hash_password(iterations: u32) -> ExitCode {
    let Some(iterations) = std::num::NonZeroU32::new(iterations).filter(|n| n.get() >= 10_000)
    else {
        eprintln!("error: --iterations must be at least 10000");
        return ExitCode::from(EXIT_INVALID);
    };
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("error: cannot read the password from standard input: {e}");
        return ExitCode::from(EXIT_UNREADABLE);
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!(
            "error: empty password: write it to standard input, e.g. `read -s P; printf %s \"$P\" | fleetgate hash-password`"
        );
        return ExitCode::from(EXIT_INVALID);
    }
    match fleetgate_shared::password::hash_new(password, iterations) {
        Ok(encoded) => {
            println!("{encoded}");
            ExitCode::SUCCESS
        }
        Err(_) => {
            eprintln!("error: the system random number generator failed; try again");
            ExitCode::from(EXIT_UNREADABLE)
        }
    }
}
