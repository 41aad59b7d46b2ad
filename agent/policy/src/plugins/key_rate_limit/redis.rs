//! A minimal Redis client for the cluster-wide rate limit: RESP2 over a tokio `TcpStream`,
//! a small pool of connections, `AUTH` / `SELECT` from the URL, and `EVALSHA` with a fall
//! back to `EVAL` when the server does not have the script cached.
//!
//! Written here rather than taken from the `redis` crate because the limiter needs exactly one
//! command shape and full control of what a call may cost: every call (waiting for a pooled
//! connection, dialling, `AUTH`, the script) runs under one deadline, and a connection whose
//! call timed out is dropped, never reused with a reply still in flight. The reply parser is a
//! pure function over bytes, with limits, so a misbehaving server cannot make it allocate
//! without bound or panic.

use crate::plugins::credentials::percent_decode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};

/// Connections one client opens at most. Each call holds one for a round trip of well under a
/// millisecond, so 16 carry tens of thousands of calls a second; requests beyond that wait for
/// a free one within their timeout.
const MAX_CONNECTIONS: usize = 16;

/// Largest reply accepted (the limiter's replies are a few dozen bytes; error messages a few
/// hundred). A larger one means the peer is not the Redis we expect.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Deepest array nesting accepted in a reply.
const MAX_DEPTH: usize = 4;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("Redis answered with an error: {0}")]
    Server(String),
}

/// Why a Redis URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error(
        "`rediss://` (TLS) is not supported by this agent build; use redis:// to a Redis or a local TLS-terminating proxy"
    )]
    Tls,
    #[error("`{0}` is not a redis:// URL")]
    Scheme(String),
    #[error("the database in `{0}` is not a number")]
    Database(String),
    #[error("the port in `{0}` is not a number")]
    Port(String),
    #[error("no host in `{0}`")]
    Host(String),
}

/// Where and how to connect: `redis://[[user]:password@]host[:port][/db]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl std::fmt::Debug for Target {
    // The password never reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl Target {
    const DEFAULT_PORT: u16 = 6379;

    pub fn parse(url: &str) -> Result<Target, UrlError> {
        if url.starts_with("rediss://") {
            return Err(UrlError::Tls);
        }
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| UrlError::Scheme(url.to_owned()))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (
                    Some(percent_decode(user).into_owned()).filter(|u| !u.is_empty()),
                    Some(percent_decode(pass).into_owned()),
                ),
                // A lone userinfo is a password, as in `redis://secret@host`.
                None => (None, Some(percent_decode(info).into_owned())),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::Host(url.to_owned()))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::Host(url.to_owned()));
        }
        let port = match port {
            None | Some("") => Self::DEFAULT_PORT,
            Some(p) => p.parse().map_err(|_| UrlError::Port(url.to_owned()))?,
        };
        let db_text = path.split(['?', '#']).next().unwrap_or_default();
        let db = match db_text {
            "" => 0,
            d => d.parse().map_err(|_| UrlError::Database(url.to_owned()))?,
        };
        Ok(Target {
            host: host.to_owned(),
            port,
            username,
            password,
            db,
        })
    }

    /// `redis://host:port/db`, without credentials, for logs.
    pub fn display(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("redis://{host}:{}/{}", self.port, self.db)
    }
}

// ---------------------------------------------------------------------------------------------
// RESP2
// ---------------------------------------------------------------------------------------------

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RedisError> {
    parse_at(buf, 0, 0)
}

fn protocol(what: &str) -> RedisError {
    RedisError::Protocol(what.to_owned())
}

fn line(buf: &[u8], start: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(start..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], start + end + 2))
}

fn number(text: &[u8]) -> Result<i64, RedisError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol("a length or integer is not a number"))
}

fn parse_at(buf: &[u8], start: usize, depth: usize) -> Result<Option<(Reply, usize)>, RedisError> {
    if depth > MAX_DEPTH {
        return Err(protocol("reply nested too deep"));
    }
    let Some(&kind) = buf.get(start) else {
        return Ok(None);
    };
    let Some((text, after)) = line(buf, start + 1) else {
        return Ok(None);
    };
    let text_string = || String::from_utf8_lossy(text).into_owned();
    let reply = match kind {
        b'+' => (Reply::Status(text_string()), after),
        b'-' => (Reply::Error(text_string()), after),
        b':' => (Reply::Integer(number(text)?), after),
        b'$' => {
            let len = number(text)?;
            if len < 0 {
                (Reply::Bulk(None), after)
            } else {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > MAX_REPLY_BYTES {
                    return Err(protocol("bulk string too large"));
                }
                let end = after + len;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(protocol("bulk string not terminated by CRLF"));
                }
                (Reply::Bulk(Some(buf[after..end].to_vec())), end + 2)
            }
        }
        b'*' => {
            let len = number(text)?;
            if len < 0 {
                (Reply::Array(None), after)
            } else {
                // Every element takes at least 3 bytes, so a count above that is a lie.
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > MAX_REPLY_BYTES / 3 {
                    return Err(protocol("array too long"));
                }
                let mut items = Vec::with_capacity(len);
                let mut at = after;
                for _ in 0..len {
                    match parse_at(buf, at, depth + 1)? {
                        Some((item, next)) => {
                            items.push(item);
                            at = next;
                        }
                        None => return Ok(None),
                    }
                }
                (Reply::Array(Some(items)), at)
            }
        }
        _ => return Err(protocol("unknown reply type")),
    };
    Ok(Some(reply))
}

/// One connection: the socket and what has been read of the next reply.
#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    async fn open(target: &Target) -> Result<Connection, RedisError> {
        let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            stream,
            buf: Vec::with_capacity(256),
        };
        if let Some(password) = &target.password {
            let reply = match &target.username {
                Some(user) => {
                    conn.call(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                        .await?
                }
                None => conn.call(&[b"AUTH", password.as_bytes()]).await?,
            };
            expect_ok(reply, "AUTH")?;
        }
        if target.db != 0 {
            let db = target.db.to_string();
            let reply = conn.call(&[b"SELECT", db.as_bytes()]).await?;
            expect_ok(reply, "SELECT")?;
        }
        Ok(conn)
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        self.stream.write_all(&encode(args)).await?;
        loop {
            if let Some((reply, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            if self.buf.len() > MAX_REPLY_BYTES {
                return Err(protocol("reply too large"));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

fn expect_ok(reply: Reply, what: &str) -> Result<(), RedisError> {
    match reply {
        Reply::Status(s) if s == "OK" => Ok(()),
        Reply::Error(e) => Err(RedisError::Server(format!("{what}: {e}"))),
        other => Err(RedisError::Protocol(format!("{what} answered {other:?}"))),
    }
}

/// A Lua script and its SHA-1, the name `EVALSHA` knows it by.
#[derive(Debug)]
pub struct Script {
    source: &'static str,
    sha1: String,
}

impl Script {
    pub fn new(source: &'static str) -> Self {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            source.as_bytes(),
        );
        Self {
            source,
            sha1: hex::encode(digest.as_ref()),
        }
    }
}

/// A pooled client for one Redis; every call is bounded by `timeout`.
#[derive(Debug)]
pub struct Client {
    target: Target,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    slots: Semaphore,
}

impl Client {
    pub fn new(target: Target, timeout: Duration) -> Self {
        Self {
            target,
            timeout,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(MAX_CONNECTIONS),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Runs `script` on one key with integer arguments, within the timeout.
    pub async fn eval(
        &self,
        script: &Script,
        key: &[u8],
        args: &[u64],
    ) -> Result<Reply, RedisError> {
        match tokio::time::timeout(self.timeout, self.eval_unbounded(script, key, args)).await {
            Ok(result) => result,
            // Dropping the call's future dropped its connection with it: no reply is left in
            // flight on a pooled connection.
            Err(_) => Err(RedisError::Timeout(self.timeout)),
        }
    }

    async fn eval_unbounded(
        &self,
        script: &Script,
        key: &[u8],
        args: &[u64],
    ) -> Result<Reply, RedisError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| protocol("client closed"))?;
        let pooled = self.idle.lock().await.pop();
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => Connection::open(&self.target).await?,
        };
        let args: Vec<String> = args.iter().map(u64::to_string).collect();
        let result = match Self::run(&mut conn, script, key, &args).await {
            // A pooled connection the server closed meanwhile (a restart, an idle timeout):
            // the others in the pool are likely dead too. Drop them and try once on a new one.
            Err(RedisError::Io(_)) if reused => {
                self.idle.lock().await.clear();
                conn = Connection::open(&self.target).await?;
                Self::run(&mut conn, script, key, &args).await
            }
            other => other,
        };
        if result.is_ok() {
            let mut idle = self.idle.lock().await;
            if idle.len() < MAX_CONNECTIONS {
                idle.push(conn);
            }
        }
        result
    }

    async fn run(
        conn: &mut Connection,
        script: &Script,
        key: &[u8],
        args: &[String],
    ) -> Result<Reply, RedisError> {
        let mut command: Vec<&[u8]> = vec![b"EVALSHA", script.sha1.as_bytes(), b"1", key];
        command.extend(args.iter().map(|a| a.as_bytes()));
        let reply = conn.call(&command).await?;
        let reply = match reply {
            Reply::Error(e) if e.starts_with("NOSCRIPT") => {
                command[0] = b"EVAL";
                command[1] = script.source.as_bytes();
                conn.call(&command).await?
            }
            other => other,
        };
        match reply {
            Reply::Error(e) => Err(RedisError::Server(e)),
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_credentials_and_database() {
        let t = Target::parse("redis://:s%40cret@cache.internal:6380/2").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.username.as_deref(),
                t.password.as_deref(),
                t.db
            ),
            ("cache.internal", 6380, None, Some("s@cret"), 2)
        );
        assert_eq!(t.display(), "redis://cache.internal:6380/2");
        assert!(!format!("{t:?}").contains("cret"), "no password in logs");
        let t = Target::parse("redis://limiter:pw@[::1]").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.username.as_deref(), t.db),
            ("::1", 6379, Some("limiter"), 0)
        );
        assert_eq!(Target::parse("rediss://h"), Err(UrlError::Tls));
        assert!(Target::parse("redis://h:port").is_err());
        assert!(Target::parse("redis://h/x").is_err());
        assert!(Target::parse("redis://").is_err());
        assert!(Target::parse("http://h").is_err());
    }

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        let whole = b"*4\r\n:1\r\n:-2\r\n$3\r\nabc\r\n$-1\r\n+OK\r\n";
        let (reply, used) = parse(whole).unwrap().unwrap();
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Integer(1),
                Reply::Integer(-2),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Bulk(None),
            ]))
        );
        assert_eq!(&whole[used..], b"+OK\r\n");
        for cut in 0..used {
            assert!(parse(&whole[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert_eq!(
            parse(b"-NOSCRIPT No matching script\r\n")
                .unwrap()
                .unwrap()
                .0,
            Reply::Error("NOSCRIPT No matching script".into())
        );
    }

    #[test]
    fn hostile_replies_are_errors_not_allocations_or_panics() {
        assert!(parse(b"$99999999999\r\n").is_err());
        assert!(parse(b"*99999999999\r\n").is_err());
        assert!(parse(b"$-7x\r\n").is_err());
        assert!(parse(b"$3\r\nabcXY").is_err());
        assert!(parse(b"?\r\n").is_err());
        assert!(parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
        assert_eq!(
            encode(&[b"GET", b"k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }
}
