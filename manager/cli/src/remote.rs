//! The commands that talk to a manager's admin API (`/api/v1` over HTTPS, bearer tokens; see
//! docs/manager.md). The connection comes from flags, then the environment, then a config file.
//!
//! Every command ends in one [`Failure`] or success: 1 when the server (or local validation)
//! refused, 2 for bad usage or unreadable input, 3 when the server cannot be reached.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use fleetgate_manager::http_client::HttpClient;
use fleetgate_shared::{Kind, LoadError, Resource, ResourceKey, load_paths, validate};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;
/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the manager is and how to talk to it. Flags win over the environment, which wins over
/// the config file.
#[derive(Args, Debug)]
pub struct Connection {
    /// The admin API of any manager node, `https://HOST:PORT` (writes are forwarded to the
    /// leader).
    #[arg(long, env = "FLEETGATE_SERVER", global = true, value_name = "URL")]
    server: Option<String>,
    /// An API token (sent as a bearer token).
    #[arg(long, env = "FLEETGATE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA certificate (PEM; `tls/ca.pem` in any node's data directory). Only
    /// certificates of this CA are trusted.
    #[arg(long, env = "FLEETGATE_CA_CERT", global = true, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// A YAML file with `server`, `token` and `ca_cert` keys (default:
    /// ~/.config/fleetgate/config.yaml, if present). A relative `ca_cert` is relative to it.
    #[arg(long, env = "FLEETGATE_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The commands served by a manager.
#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Validate bundles locally, then apply them atomically (create or replace every resource
    /// in them). Prints the new revision, or with --dry-run the changes it would make.
    Apply {
        /// Files or directories (walked for *.yaml, *.yml and *.json).
        #[arg(short = 'f', long = "filename", required = true, num_args = 1.., value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Show what would change; commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply only if the config is still at this revision (409 otherwise).
        #[arg(long, value_name = "REVISION")]
        if_match: Option<u64>,
    },
    /// List the resources of one kind, or show one.
    Get {
        /// route, service, policy, consumer, domain or certificate (plurals work too).
        kind: String,
        name: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// A linearizable read (served by the leader) instead of the node's local state.
        #[arg(long)]
        consistent: bool,
    },
    /// Delete one resource.
    Delete {
        kind: String,
        name: String,
        /// Delete only if the config is still at this revision (409 otherwise).
        #[arg(long, value_name = "REVISION")]
        if_match: Option<u64>,
    },
    /// Show what `apply -f PATH` would change (a dry run on the server).
    Diff {
        #[arg(short = 'f', long = "filename", required = true, num_args = 1.., value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// The latest revisions: when, who, what.
    History {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Make a new revision with the content of an earlier one.
    Rollback {
        #[arg(long, value_name = "REVISION")]
        to: u64,
        #[arg(long, value_name = "REVISION")]
        if_match: Option<u64>,
    },
    /// The manager cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// API tokens and agent join tokens (admin role).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The agents: enrolled, connected, the revision each serves, its last rejection, and
    /// how far a revision has rolled out. `agents revoke ID` refuses an agent from now on.
    Agents {
        #[command(subcommand)]
        command: Option<AgentsCommand>,
        /// Rollout of this revision (default: the current one).
        #[arg(long, value_name = "REVISION")]
        revision: Option<u64>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentsCommand {
    /// Revoke an agent: every manager refuses it from now on (it keeps serving its last
    /// config; enrol it again with a new join token to bring it back).
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Node, leader, term, applied index, revision and members, as seen by the server.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token (NAME and --role), or with --agent a join token for agents
    /// (`fleetgate-agent --join TOKEN`); the secret is printed once, on standard output.
    Create {
        #[arg(required_unless_present = "agent")]
        name: Option<String>,
        #[arg(long, value_enum, required_unless_present = "agent")]
        role: Option<Role>,
        /// Make an agent join token instead of an API token.
        #[arg(long, conflicts_with_all = ["name", "role"])]
        agent: bool,
        /// How long the join token admits agents (`30m`, `1h`, `7d` is not accepted: use
        /// `168h`).
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "1h",
            requires = "agent"
        )]
        ttl: String,
        /// How many agents may enrol with it; 0 for any number until it expires.
        #[arg(long, value_name = "N", default_value_t = 1, requires = "agent")]
        max_uses: u32,
    },
    /// Names, roles and creators (never secrets).
    List,
    /// Revoke a token by name.
    Revoke { name: String },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

/// Why a command failed; each variant is one exit code.
#[derive(Debug)]
enum Failure {
    /// Refused by the server or by local validation: lines for stderr.
    Refused(Vec<String>),
    Usage(String),
    Unreachable(String),
}

impl Failure {
    fn report(self) -> ExitCode {
        match self {
            Failure::Refused(lines) => {
                for line in lines {
                    eprintln!("{line}");
                }
                ExitCode::from(EXIT_REFUSED)
            }
            Failure::Usage(message) => {
                eprintln!("error: {message}");
                ExitCode::from(EXIT_USAGE)
            }
            Failure::Unreachable(message) => {
                eprintln!("error: {message}");
                ExitCode::from(EXIT_UNREACHABLE)
            }
        }
    }
}

type Outcome<T = ()> = Result<T, Failure>;

/// Runs one remote command.
pub fn run(command: RemoteCommand, connection: Connection) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match runtime.block_on(execute(command, connection)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

async fn execute(command: RemoteCommand, connection: Connection) -> Outcome {
    match command {
        RemoteCommand::Apply {
            paths,
            dry_run,
            if_match,
        } => {
            let resources = load_local(&paths)?;
            let client = Client::new(connection)?;
            validate_before_sending(&client, &resources).await?;
            apply(&client, &resources, dry_run, if_match).await
        }
        RemoteCommand::Diff { paths } => {
            let resources = load_local(&paths)?;
            let client = Client::new(connection)?;
            validate_before_sending(&client, &resources).await?;
            apply(&client, &resources, true, None).await
        }
        RemoteCommand::Get {
            kind,
            name,
            output,
            consistent,
        } => {
            let kind = parse_kind(&kind)?;
            let query = if consistent { "?consistent=true" } else { "" };
            let client = Client::new(connection)?;
            get(&client, kind, name.as_deref(), output, query).await
        }
        RemoteCommand::Delete {
            kind,
            name,
            if_match,
        } => {
            let kind = parse_kind(&kind)?;
            let client = Client::new(connection)?;
            let path = format!("/api/v1/{}/{}", kind.slug(), segment(&name));
            let written = client.call(Method::DELETE, &path, if_match, None).await?;
            println!(
                "deleted {}/{name}: revision {}",
                kind.slug(),
                written["revision"]
            );
            Ok(())
        }
        RemoteCommand::History { limit } => history(&Client::new(connection)?, limit).await,
        RemoteCommand::Rollback { to, if_match } => {
            let client = Client::new(connection)?;
            let body = json!({ "to": to }).to_string();
            let written = client
                .call(
                    Method::POST,
                    "/api/v1/rollback",
                    if_match,
                    Some(body.into()),
                )
                .await?;
            println!(
                "rolled back to the content of revision {to}: revision {}",
                written["revision"]
            );
            Ok(())
        }
        RemoteCommand::Cluster {
            command: ClusterCommand::Status,
        } => cluster_status(&Client::new(connection)?).await,
        RemoteCommand::Token { command } => token(&Client::new(connection)?, command).await,
        RemoteCommand::Agents {
            command: Some(AgentsCommand::Revoke { id }),
            ..
        } => {
            let client = Client::new(connection)?;
            let path = format!("/api/v1/agents/{}/revoke", segment(&id));
            client.call(Method::POST, &path, None, None).await?;
            println!("revoked agent {id}");
            Ok(())
        }
        RemoteCommand::Agents {
            command: None,
            revision,
            output,
        } => agents(&Client::new(connection)?, revision, output).await,
    }
}

/// `text` percent-encoded for one URL path segment (everything but unreserved characters).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn parse_kind(kind: &str) -> Outcome<Kind> {
    Kind::from_str(kind).map_err(|e| Failure::Usage(e.to_string()))
}

/// Reads bundles (offline); unreadable input is a usage error, malformed documents a refusal.
fn load_local(paths: &[PathBuf]) -> Outcome<Vec<Resource>> {
    match load_paths(paths) {
        Ok(resources) => Ok(resources),
        Err(LoadError::Unreadable { path, reason }) => Err(Failure::Usage(format!(
            "cannot read {}: {reason}",
            path.display()
        ))),
        Err(LoadError::Invalid(errors)) => {
            let mut lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            lines.push(format!(
                "invalid: {} problem(s) found while parsing; nothing was sent",
                errors.len()
            ));
            Err(Failure::Refused(lines))
        }
    }
}

/// Validates a bundle before it is sent, like `fleetgate validate`. A bundle that is only valid
/// together with what the server already holds (a route to a service applied earlier) is
/// checked again merged with the server's current config, as the server will check it.
async fn validate_before_sending(client: &Client, bundle: &[Resource]) -> Outcome {
    let Err(alone) = validate(bundle) else {
        return Ok(());
    };
    let duplicated = alone.iter().any(|e| e.message.starts_with("duplicate:"));
    let problems = if duplicated {
        alone
    } else {
        let mut merged: BTreeMap<ResourceKey, Resource> = BTreeMap::new();
        for kind in Kind::ALL {
            let path = format!("/api/v1/{}", kind.slug());
            let mut listing = client.call(Method::GET, &path, None, None).await?;
            let items: Vec<Resource> =
                serde_json::from_value(listing["items"].take()).map_err(|e| {
                    Failure::Refused(vec![format!(
                        "error: the server's {} listing is not understood: {e}",
                        kind.slug()
                    )])
                })?;
            merged.extend(items.into_iter().map(|r| (r.key(), r)));
        }
        merged.extend(bundle.iter().map(|r| (r.key(), r.clone())));
        let merged: Vec<Resource> = merged.into_values().collect();
        match validate(&merged) {
            Ok(()) => return Ok(()),
            Err(problems) => problems,
        }
    };
    let mut lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.push(format!(
        "invalid: {} problem(s) in {} resource(s); nothing was applied",
        problems.len(),
        bundle.len()
    ));
    Err(Failure::Refused(lines))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<String>,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
}

/// Reads the config file: the one named (which must exist), else the default one if present.
fn read_config(named: Option<&Path>) -> Outcome<ConfigFile> {
    let path = match named {
        Some(path) => path.to_owned(),
        None => {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
            match base.map(|b| b.join("fleetgate/config.yaml")) {
                Some(path) if path.is_file() => path,
                _ => return Ok(ConfigFile::default()),
            }
        }
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut config: ConfigFile = serde_yaml_ng::from_str(&text)
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    if let (Some(ca), Some(dir)) = (&config.ca_cert, path.parent())
        && ca.is_relative()
    {
        config.ca_cert = Some(dir.join(ca));
    }
    Ok(config)
}

/// An admin API client for one server.
struct Client {
    http: HttpClient,
    /// `https://host:port`, without a trailing slash.
    base: String,
    token: String,
}

impl Client {
    fn new(connection: Connection) -> Outcome<Self> {
        let file = read_config(connection.config.as_deref())?;
        let server = connection.server.or(file.server).ok_or_else(|| {
            Failure::Usage(
                "no server: pass --server https://HOST:PORT, set FLEETGATE_SERVER, or put `server:` in the config file".to_owned(),
            )
        })?;
        let token = connection.token.or(file.token).ok_or_else(|| {
            Failure::Usage(
                "no token: pass --token, set FLEETGATE_TOKEN, or put `token:` in the config file"
                    .to_owned(),
            )
        })?;
        let ca_path = connection.ca_cert.or(file.ca_cert).ok_or_else(|| {
            Failure::Usage(
                "no CA certificate: pass --ca-cert FILE (the cluster's tls/ca.pem), set FLEETGATE_CA_CERT, or put `ca_cert:` in the config file".to_owned(),
            )
        })?;
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| {
            Failure::Usage(format!(
                "cannot read the CA certificate {}: {e}",
                ca_path.display()
            ))
        })?;
        let http = HttpClient::new(&ca_pem).map_err(|e| {
            Failure::Usage(format!(
                "{} is not a usable CA certificate: {e}",
                ca_path.display()
            ))
        })?;
        Ok(Self {
            http,
            base: normalize_server(&server)?,
            token: token.trim().to_owned(),
        })
    }

    /// Sends a request; returns the JSON answer of a 2xx response.
    async fn call(
        &self,
        method: Method,
        path: &str,
        if_match: Option<u64>,
        json_body: Option<Bytes>,
    ) -> Outcome<Value> {
        match self.call_status(method, path, if_match, json_body).await? {
            (status, body) if status.is_success() => Ok(body),
            (status, body) => Err(Failure::Refused(error_lines(status, &body))),
        }
    }

    /// Sends a request; returns the status and the JSON answer (`Null` if not JSON).
    async fn call_status(
        &self,
        method: Method,
        path: &str,
        if_match: Option<u64>,
        json_body: Option<Bytes>,
    ) -> Outcome<(StatusCode, Value)> {
        let mut headers = HeaderMap::new();
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|_| Failure::Usage("the token holds invalid characters".to_owned()))?;
        headers.insert(header::AUTHORIZATION, bearer);
        if let Some(revision) = if_match {
            headers.insert(header::IF_MATCH, HeaderValue::from(revision));
        }
        if json_body.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let url = format!("{}{path}", self.base);
        let call = self
            .http
            .call(method, &url, &headers, json_body.unwrap_or_default());
        let reply = match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                return Err(Failure::Unreachable(format!(
                    "cannot reach the manager at {}: {e}",
                    self.base
                )));
            }
            Err(_) => {
                return Err(Failure::Unreachable(format!(
                    "cannot reach the manager at {}: no answer within {}s",
                    self.base,
                    REQUEST_TIMEOUT.as_secs()
                )));
            }
        };
        let body = serde_json::from_slice(&reply.body).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(&reply.body).trim().to_owned();
            if text.is_empty() {
                Value::Null
            } else {
                Value::String(text)
            }
        });
        Ok((reply.status, body))
    }
}

/// `https://host:port` from what the operator wrote (`host:port` is accepted too).
fn normalize_server(server: &str) -> Outcome<String> {
    let server = server.trim().trim_end_matches('/');
    let rest = if let Some(rest) = server.strip_prefix("https://") {
        rest
    } else if server.starts_with("http://") {
        return Err(Failure::Usage(format!(
            "{server}: the admin API is served over HTTPS only; use https://"
        )));
    } else if server.contains("://") {
        return Err(Failure::Usage(format!("{server}: not an https:// URL")));
    } else {
        server
    };
    let authority: http::uri::Authority = rest
        .parse()
        .map_err(|_| Failure::Usage(format!("{server}: expected https://HOST:PORT")))?;
    if authority.port_u16().is_none() {
        return Err(Failure::Usage(format!(
            "{server}: no port; expected https://HOST:PORT"
        )));
    }
    Ok(format!("https://{authority}"))
}

/// The server's error answer, one problem per line.
fn error_lines(status: StatusCode, body: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    match body {
        Value::Array(problems) => {
            for problem in problems {
                let resource = problem["resource"].as_str().unwrap_or("");
                let path = problem["path"].as_str().unwrap_or("");
                let message = problem["message"].as_str().unwrap_or("");
                lines.push(if path.is_empty() {
                    format!("{resource}: {message}")
                } else {
                    format!("{resource}: {path}: {message}")
                });
            }
            lines.push(format!(
                "error: {status}: the server refused {} problem(s)",
                problems.len()
            ));
        }
        Value::Object(object) => {
            let message = object
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| body.to_string(), ToOwned::to_owned);
            let mut line = format!("error: {status}: {message}");
            if let Some(current) = object.get("current_revision").and_then(Value::as_u64) {
                if !message.contains(&format!("current revision is {current}")) {
                    line.push_str(&format!(" (the current revision is {current})"));
                }
                line.push_str("; re-read and retry");
            }
            lines.push(line);
        }
        Value::Null => lines.push(format!("error: {status}")),
        other => lines.push(format!(
            "error: {status}: {}",
            other
                .as_str()
                .map_or_else(|| other.to_string(), ToOwned::to_owned)
        )),
    }
    lines
}

fn key_of(document: &Value) -> Option<(Kind, String)> {
    let kind = document["kind"].as_str()?.parse().ok()?;
    Some((kind, document["name"].as_str()?.to_owned()))
}

async fn apply(
    client: &Client,
    resources: &[Resource],
    dry_run: bool,
    if_match: Option<u64>,
) -> Outcome {
    let body = serde_json::to_vec(resources)
        .map_err(|e| Failure::Usage(format!("cannot encode the bundle: {e}")))?;
    let path = if dry_run {
        "/api/v1/apply?dry_run=true"
    } else {
        "/api/v1/apply"
    };
    let answer = client
        .call(Method::POST, path, if_match, Some(body.into()))
        .await?;
    if !dry_run {
        if answer["changed"].as_bool() == Some(false) {
            println!("unchanged: revision {}", answer["revision"]);
        } else {
            println!(
                "applied {} resource(s): revision {} (checksum {})",
                resources.len(),
                answer["revision"],
                answer["checksum"].as_str().unwrap_or("?")
            );
        }
        return Ok(());
    }
    print_diff(client, &answer).await
}

/// Prints a dry run's diff: created (+), changed (~, with a line diff) and deleted (-) resources.
async fn print_diff(client: &Client, answer: &Value) -> Outcome {
    let diff = &answer["diff"];
    let empty = Vec::new();
    let upserts = diff["upserts"].as_array().unwrap_or(&empty);
    let deletes = diff["deletes"].as_array().unwrap_or(&empty);
    let (mut created, mut changed) = (0, 0);
    for upsert in upserts {
        let Some((kind, name)) = key_of(upsert) else {
            continue;
        };
        let new = to_yaml(upsert)?;
        let path = format!("/api/v1/{}/{}", kind.slug(), segment(&name));
        match client.call_status(Method::GET, &path, None, None).await? {
            (StatusCode::NOT_FOUND, _) => {
                created += 1;
                println!("+ {}/{name}", kind.slug());
                for line in new.lines() {
                    println!("    + {line}");
                }
            }
            (status, current) if status.is_success() => {
                changed += 1;
                println!("~ {}/{name}", kind.slug());
                for line in line_diff(&to_yaml(&current)?, &new) {
                    println!("{line}");
                }
            }
            (status, body) => return Err(Failure::Refused(error_lines(status, &body))),
        }
    }
    for delete in deletes {
        if let Some((kind, name)) = key_of(delete) {
            println!("- {}/{name}", kind.slug());
        }
    }
    if upserts.is_empty() && deletes.is_empty() {
        println!("no changes (revision {})", answer["revision"]);
    } else {
        println!(
            "dry run against revision {}: {created} to create, {changed} to change, {} to delete; nothing committed",
            answer["revision"],
            deletes.len()
        );
    }
    Ok(())
}

/// A resource document as YAML. Written from the JSON form (enums as maps rather than YAML
/// tags), which is what bundles hold, so that the output re-parses as a bundle.
fn to_yaml(document: &Value) -> Outcome<String> {
    serde_yaml_ng::to_string(document)
        .map_err(|e| Failure::Usage(format!("cannot print YAML: {e}")))
}

/// A line diff of `old` and `new` (longest common subsequence), indented, with `-`/`+` marks.
fn line_diff(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(format!("      {}", a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("    - {}", a[i]));
            i += 1;
        } else {
            out.push(format!("    + {}", b[j]));
            j += 1;
        }
    }
    with_context(out, DIFF_CONTEXT)
}

/// Lines of unchanged context kept around each change in a line diff.
const DIFF_CONTEXT: usize = 3;

/// Keeps changed lines and `context` lines around them; `...` marks what was left out.
fn with_context(lines: Vec<String>, context: usize) -> Vec<String> {
    let changed: Vec<bool> = lines
        .iter()
        .map(|l| l.starts_with("    -") || l.starts_with("    +"))
        .collect();
    let keep = |index: usize| {
        let from = index.saturating_sub(context);
        let to = (index + context + 1).min(lines.len());
        changed[from..to].iter().any(|c| *c)
    };
    let mut out = Vec::new();
    let mut skipped = false;
    for (index, line) in lines.iter().enumerate() {
        if keep(index) {
            if skipped {
                out.push("      ...".to_owned());
            }
            skipped = false;
            out.push(line.clone());
        } else {
            skipped = true;
        }
    }
    if skipped {
        out.push("      ...".to_owned());
    }
    out
}

async fn get(
    client: &Client,
    kind: Kind,
    name: Option<&str>,
    output: Output,
    query: &str,
) -> Outcome {
    let (items, single) = match name {
        Some(name) => {
            let path = format!("/api/v1/{}/{}{query}", kind.slug(), segment(name));
            (
                vec![client.call(Method::GET, &path, None, None).await?],
                true,
            )
        }
        None => {
            let path = format!("/api/v1/{}{query}", kind.slug());
            let mut listing = client.call(Method::GET, &path, None, None).await?;
            match listing["items"].take() {
                Value::Array(items) => (items, false),
                _ => (Vec::new(), false),
            }
        }
    };
    match output {
        Output::Json => {
            let value = match (single, items.first()) {
                (true, Some(item)) => item.clone(),
                _ => Value::Array(items),
            };
            let text = serde_json::to_string_pretty(&value)
                .map_err(|e| Failure::Usage(format!("cannot print JSON: {e}")))?;
            println!("{text}");
        }
        Output::Yaml => {
            let documents = items.iter().map(to_yaml).collect::<Outcome<Vec<_>>>()?;
            print!("{}", documents.join("---\n"));
        }
        Output::Table => {
            let rows = items
                .iter()
                .map(|item| {
                    let labels = item["labels"]
                        .as_object()
                        .map(|labels| {
                            labels
                                .iter()
                                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "-".to_owned());
                    vec![
                        item["kind"].as_str().unwrap_or("?").to_owned(),
                        item["name"].as_str().unwrap_or("?").to_owned(),
                        labels,
                        if item.get("placement").is_some() {
                            "selected agents".to_owned()
                        } else {
                            "all agents".to_owned()
                        },
                    ]
                })
                .collect();
            print!("{}", table(&["KIND", "NAME", "LABELS", "PLACEMENT"], rows));
        }
    }
    Ok(())
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row = header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(cell);
            for _ in cell.chars().count()..*width + 2 {
                line.push(' ');
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn format_time(ms: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms))
}

async fn history(client: &Client, limit: usize) -> Outcome {
    let path = format!("/api/v1/revisions?limit={limit}");
    let answer = client.call(Method::GET, &path, None, None).await?;
    let empty = Vec::new();
    let rows = answer["items"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|change_set| {
            let replaced: Vec<(Kind, String)> = change_set["replaced"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .filter_map(key_of)
                .collect();
            let mut changes = Vec::new();
            if let Some(to) = change_set["rollback_to"].as_u64() {
                changes.push(format!("rollback to {to}:"));
            }
            for upsert in change_set["delta"]["upserts"].as_array().unwrap_or(&empty) {
                if let Some(key) = key_of(upsert) {
                    let mark = if replaced.contains(&key) { '~' } else { '+' };
                    changes.push(format!("{mark}{}/{}", key.0.slug(), key.1));
                }
            }
            for delete in change_set["delta"]["deletes"].as_array().unwrap_or(&empty) {
                if let Some((kind, name)) = key_of(delete) {
                    changes.push(format!("-{}/{name}", kind.slug()));
                }
            }
            vec![
                change_set["revision"].to_string(),
                change_set["time_ms"]
                    .as_u64()
                    .map_or_else(|| "?".to_owned(), format_time),
                change_set["author"].as_str().unwrap_or("?").to_owned(),
                changes.join(" "),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["REVISION", "TIME", "AUTHOR", "CHANGES"], rows)
    );
    Ok(())
}

async fn cluster_status(client: &Client) -> Outcome {
    let status = client
        .call(Method::GET, "/api/v1/cluster", None, None)
        .await?;
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let fields = [
        ("node", "node_id"),
        ("state", "state"),
        ("leader", "leader"),
        ("term", "term"),
        ("applied index", "applied_index"),
        ("revision", "revision"),
        ("checksum", "checksum"),
    ];
    let rows = fields
        .iter()
        .map(|(label, field)| vec![format!("{label}:"), text(&status[*field])])
        .collect();
    print!("{}", table(&["NODE STATUS", ""], rows));
    let voters: Vec<u64> = status["voters"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let leader = status["leader"].as_u64();
    let rows = status["members"]
        .as_object()
        .map(|members| {
            members
                .iter()
                .map(|(id, node)| {
                    let numeric = id.parse::<u64>().ok();
                    let role = if numeric.is_some() && numeric == leader {
                        "leader"
                    } else if numeric.is_some_and(|n| voters.contains(&n)) {
                        "voter"
                    } else {
                        "learner"
                    };
                    vec![
                        id.clone(),
                        role.to_owned(),
                        text(&node["api_addr"]),
                        text(&node["raft_addr"]),
                        text(&node["sync_addr"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    println!();
    print!("{}", table(&["ID", "ROLE", "API", "RAFT", "SYNC"], rows));
    Ok(())
}

async fn token(client: &Client, command: TokenCommand) -> Outcome {
    match command {
        TokenCommand::Create {
            agent: true,
            ttl,
            max_uses,
            ..
        } => {
            let ttl: fleetgate_shared::Duration = ttl
                .parse()
                .map_err(|e| Failure::Usage(format!("--ttl {ttl}: {e}")))?;
            let body =
                json!({ "ttl_secs": ttl.as_millis() / 1000, "max_uses": max_uses }).to_string();
            let answer = client
                .call(Method::POST, "/api/v1/join-tokens", None, Some(body.into()))
                .await?;
            let uses = match max_uses {
                0 => "any number of agents".to_owned(),
                1 => "one agent".to_owned(),
                n => format!("{n} agents"),
            };
            eprintln!(
                "created join token {} for {uses}, valid until {}; it is shown this once:",
                answer["id"].as_str().unwrap_or("?"),
                answer["expires_ms"]
                    .as_u64()
                    .map_or_else(|| "?".to_owned(), format_time)
            );
            println!("{}", answer["token"].as_str().unwrap_or(""));
        }
        TokenCommand::Create { name, role, .. } => {
            let (Some(name), Some(role)) = (name, role) else {
                return Err(Failure::Usage(
                    "an API token needs a NAME and --role (or --agent for a join token)".to_owned(),
                ));
            };
            let body = json!({ "name": name, "role": role.as_str() }).to_string();
            let answer = client
                .call(Method::POST, "/api/v1/tokens", None, Some(body.into()))
                .await?;
            eprintln!(
                "created token {name} ({}); its secret is shown this once:",
                role.as_str()
            );
            println!("{}", answer["token"].as_str().unwrap_or(""));
        }
        TokenCommand::List => {
            let answer = client
                .call(Method::GET, "/api/v1/tokens", None, None)
                .await?;
            let empty = Vec::new();
            let rows = answer["items"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|t| {
                    vec![
                        t["name"].as_str().unwrap_or("?").to_owned(),
                        t["role"].as_str().unwrap_or("?").to_owned(),
                        t["created_by"].as_str().unwrap_or("-").to_owned(),
                        t["created_ms"]
                            .as_u64()
                            .map_or_else(|| "?".to_owned(), format_time),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["NAME", "ROLE", "CREATED BY", "CREATED"], rows)
            );
        }
        TokenCommand::Revoke { name } => {
            let path = format!("/api/v1/tokens/{}", segment(&name));
            client.call(Method::DELETE, &path, None, None).await?;
            println!("revoked token {name}");
        }
    }
    Ok(())
}

/// How long ago `ms` was, for people: `4s`, `12m`, `3h`, `2d`.
fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

async fn agents(client: &Client, revision: Option<u64>, output: Output) -> Outcome {
    let path = match revision {
        Some(revision) => format!("/api/v1/agents?revision={revision}"),
        None => "/api/v1/agents".to_owned(),
    };
    let answer = client.call(Method::GET, &path, None, None).await?;
    match output {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&answer).unwrap_or_default()
            );
            return Ok(());
        }
        Output::Yaml => {
            print!("{}", to_yaml(&answer)?);
            return Ok(());
        }
        Output::Table => {}
    }
    let empty = Vec::new();
    let rows = answer["agents"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|a| {
            let live = &a["live"];
            let labels = a["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let state = if !a["revoked_ms"].is_null() {
                "revoked".to_owned()
            } else if live["connected"].as_bool() == Some(true) {
                format!("connected to {}", live["node_id"])
            } else if let Some(seen) = live["last_seen_ms"].as_u64() {
                format!("seen {} ago", ago(seen))
            } else {
                "not seen".to_owned()
            };
            let nack = live["last_nack"]["revision"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |r| format!("rev {r}"));
            vec![
                a["id"].as_str().unwrap_or("?").to_owned(),
                a["name"].as_str().unwrap_or("?").to_owned(),
                labels,
                state,
                live["applied_revision"]
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), |r| r.to_string()),
                nack,
                a["cert_not_after_ms"]
                    .as_u64()
                    .map_or_else(|| "?".to_owned(), format_time),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "NAME",
                "LABELS",
                "STATE",
                "REVISION",
                "LAST NACK",
                "CERT EXPIRES"
            ],
            rows
        )
    );
    let r = &answer["rollout"];
    println!(
        "revision {}: applied on {} of {} connected agents ({} rejected, {} pending)",
        r["revision"], r["applied"], r["selected"], r["failed"], r["pending"]
    );
    for agent in answer["agents"].as_array().unwrap_or(&empty) {
        if let Some(errors) = agent["live"]["last_nack"]["errors"].as_array() {
            for e in errors {
                println!(
                    "  {} rejected revision {}: {}: {}: {}",
                    agent["id"].as_str().unwrap_or("?"),
                    agent["live"]["last_nack"]["revision"],
                    e["resource"].as_str().unwrap_or(""),
                    e["path"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                );
            }
        }
    }
    if let Some(nodes) = answer["unreachable_nodes"]
        .as_array()
        .filter(|n| !n.is_empty())
    {
        eprintln!("warning: nodes {nodes:?} did not answer; their agents may show as not seen");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_problems_print_one_per_line_as_kind_name_path_message() {
        let body = json!([
            {"resource": "route/api", "path": "spec.forward.backends[0].service", "message": "no service/x"},
            {"resource": "policy/p", "path": "", "message": "unused"},
        ]);
        let lines = error_lines(StatusCode::BAD_REQUEST, &body);
        assert_eq!(
            lines[0],
            "route/api: spec.forward.backends[0].service: no service/x"
        );
        assert_eq!(lines[1], "policy/p: unused");
        assert!(lines[2].contains("400"));
    }

    #[test]
    fn a_conflict_names_the_current_revision() {
        let body =
            json!({"error": "conflict", "message": "expected revision 1", "current_revision": 7});
        let lines = error_lines(StatusCode::CONFLICT, &body);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("409") && lines[0].contains("current revision is 7"));
    }

    #[test]
    fn servers_are_https_urls_with_a_port() {
        assert_eq!(
            normalize_server("https://h:1/").ok(),
            Some("https://h:1".to_owned())
        );
        assert_eq!(
            normalize_server("127.0.0.1:8001").ok(),
            Some("https://127.0.0.1:8001".to_owned())
        );
        assert!(normalize_server("http://h:1").is_err());
        assert!(normalize_server("https://h").is_err());
    }

    #[test]
    fn line_diff_marks_removed_then_added_lines_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\ne\nf\nG\nh\n";
        let diff = line_diff(old, new);
        assert_eq!(
            diff,
            [
                "      ...",
                "      d",
                "      e",
                "      f",
                "    - g",
                "    + G",
                "      h"
            ]
        );
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("api-v2.x_y~"), "api-v2.x_y~");
        assert_eq!(segment("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn tables_align_columns() {
        let text = table(&["A", "B"], vec![vec!["long-name".into(), "x".into()]]);
        assert_eq!(text, "A          B\nlong-name  x\n");
    }
}
