//! Generated requests through both engines: for any request built from the pieces below (paths
//! and arguments with escapes, attack fragments and raw bytes, odd headers, form and JSON
//! bodies), the native engine reports libmodsecurity's rule ids and intervention, or hands the
//! request back, and never panics. Complements `native_vs_libmodsecurity.rs`'s fixed corpus;
//! proptest shrinks a difference to a small request and keeps its seed in
//! `proptest-regressions/`.
//!
//! Needs libmodsecurity3 and modsecurity-crs (installed by .ci/run).

use std::sync::LazyLock;

use fleetgate_agent_waf::{Engine, native};
use proptest::prelude::*;

mod support;
use support::{crs_text, engines, header_refs, request, summary};

/// Both engines on the agent's rule text at paranoia level 2 (more rules than level 1), loaded
/// once for every case.
static ENGINES: LazyLock<(Engine, native::Engine)> = LazyLock::new(|| engines(&crs_text(2)));

/// Pieces of values: benign words, encodings at their edges, and fragments of every CRS attack
/// class.
const PIECES: &[&str] = &[
    "a",
    "id",
    "42",
    "red+shoes",
    "%41",
    "%4",
    "%zz",
    "%00",
    "%u0041",
    "%u00",
    "%C0%AF",
    "%E2%82%AC",
    "%2e%2e%2f",
    "../",
    "..\\",
    "/etc/passwd",
    "etc/",
    "passwd",
    "'",
    "\"",
    "`",
    ";",
    "|",
    "&&",
    "$(",
    "${",
    "<",
    ">",
    "<script>",
    "javascript:",
    "onerror=",
    "alert(1)",
    "union",
    " select ",
    "from",
    "or 1=1",
    "--",
    "/*",
    "*/",
    "#",
    "sleep(",
    "benchmark(",
    "0x41",
    "char(",
    "<?php",
    "system(",
    "eval(",
    "base64_decode(",
    "java.lang.",
    "${jndi:",
    "__proto__",
    "constructor",
    "file://",
    "http://",
    "ftp://",
    "cmd.exe",
    "/bin/sh",
    "wget ",
    "&#x3c;",
    "&lt;",
    "\\x3c",
    "\\u003c",
    "=",
    "&",
    "+",
    " ",
    "\t",
    "é",
    "€",
    "\u{7f}",
];

fn value() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..5).prop_map(|p| p.concat())
}

/// What goes into a URI: `%`-encodes nothing, so the pieces' own escapes are what is sent;
/// spaces and other bytes a request line cannot carry become `+` or `%XX`.
fn uri_safe(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b' ' => out.push('+'),
            b'#' => out.push_str("%23"),
            0x21..=0x7e => out.push(char::from(b)),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn case() -> impl Strategy<Value = Case> {
    let path = prop::collection::vec(value(), 0..4);
    let args = prop::collection::vec((value(), value()), 0..5);
    let headers = prop::collection::vec(
        (
            prop::sample::select(
                &[
                    "User-Agent",
                    "Cookie",
                    "Referer",
                    "X-Forwarded-For",
                    "Accept",
                    "Content-Type",
                    "Range",
                    "X-Api-Key",
                ][..],
            ),
            value(),
        ),
        0..4,
    );
    let body = prop_oneof![
        Just(None),
        prop::collection::vec((value(), value()), 1..4).prop_map(|a| Some((false, a))),
        prop::collection::vec((value(), value()), 1..4).prop_map(|a| Some((true, a))),
    ];
    let method = prop::sample::select(&["GET", "POST", "PUT", "HEAD", "OPTIONS", "PROPFIND"][..]);
    (method, path, args, headers, body).prop_map(|(method, path, args, headers, body)| {
        let mut uri = String::from("/");
        uri.push_str(
            &path
                .iter()
                .map(|p| uri_safe(p))
                .collect::<Vec<_>>()
                .join("/"),
        );
        for (i, (k, v)) in args.iter().enumerate() {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(&uri_safe(k));
            uri.push('=');
            uri.push_str(&uri_safe(v));
        }
        let mut all = vec![
            ("Host".to_owned(), "shop.example.com".to_owned()),
            ("Accept".to_owned(), "*/*".to_owned()),
            ("User-Agent".to_owned(), "Mozilla/5.0".to_owned()),
        ];
        for (name, value) in headers {
            all.retain(|(n, _)| n != name);
            all.push((name.to_owned(), value));
        }
        let (method, body) = match body {
            None => (method, Vec::new()),
            Some((json, members)) => {
                all.retain(|(n, _)| n != "Content-Type");
                let body = if json {
                    all.push(("Content-Type".into(), "application/json".into()));
                    let fields: Vec<String> = members
                        .iter()
                        .map(|(k, v)| format!("{:?}:{:?}", k, v))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                } else {
                    all.push((
                        "Content-Type".into(),
                        "application/x-www-form-urlencoded".into(),
                    ));
                    members
                        .iter()
                        .map(|(k, v)| format!("{}={}", uri_safe(k), uri_safe(v)))
                        .collect::<Vec<_>>()
                        .join("&")
                };
                ("POST", body.into_bytes())
            }
        };
        Case {
            method,
            uri,
            headers: all,
            body,
        }
    })
}

proptest! {
    // 400 cases by default; `PROPTEST_CASES=100000` for a long differential run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(400),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_generated_request_gets_libmodsecurity_s_verdict_from_the_native_engine(case in case()) {
        let (reference, native) = &*ENGINES;
        let headers = header_refs(&case.headers);
        let request = request(case.method, &case.uri, "1.1", &headers, &case.body);
        let expected = reference.evaluate(&request).expect("libmodsecurity evaluates");
        // The generator makes no multipart or XML body, nothing the native engine hands back.
        let got = native.evaluate(&request);
        prop_assert!(got.is_ok(), "handed back: {:?} for {:?}", got, case);
        if let Ok(got) = got {
            prop_assert_eq!(summary(&got), summary(&expected), "{:?}", case);
        }
    }
}
