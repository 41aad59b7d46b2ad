//! `fleetgate` against a real `fleetgate-manager` process: apply, get, diff, dry run, delete
//! with If-Match, rollback, history, tokens and roles, and the exit codes of every failure.
//!
//! The manager binary belongs to another package, so Cargo gives no `CARGO_BIN_EXE_` for it
//! here; `cargo build --workspace` (or `cargo nextest run --workspace`) puts it next to ours.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns fail the test loudly, as they should

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetgate_shared::bundle::Format;
use fleetgate_shared::{Kind, Resource, parse_bundle};
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// `target/<profile>/fleetgate-manager`, next to this package's `fleetgate` binary.
fn manager_bin() -> PathBuf {
    let cli = Path::new(env!("CARGO_BIN_EXE_fleetgate"));
    let bin = cli.with_file_name(format!("fleetgate-manager{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: it is built by the fleetgate-manager package; run \
         `cargo build --workspace` (or `cargo nextest run --workspace`) first",
        bin.display()
    );
    bin
}

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// One `fleetgate-manager` process, killed on drop.
struct Manager {
    dir: PathBuf,
    api: String,
    token: String,
    child: Child,
}

impl Manager {
    fn start(root: &Path) -> Self {
        let bin = manager_bin();
        let dir = root.join("node-1");
        let api = free_addr();
        let init = Command::new(&bin)
            .args([
                "init",
                "--data-dir",
                dir.to_str().unwrap(),
                "--node-id",
                "1",
            ])
            .args(["--raft-addr", &free_addr(), "--api-addr", &api])
            .args(["--sync-addr", &free_addr()])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let token = std::fs::read_to_string(dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let child = Command::new(&bin)
            .args(["serve", "--data-dir", dir.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            dir,
            api,
            token,
            child,
        }
    }

    fn server(&self) -> String {
        format!("https://{}", self.api)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `fleetgate` with a clean environment: no FLEETGATE_* variables, and a HOME without a config.
fn fleetgate(home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(args)
        .env_remove("FLEETGATE_SERVER")
        .env_remove("FLEETGATE_TOKEN")
        .env_remove("FLEETGATE_CA_CERT")
        .env_remove("FLEETGATE_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", home)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A CLI bound to one manager and one token (passed as flags).
struct Client<'a> {
    manager: &'a Manager,
    home: &'a Path,
    token: String,
}

impl Client<'_> {
    fn run(&self, args: &[&str]) -> Run {
        let server = self.manager.server();
        let ca = self.manager.ca();
        let mut all = vec![
            "--server",
            &server,
            "--token",
            &self.token,
            "--ca-cert",
            ca.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        fleetgate(self.home, &all, &[])
    }

    /// Runs and asserts exit code 0.
    fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            run.code, 0,
            "fleetgate {args:?}: stdout {}\nstderr {}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    /// Waits until the server answers with a leader.
    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let run = self.run(&["cluster", "status"]);
            if run.code == 0
                && run
                    .stdout
                    .lines()
                    .any(|l| l.starts_with("leader:") && !l.trim_end().ends_with('-'))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the manager never became ready: {} {}",
                run.stdout,
                run.stderr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn revision(&self) -> u64 {
        let status = self.ok(&["cluster", "status"]);
        status
            .lines()
            .find_map(|l| l.strip_prefix("revision:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/standalone/gateway.yaml")
}

fn routes_of(resources: Vec<Resource>) -> Vec<Resource> {
    let mut routes: Vec<Resource> = resources
        .into_iter()
        .filter(|r| r.kind() == Kind::Route)
        .collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    routes
}

fn local_routes(path: &Path) -> Vec<Resource> {
    let text = std::fs::read_to_string(path).unwrap();
    routes_of(parse_bundle(&text, Format::Yaml, "").unwrap())
}

/// The column at which `header` starts in the first line of `table`, checked on every line.
fn assert_column_aligned(table: &str, header: &str) {
    let mut lines = table.lines();
    let first = lines.next().unwrap();
    let column = first.find(header).unwrap();
    for line in lines {
        let before = &line[..column];
        assert!(
            before.ends_with("  ") || before.ends_with(' '),
            "{header} misaligned in {line:?} of\n{table}"
        );
        assert_ne!(
            line.as_bytes()[column],
            b' ',
            "{header} misaligned in {line:?}"
        );
    }
}

/// A temporary root holding a CLI home directory and a started one-node manager.
fn one_manager() -> (tempfile::TempDir, PathBuf, Manager) {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let manager = Manager::start(root.path());
    (root, home, manager)
}

#[test]
fn single_node_apply_get_diff_delete_rollback_history_and_tokens() {
    let (root, home, manager) = one_manager();
    let admin = Client {
        manager: &manager,
        home: &home,
        token: manager.token.clone(),
    };
    admin.wait_ready();

    // apply → revision 1
    let example = example();
    let out = admin.ok(&["apply", "-f", example.to_str().unwrap()]);
    assert!(out.contains("revision 1"), "{out}");

    // get as table, JSON and YAML
    let table = admin.ok(&["get", "route", "-o", "table"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("KIND"), "{table}");
    assert_eq!(lines.len(), 1 + local_routes(&example).len(), "{table}");
    assert!(
        table.contains("catch-all") && table.contains("api"),
        "{table}"
    );
    assert_column_aligned(&table, "NAME");
    assert_column_aligned(&table, "LABELS");
    let json: Value = serde_json::from_str(&admin.ok(&["get", "routes", "-o", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), local_routes(&example).len());
    let one: Value =
        serde_json::from_str(&admin.ok(&["get", "route", "api", "-o", "json"])).unwrap();
    assert_eq!(one["name"], "api");
    assert_eq!(one["kind"], "Route");
    let consistent = admin.ok(&["get", "route", "api", "--consistent", "-o", "json"]);
    assert_eq!(serde_json::from_str::<Value>(&consistent).unwrap(), one);
    let yaml = admin.ok(&["get", "route", "-o", "yaml"]);
    let reparsed = routes_of(parse_bundle(&yaml, Format::Yaml, "").unwrap());
    assert_eq!(reparsed, local_routes(&example), "{yaml}");

    // diff of an edited copy shows the change; a dry run commits nothing
    let edited = root.path().join("edited.yaml");
    let text = std::fs::read_to_string(&example).unwrap();
    assert!(text.contains("x-fleetgate-route: api\n"));
    std::fs::write(
        &edited,
        text.replace("x-fleetgate-route: api\n", "x-fleetgate-route: api-v2\n"),
    )
    .unwrap();
    let diff = admin.ok(&["diff", "-f", edited.to_str().unwrap()]);
    assert!(diff.contains("~ route/api\n"), "{diff}");
    assert!(
        diff.lines()
            .any(|l| l.starts_with("    +") && l.contains("x-fleetgate-route: api-v2")),
        "{diff}"
    );
    assert!(
        diff.lines()
            .any(|l| l.starts_with("    -") && l.trim_end().ends_with("x-fleetgate-route: api")),
        "{diff}"
    );
    assert!(diff.contains("1 to change"), "{diff}");
    let dry = admin.ok(&["apply", "--dry-run", "-f", edited.to_str().unwrap()]);
    assert!(dry.contains("nothing committed"), "{dry}");
    assert_eq!(admin.revision(), 1);
    assert!(
        !admin
            .ok(&["get", "route", "api", "-o", "yaml"])
            .contains("api-v2")
    );
    let same = admin.ok(&["diff", "-f", example.to_str().unwrap()]);
    assert!(same.contains("no changes"), "{same}");

    let out = admin.ok(&["apply", "-f", edited.to_str().unwrap()]);
    assert!(out.contains("revision 2"), "{out}");

    // a stale If-Match is a conflict naming the current revision
    let stale = admin.run(&["delete", "route", "catch-all", "--if-match", "1"]);
    assert_eq!(stale.code, 1, "{} {}", stale.stdout, stale.stderr);
    assert!(stale.stderr.contains("409"), "{}", stale.stderr);
    assert!(
        stale.stderr.contains("current revision is 2"),
        "{}",
        stale.stderr
    );

    // rollback restores the content of revision 1 exactly
    let out = admin.ok(&["rollback", "--to", "1"]);
    assert!(out.contains("revision 3"), "{out}");
    let yaml = admin.ok(&["get", "route", "-o", "yaml"]);
    assert_eq!(
        routes_of(parse_bundle(&yaml, Format::Yaml, "").unwrap()),
        local_routes(&example)
    );

    // a fresh If-Match wins
    let out = admin.ok(&["delete", "route", "catch-all", "--if-match", "3"]);
    assert!(out.contains("revision 4"), "{out}");
    let missing = admin.run(&["get", "route", "catch-all"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("404"), "{}", missing.stderr);

    // history: every revision, authored by the bootstrap token's name
    let history = admin.ok(&["history", "--limit", "10"]);
    for revision in 1..=4 {
        assert!(
            history
                .lines()
                .any(|l| l.starts_with(&format!("{revision} ")) && l.contains("bootstrap-admin")),
            "revision {revision} missing from\n{history}"
        );
    }
    assert!(history.contains("rollback to 1"), "{history}");
    assert!(history.contains("-route/catch-all"), "{history}");
    assert_column_aligned(&history, "AUTHOR");

    // local validation: a dangling reference is refused before anything is sent
    let bad = root.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Route\nname: nowhere\nspec:\n  forward:\n    backends: [{ service: missing }]\n",
    )
    .unwrap();
    let refused = admin.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .lines()
            .next()
            .unwrap()
            .starts_with("route/nowhere: "),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("nothing was applied"));
    // a partial bundle, valid together with what the server holds, goes through
    let partial = root.path().join("partial.yaml");
    std::fs::write(
        &partial,
        "kind: Route\nname: extra\nspec:\n  matches:\n    - path: {prefix: /extra}\n  forward:\n    backends: [{ service: echo }]\n",
    )
    .unwrap();
    let out = admin.ok(&["apply", "-f", partial.to_str().unwrap()]);
    assert!(out.contains("revision 5"), "{out}");
    let unreadable = admin.run(&["apply", "-f", "/nonexistent/bundle.yaml"]);
    assert_eq!(unreadable.code, 2, "{}", unreadable.stderr);

    // tokens and roles: a viewer reads but cannot write (403); an unknown token is 401
    let secret = admin.ok(&["token", "create", "ci-viewer", "--role", "viewer"]);
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("fgt_"), "{secret}");
    let tokens = admin.ok(&["token", "list"]);
    assert!(
        tokens
            .lines()
            .any(|l| l.starts_with("ci-viewer ") && l.contains("viewer")),
        "{tokens}"
    );
    let viewer = Client {
        manager: &manager,
        home: &home,
        token: secret,
    };
    viewer.ok(&["get", "route"]);
    let forbidden = viewer.run(&["apply", "-f", example.to_str().unwrap()]);
    assert_eq!(forbidden.code, 1, "{}", forbidden.stderr);
    assert!(forbidden.stderr.contains("403"), "{}", forbidden.stderr);
    let bad_token = Client {
        manager: &manager,
        home: &home,
        token: "fgt_not-a-token".to_owned(),
    };
    let unauthorized = bad_token.run(&["get", "route"]);
    assert_eq!(unauthorized.code, 1, "{}", unauthorized.stderr);
    assert!(
        unauthorized.stderr.contains("401"),
        "{}",
        unauthorized.stderr
    );
    admin.ok(&["token", "revoke", "ci-viewer"]);
    let revoked = viewer.run(&["get", "route"]);
    assert_eq!(revoked.code, 1);
    assert!(revoked.stderr.contains("401"), "{}", revoked.stderr);

    // the same manager through the environment and through a config file
    let server = manager.server();
    let ca = manager.ca();
    let from_env = fleetgate(
        &home,
        &["get", "route", "api"],
        &[
            ("FLEETGATE_SERVER", server.as_str()),
            ("FLEETGATE_TOKEN", manager.token.as_str()),
            ("FLEETGATE_CA_CERT", ca.to_str().unwrap()),
        ],
    );
    assert_eq!(from_env.code, 0, "{}", from_env.stderr);
    let config_dir = home.join(".config/fleetgate");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.yaml"),
        format!(
            "server: {server}\ntoken: {}\nca_cert: {}\n",
            manager.token,
            ca.display()
        ),
    )
    .unwrap();
    let from_file = fleetgate(&home, &["cluster", "status"], &[]);
    assert_eq!(from_file.code, 0, "{}", from_file.stderr);
    assert!(from_file.stdout.contains("leader"), "{}", from_file.stdout);
}

/// Join tokens and the fleet view from the CLI: a join token is printed once on stdout with
/// what it admits on stderr; a bad `--ttl` is a usage error; `agents` shows an empty fleet and
/// its rollout line; revoking an unknown agent names it.
#[test]
fn join_tokens_and_the_fleet_view() {
    let (_root, home, manager) = one_manager();
    let admin = Client {
        manager: &manager,
        home: &home,
        token: manager.token.clone(),
    };
    admin.wait_ready();

    let run = admin.run(&[
        "token",
        "create",
        "--agent",
        "--ttl",
        "30m",
        "--max-uses",
        "2",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let token = run.stdout.trim();
    assert!(
        token.starts_with("fgj1.") && token.split('.').count() == 4,
        "{token}"
    );
    assert!(run.stderr.contains("for 2 agents"), "{}", run.stderr);

    let bad = admin.run(&["token", "create", "--agent", "--ttl", "soon"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--ttl soon"), "{}", bad.stderr);
    let neither = admin.run(&["token", "create"]);
    assert_eq!(neither.code, 2, "{}", neither.stderr);

    let table = admin.ok(&["agents"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("applied on 0 of 0 connected agents"),
        "{table}"
    );
    let json: Value = serde_json::from_str(&admin.ok(&["agents", "-o", "json"])).unwrap();
    assert_eq!(json["agents"], Value::Array(vec![]), "{json}");
    assert_eq!(json["rollout"]["selected"], 0, "{json}");

    let unknown = admin.run(&["agents", "revoke", "ag-nobody"]);
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("ag-nobody"), "{}", unknown.stderr);
}

/// A CA certificate that the CLI accepts, for tests without a manager.
fn some_ca(dir: &Path) -> PathBuf {
    let (cert, _key) = fleetgate_manager::tls::create_ca().unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, cert).unwrap();
    path
}

#[test]
fn unreachable_server_exits_3_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let ca = some_ca(dir.path());
    let addr = free_addr(); // bound, then released: nothing listens there
    let server = format!("https://{addr}");
    let run = fleetgate(
        dir.path(),
        &[
            "--server",
            &server,
            "--token",
            "t",
            "--ca-cert",
            ca.to_str().unwrap(),
            "get",
            "route",
        ],
        &[],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains(&addr) && run.stderr.contains("cannot reach"),
        "{}",
        run.stderr
    );
}

#[test]
fn flags_win_over_env_which_wins_over_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    some_ca(dir.path());
    let (from_file, from_env, from_flag) = (free_addr(), free_addr(), free_addr());
    let config = dir.path().join("fleetgate.yaml");
    std::fs::write(
        &config,
        format!("server: https://{from_file}\ntoken: t\nca_cert: ca.pem\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let env_server = format!("https://{from_env}");
    let flag_server = format!("https://{from_flag}");
    let env = [("FLEETGATE_SERVER", env_server.as_str())];

    let run = fleetgate(dir.path(), &["--config", config, "history"], &[]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains(&from_file), "{}", run.stderr);
    let run = fleetgate(dir.path(), &["--config", config, "history"], &env);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains(&from_env), "{}", run.stderr);
    let run = fleetgate(
        dir.path(),
        &["--config", config, "--server", &flag_server, "history"],
        &env,
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains(&from_flag), "{}", run.stderr);

    // usage errors: no server at all, a missing config file, plain http, an unknown kind
    let run = fleetgate(dir.path(), &["history"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no server"), "{}", run.stderr);
    let run = fleetgate(
        dir.path(),
        &["--config", "/nonexistent.yaml", "history"],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    let run = fleetgate(
        dir.path(),
        &[
            "--config",
            config,
            "--server",
            "http://127.0.0.1:1",
            "history",
        ],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("HTTPS"), "{}", run.stderr);
    let run = fleetgate(dir.path(), &["--config", config, "get", "gizmo"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}
