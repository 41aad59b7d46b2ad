//! Fleetgate's binding to libmodsecurity3, the ModSecurity engine, through its C API.
//!
//! [`Engine::load`] parses a rule set once (ModSecurity's configuration language; `Include`
//! pulls in files such as the OWASP CRS); [`Engine::evaluate`] runs one request through it and
//! reports what matched and whether a rule intervened. An `Engine` is `Send + Sync`: one rule
//! set serves every thread, each evaluation has its own transaction.
//!
//! This crate owns every `unsafe` block of the workspace: `engine.rs` (libmodsecurity) and
//! `pcre.rs` (PCRE2, for the native engine). It knows nothing
//! of HTTP libraries, async runtimes or the CRS: the policy crate builds the rule text, decides
//! what a match means, and keeps evaluation off the async runtime (it is CPU work of hundreds
//! of microseconds per request).
//!
//! Evaluation is synchronous and CPU-bound; call it from a blocking thread.

pub mod crs;
#[allow(unsafe_code)]
mod engine;
pub mod native;
#[allow(unsafe_code)]
mod pcre;

use std::net::SocketAddr;

pub use engine::Engine;

/// Appends an address as `Display` writes it; an IPv4 address without the formatting
/// machinery, which costs a few thousand instructions per request. Serves the native engine's
/// `REMOTE_ADDR` and the agent's `X-Forwarded-For`.
pub fn push_address(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Most rule matches one evaluation records. The CRS logs a handful per attack; the bound keeps
/// a hostile request from growing the list without limit.
pub const MAX_MATCHES: usize = 64;

/// One request as ModSecurity sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// A transaction id for ModSecurity's logs (`UNIQUE_ID`). Giving one also spares the
    /// library its own id generator, which seeds a random device per transaction.
    pub id: &'a str,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub method: &'a str,
    /// The request target as the client sent it (path and query, not normalised).
    pub uri: &'a str,
    /// `1.0`, `1.1` or `2.0`.
    pub http_version: &'a str,
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// What was read of the body; the rule set's `SecRequestBodyLimit` decides how much of it is
    /// inspected.
    pub body: &'a [u8],
}

/// What a rule reported, parsed from ModSecurity's log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleMatch {
    /// The rule's `id`, if it has one.
    pub id: Option<u32>,
    /// The rule's `msg`, if it has one.
    pub message: Option<String>,
}

impl RuleMatch {
    /// Parses the `[id "…"]` and `[msg "…"]` fields of a ModSecurity log line.
    pub fn parse(line: &str) -> RuleMatch {
        RuleMatch {
            id: field(line, "id").and_then(|id| id.parse().ok()),
            message: field(line, "msg").map(str::to_owned),
        }
    }
}

/// The value of `[name "value"]` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("[{name} \"");
    let start = line.find(&open)? + open.len();
    let rest = &line[start..];
    let end = rest.find("\"]")?;
    Some(&rest[..end])
}

/// A rule's disruptive action: what ModSecurity asks the server to do instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intervention {
    /// The HTTP status the rule set asks for (403 for the CRS).
    pub status: u16,
    /// The rule that intervened (for the CRS, the anomaly-score evaluation rule).
    pub rule: RuleMatch,
    /// A redirect target, for `redirect` actions.
    pub redirect: Option<String>,
}

/// The result of one evaluation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Set when a rule's disruptive action fired (only with `SecRuleEngine On`).
    pub intervention: Option<Intervention>,
    /// Every logged rule match, in the order they fired, up to [`MAX_MATCHES`].
    pub matches: Vec<RuleMatch>,
}

impl Outcome {
    /// Ids of every rule that matched and then of the one that intervened, each once, in order.
    pub fn rule_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::new();
        let intervened = self.intervention.as_ref().map(|i| &i.rule);
        for id in self.matches.iter().chain(intervened).filter_map(|m| m.id) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}

/// Why a rule set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// libmodsecurity3 is not installed on this host (it is loaded at run time).
    #[error("{0}")]
    Unavailable(String),
    #[error("the rule text contains a NUL byte")]
    Nul,
    #[error("libmodsecurity could not allocate a rule set")]
    Allocation,
    /// The parser's message: a syntax error, an unreadable `Include`, a duplicate rule id.
    #[error("{0}")]
    Rules(String),
}

/// Why a request could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The method, target, version or id contains a NUL byte: C strings cannot carry it.
    #[error("the request's {0} contains a NUL byte")]
    Nul(&'static str),
    #[error("libmodsecurity could not allocate a transaction")]
    Allocation,
}

/// Reproducible randomness for the crate's tests, without a dependency.
#[cfg(test)]
pub(crate) mod test_rng {
    /// A xorshift64 generator.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A number below `n` (`n` > 0).
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// One of `choices` (not empty).
        pub(crate) fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
            choices[self.below(choices.len())]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "192.0.2.10",
            "192.168.100.255",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.1.2.3",
        ] {
            let parsed: std::net::IpAddr = ip.parse().expect("an address");
            let mut out = Vec::new();
            push_address(&mut out, parsed);
            assert_eq!(out, ip.as_bytes());
        }
    }

    #[test]
    fn log_fields_are_parsed_and_absent_ones_are_none() {
        let line = r#"ModSecurity: Warning. detected SQLi using libinjection. [file "/x.conf"] [line "46"] [id "942100"] [rev ""] [msg "SQL Injection Attack Detected via libinjection"] [data "Matched Data"]"#;
        assert_eq!(
            RuleMatch::parse(line),
            RuleMatch {
                id: Some(942100),
                message: Some("SQL Injection Attack Detected via libinjection".into()),
            }
        );
        assert_eq!(RuleMatch::parse("no fields [id \"x"), RuleMatch::default());
        assert_eq!(RuleMatch::parse("[id \"12a\"]").id, None);
    }

    #[test]
    fn rule_ids_list_matches_then_the_intervening_rule_once_each() {
        let m = |id| RuleMatch {
            id: Some(id),
            message: None,
        };
        let outcome = Outcome {
            intervention: Some(Intervention {
                status: 403,
                rule: m(949110),
                redirect: None,
            }),
            matches: vec![m(942100), m(942190), m(942100), RuleMatch::default()],
        };
        assert_eq!(outcome.rule_ids(), vec![942100, 942190, 949110]);
    }
}
