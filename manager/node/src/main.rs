//! `fleetgate-manager`: runs a Fleetgate manager node. A thin shell over the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    fleetgate_manager::cli::main_with_args(std::env::args_os())
}
