//! `fleetgate`: the operator's command line.
//!
//! For now it validates bundles offline, like `nginx -t`: operators run it in CI before every
//! apply. Exit codes: 0 valid, 1 invalid (one error per line on stderr), 2 unreadable input.

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
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check bundles offline: parse every document in every file and directory given, validate
    /// them as one config, and print a summary (exit 0), every problem (exit 1), or why input
    /// could not be read (exit 2).
    Validate {
        /// Files or directories (walked for *.yaml, *.yml and *.json).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
}

const EXIT_INVALID: u8 = 1;
const EXIT_UNREADABLE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { paths } => run_validate(&paths),
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
