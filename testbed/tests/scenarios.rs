//! Every shipped scenario, in its short form, through the binary: exit 0 means every assertion
//! held. About 90 s of real processes on two cores, so it is not part of the default test run
//! (it would compete with the other process-heavy tests for the CPU and turn timing verdicts
//! into noise); `.ci/run` runs it on its own right after the test suite.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate-testbed");

#[test]
#[ignore = "about 90 s of real processes; .ci/run runs it after the test suite"]
fn every_scenario_passes_in_short_form() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut scenarios: Vec<_> = std::fs::read_dir(repo.join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    scenarios.sort();
    assert_eq!(scenarios.len(), 6, "{scenarios:?}");
    let state = tempfile::tempdir().unwrap();
    let report = state.path().join("report.json");
    let status = Command::new(BIN)
        .arg("run")
        .args(&scenarios)
        .arg("--short")
        .arg("--state-dir")
        .arg(state.path())
        .arg("--report")
        .arg(&report)
        .status()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(status.success(), "{status}: {report:#}");
    assert_eq!(report["passed"], true);
    assert_eq!(report["scenarios"].as_array().unwrap().len(), 6);
}
