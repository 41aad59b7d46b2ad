//! `fleetgate-agent`: parse flags, install logging, build the app, run it.

use std::process::ExitCode;

use clap::Parser;
use fleetgate_agent::{AgentConfig, App};

fn main() -> ExitCode {
    let config = AgentConfig::parse();
    fleetgate_agent::telemetry::init_logging(config.log_format);
    let app = match App::build(config) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("fleetgate-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    match app.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetgate-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
