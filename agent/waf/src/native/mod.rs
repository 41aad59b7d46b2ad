//! A native evaluator of ModSecurity rule sets, written to give exactly libmodsecurity 3.0.9's
//! verdicts for the requests it accepts, at a fraction of the cost.
//!
//! Why it exists: libmodsecurity spends ~300 µs of CPU on one benign `GET` with the OWASP CRS at
//! paranoia level 1, mostly in allocation (a C++ string and a rule message per rule evaluated),
//! which caps a WAF-on agent at a few percent of its WAF-off throughput (docs/benchmarks.md,
//! "WAF: where libmodsecurity's time goes"). This engine parses the same rule text into plain
//! Rust structures once, evaluates requests without per-rule allocation where it can, and uses
//! the same PCRE2 and the same libinjection (exported by libmodsecurity itself) so that patterns
//! and detectors behave identically. "The same PCRE2" holds when the system's development files
//! are installed (Debian `libpcre2-dev`, which `.ci/run` installs): pcre2-sys then links the
//! system library libmodsecurity uses; without them it builds a bundled, newer PCRE2 whose JIT
//! stack runs out at other input sizes. Where libmodsecurity deviates from the textbook, this
//! follows libmodsecurity: its `@pm` matcher misses some occurrences (see `operator::Acmp`), and
//! a pattern that exhausts the JIT stack is re-run by PCRE2's interpreter.
//!
//! Messages (`msg` after macro expansion) are not always byte-equal to libmodsecurity's:
//! `MATCHED_VAR_NAME` of a `TX` variable is lower-case here, members of `TX:/regex/` come in
//! another order (only the last one shows in a message), and non-printable bytes are not
//! escaped. Rule ids and interventions are equal.
//!
//! What it does not model it does not guess: [`Engine::evaluate`] returns [`Unsupported`] for a
//! request that needs a multipart or XML body parser, `@rbl`, `@geoLookup`, `drop` or
//! `redirect`, and the caller evaluates that request with
//! libmodsecurity instead. A rule text using a directive, variable, operator, transformation or
//! action it does not know does not load at all (a load error names it and its line).
//!
//! Equivalence with libmodsecurity is tested differentially (`tests/native_vs_libmodsecurity.rs`):
//! the same rule text, the same requests, the same rule ids and interventions.

mod eval;
mod operator;
mod parse;
mod request;
mod transform;

use crate::{LoadError, Outcome, Request};

/// A request the native engine hands back: what it would need to evaluate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported(pub &'static str);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the native WAF engine does not evaluate {}", self.0)
    }
}

/// A rule set parsed for native evaluation. `Send + Sync`; evaluation takes `&self`.
#[derive(Debug)]
pub struct Engine {
    config: parse::Config,
    /// The `ip` and `global` collections, kept across requests as libmodsecurity keeps them.
    store: eval::Persistent,
}

impl Engine {
    /// Parses `text` (ModSecurity's configuration language; `Include` reads files and expands a
    /// `*` in the file name). libmodsecurity must be installed: its libinjection serves
    /// `@detectSQLi` and `@detectXSS`.
    pub fn load(text: &str) -> Result<Engine, LoadError> {
        crate::engine::ensure_loaded()?;
        let mut config = parse::Config::parse(text).map_err(|e| LoadError::Rules(e.0))?;
        eval::narrow_counts(&mut config);
        config.folds = eval::fold::fold(&config);
        Ok(Engine {
            config,
            store: eval::Persistent::default(),
        })
    }

    /// The same rule set without the rules folded at load (see `eval::fold`): every rule is
    /// evaluated per request. For tests and measurements that compare the two.
    #[doc(hidden)]
    pub fn load_unfolded(text: &str) -> Result<Engine, LoadError> {
        let mut engine = Engine::load(text)?;
        engine.config.folds = Default::default();
        Ok(engine)
    }

    /// How many rules were folded: evaluated at load, their outcome replayed per request.
    pub fn folded_rules(&self) -> usize {
        self.config.folds.folded_rules()
    }

    /// How many rules (chains count once) the text defined, in any phase.
    pub fn rule_count(&self) -> usize {
        self.config.rule_count
    }

    /// Evaluates one request: the same [`Outcome`] libmodsecurity gives, or [`Unsupported`].
    pub fn evaluate(&self, request: &Request<'_>) -> Result<Outcome, Unsupported> {
        eval::evaluate(&self.config, &self.store, request)
    }
}
