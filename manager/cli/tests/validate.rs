//! `fleetgate validate` as operators use it in CI: real files, the real binary, exit codes and
//! the exact line format.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns fail the test loudly, as they should

use std::path::Path;
use std::process::{Command, Output};

fn validate(paths: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .arg("validate")
        .args(paths)
        .output()
        .expect("the fleetgate binary runs")
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const SERVICE: &str =
    "kind: Service\nname: web\nspec:\n  endpoints:\n    - address: 127.0.0.1:9001\n";
const ROUTE: &str = "kind: Route\nname: all\nspec:\n  forward:\n    backends: [{ service: web }]\n";

#[test]
fn a_valid_directory_prints_one_summary_line_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "service.yaml", SERVICE);
    write(dir.path(), "route.yml", ROUTE);
    write(
        dir.path(),
        "notes.txt",
        "not a config file, and ignored inside a directory",
    );
    let out = validate(&[dir.path()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.trim();
    assert!(line.starts_with("ok: 2 resources, checksum "), "{line}");
    assert_eq!(
        line.rsplit(' ').next().unwrap().len(),
        64,
        "full sha-256 checksum: {line}"
    );
}

#[test]
fn the_checksum_is_the_same_for_the_same_content_written_differently() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", &format!("{SERVICE}---\n{ROUTE}"));
    // Same content: other document order, flow style, and a default written out.
    let b = write(
        dir.path(),
        "b.json",
        r#"[{"kind":"Route","name":"all","spec":{"forward":{"backends":[{"service":"web","weight":100}]}}},
            {"kind":"Service","name":"web","spec":{"endpoints":[{"address":"127.0.0.1:9001","weight":1}]}}]"#,
    );
    let (out_a, out_b) = (validate(&[&a]), validate(&[&b]));
    assert_eq!(out_a.status.code(), Some(0));
    assert_eq!(out_a.stdout, out_b.stdout);
}

#[test]
fn every_problem_is_reported_one_per_line_naming_resource_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write(
        dir.path(),
        "bad.yaml",
        "kind: Route\nname: chat\nspec:\n  matches: [{ path: { regex: '(unclosed' } }]\n  forward:\n    backends: [{ service: missing }]\n---\n\
         kind: Service\nname: web\nspec:\n  endpoints: [{ address: '127.0.0.1:9001', weight: 0 }]\n",
    );
    let out = validate(&[&bundle]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.contains(&"route/chat: spec.matches[0].path.regex: invalid regex: unclosed group"),
        "{stderr}"
    );
    assert!(lines.contains(&"route/chat: spec.forward.backends[0].service: refers to service/missing, which does not exist"), "{stderr}");
    assert!(
        lines.contains(
            &"service/web: spec.endpoints[0].weight: 0 is out of range; expected 1 to 10000"
        ),
        "{stderr}"
    );
    assert!(
        lines.last().unwrap().starts_with("invalid: 3 problem(s)"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_field_is_named_with_its_path_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write(
        dir.path(),
        "typo.yaml",
        "kind: Route\nname: chat\nspec:\n  matches: [{ pth: { prefix: / } }]\n  forward: { backends: [{ service: web }] }\n",
    );
    let out = validate(&[&bundle]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap();
    assert!(
        first.starts_with("route/chat: spec.matches[0].pth: unknown field `pth`"),
        "{first}"
    );
    assert!(
        first.ends_with(&format!("(in {}, document 1)", bundle.display())),
        "{first}"
    );
}

#[test]
fn unreadable_input_exits_two_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let out = validate(&[&missing]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.yaml"));

    let binary = dir.path().join("binary.yaml");
    std::fs::write(&binary, b"kind: Route\nname: \xff\xfe\n").unwrap();
    let out = validate(&[&binary]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("not valid UTF-8 (first bad byte at offset 18)")
    );
}

#[test]
fn ten_megabytes_of_garbage_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.yaml");
    // Printable, so that it reaches the YAML parser rather than the UTF-8 check.
    let garbage: String = (0..10 * 1024 * 1024)
        .map(|i: u32| char::from(b'!' + ((i.wrapping_mul(2_654_435_761) >> 13) % 90) as u8))
        .collect();
    std::fs::write(&path, garbage).unwrap();
    let out = validate(&[&path]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("garbage.yaml, document 1"),
        "{}",
        &stderr[..stderr.len().min(500)]
    );
}

#[test]
fn hash_password_reads_stdin_and_its_output_validates_and_verifies() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["hash-password", "--iterations", "10000"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pass\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(fleetgate_shared::password::verify(&hash, "s3cret pass"));
    assert!(!fleetgate_shared::password::verify(&hash, "s3cret pass\n"));
    let dir = tempfile::tempdir().unwrap();
    let consumer = write(
        dir.path(),
        "c.yaml",
        &format!(
            "kind: Consumer\nname: ops\nspec:\n  credentials:\n    basic: {{ username: ops, password_hash: '{hash}' }}\n"
        ),
    );
    assert_eq!(validate(&[&consumer]).status.code(), Some(0));
}
