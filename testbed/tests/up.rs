//! `fleetgate-testbed up` (the README's first command), small: one cloud of one agent on free
//! ports. It prints where everything is, the gateway serves the demo bundle, and SIGTERM stops
//! every process it started.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetgate_testbed::harness::{free_tcp, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate-testbed");

fn port(addr: &str) -> String {
    addr.rsplit_once(':').unwrap().1.to_owned()
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn up_prints_the_fleet_serves_and_stops_everything_on_sigterm() {
    let state = tempfile::tempdir().unwrap();
    let (gateway, admin) = (port(&free_tcp()), port(&free_tcp()));
    let (blue, green) = (free_tcp(), free_tcp());
    let mut child = Command::new(BIN)
        .args(["up", "--clouds", "1", "--agents-per-cloud", "1"])
        .args(["--port", &gateway, "--admin-port", &admin])
        .args(["--backends", &blue, &green])
        .arg("--state-dir")
        .arg(state.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !printed.contains("Press Ctrl-C") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                printed.push_str(&line);
                printed.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("up did not come up in 60 s; printed:\n{printed}");
            }
        }
    }
    let agent = format!("127.0.11.1:{gateway}");
    for expected in [
        format!("gateway http://{agent}/"),
        format!("admin http://127.0.11.1:{admin}/config"),
        "admin token  fgt_".to_owned(),
        "cluster status".to_owned(),
        "authorization: Bearer ey".to_owned(),
    ] {
        assert!(
            printed.contains(&expected),
            "no {expected:?} in:\n{printed}"
        );
    }
    let (status, body) = http_get(&agent, "/hello").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("backend-blue"), "{body}");

    let state_path = state.path().display().to_string();
    assert!(
        processes_mentioning(&state_path).len() >= 4,
        "managers and agent"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "up did not stop within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    let left = processes_mentioning(&state_path);
    assert!(left.is_empty(), "left running: {left:?}");
}
