//! `fleetgate-agent`: parse flags, install logging, build the app, run it.

use std::process::ExitCode;

use clap::Parser;
use fleetgate_agent::{AgentConfig, App};

// The request path allocates small, short-lived buffers on every request; mimalloc's
// thread-local free lists serve them faster than glibc's allocator (measured in
// docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
