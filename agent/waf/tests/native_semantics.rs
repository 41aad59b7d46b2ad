//! Corners of libmodsecurity's evaluation the CRS hardly exercises, each a small rule set run
//! through both engines: the native engine must report the same rule ids and intervention.
//! (From a review of the native engine against libmodsecurity 3.0.9's source.)
//!
//! Needs libmodsecurity3 (installed by .ci/run).

use fleetgate_agent_waf::{Request, native};

mod support;
use support::{Summary, engines, request, summary};

fn get<'a>(uri: &'a str, headers: &'a [(&'a [u8], &'a [u8])]) -> Request<'a> {
    request("GET", uri, "1.1", headers, b"")
}

/// Runs `requests` through both engines loaded with `rules`, in order (state such as the `ip`
/// collection carries over), and returns the common outcomes; panics on a difference.
fn both(rules: &str, requests: &[Request<'_>]) -> Vec<Summary> {
    let (reference, native) = engines(rules);
    requests
        .iter()
        .map(|request| {
            let expected = summary(
                &reference
                    .evaluate(request)
                    .expect("libmodsecurity evaluates"),
            );
            let got = summary(
                &native
                    .evaluate(request)
                    .expect("the native engine evaluates"),
            );
            assert_eq!(
                got, expected,
                "native vs libmodsecurity for {request:?}\n{rules}"
            );
            got
        })
        .collect()
}

#[test]
fn ctl_rule_remove_by_id_does_not_stop_a_secaction() {
    let rules = r#"SecRuleEngine On
SecRule ARGS:x "@streq go" "id:1,phase:1,pass,nolog,ctl:ruleRemoveById=2-3"
SecAction "id:2,phase:1,pass,nolog,setvar:tx.a=1"
SecRule TX:a "@eq 1" "id:4,phase:1,deny,status:403,log,msg:'the SecAction ran'"
"#;
    let got = both(rules, &[get("/?x=go", &[(b"Host", b"h")])]);
    assert_eq!(got[0].1, Some((403, Some(4))), "the SecAction still ran");
}

#[test]
fn ctl_rule_remove_target_by_id_spares_the_chained_links() {
    let rules = r#"SecRuleEngine On
SecRule ARGS:x "@streq go" "id:1,phase:1,pass,nolog,ctl:ruleRemoveTargetById=5;REQUEST_HEADERS:X-A"
SecRule REQUEST_METHOD "@streq GET" "id:5,phase:1,deny,status:403,log,msg:'chain',chain"
    SecRule REQUEST_HEADERS:X-A "@streq bad" "t:none"
"#;
    let headers: [(&[u8], &[u8]); 2] = [(b"Host", b"h"), (b"X-A", b"bad")];
    let got = both(rules, &[get("/?x=go", &headers)]);
    assert_eq!(got[0].1, Some((403, Some(5))));
}

#[test]
fn a_deny_does_not_take_the_status_an_earlier_rule_set() {
    let rules = r#"SecRuleEngine On
SecRule ARGS:a "@streq 1" "id:1,phase:1,pass,nolog,status:401"
SecRule ARGS:b "@streq 1" "id:2,phase:1,deny,log"
"#;
    let host: [(&[u8], &[u8]); 1] = [(b"Host", b"h")];
    let got = both(rules, &[get("/?a=1&b=1", &host), get("/?b=1", &host)]);
    // libmodsecurity's status is the denying rule's (or its phase default's): 403 both times.
    assert_eq!(got[0].1, Some((403, Some(2))));
    assert_eq!(got[1].1, Some((403, Some(2))));
}

#[test]
fn without_sec_rule_engine_rules_match_but_nothing_is_denied() {
    let rules = r#"SecRule ARGS:a "@streq 1" "id:1,phase:1,deny,log,msg:'would deny'"
SecRule ARGS:a "@streq 1" "id:2,phase:2,pass,log,msg:'phase 2 runs'"
"#;
    let host: [(&[u8], &[u8]); 1] = [(b"Host", b"h")];
    let got = both(rules, &[get("/?a=1", &host)]);
    assert_eq!(got[0].1, None);
}

#[test]
fn the_ip_collection_carries_over_and_a_handed_back_request_leaves_it_alone() {
    // Rule 3 hands a request with an argument `dns` back (the native engine has no DNS);
    // libmodsecurity evaluates it and counts it, the native engine must not count it twice or
    // half: its own count only moves with requests it evaluates.
    // (In one SecAction the setvar would run before the initcol, into another record: both
    // engines agree on that too, but it counts nothing.)
    let rules = r#"SecRuleEngine On
SecAction "id:1,phase:1,pass,nolog,initcol:ip=%{REMOTE_ADDR}"
SecAction "id:4,phase:1,pass,nolog,setvar:ip.hits=+1"
SecRule IP:hits "@eq 3" "id:2,phase:1,pass,log,msg:'third visit'"
"#;
    let host: [(&[u8], &[u8]); 1] = [(b"Host", b"h")];
    let got = both(
        rules,
        &[
            get("/", &host),
            get("/", &host),
            get("/", &host),
            get("/", &host),
        ],
    );
    assert_eq!(got[2].0, vec![2], "the third request sees hits = 3");
    assert!(got[3].0.is_empty());

    let native = native::Engine::load(&format!(
        "{rules}SecRule ARGS:dns \"@rbl example.invalid\" \"id:3,phase:1,pass,log\"\n"
    ))
    .expect("loads");
    let evaluate = |uri| native.evaluate(&get(uri, &host));
    assert!(evaluate("/").is_ok());
    assert!(evaluate("/?dns=1").is_err(), "@rbl is handed back");
    assert!(evaluate("/").is_ok());
    let third = evaluate("/").expect("evaluates");
    assert_eq!(
        third.rule_ids(),
        vec![2],
        "the handed-back request did not count: this is the third visit"
    );
}

#[test]
fn a_rule_over_empty_collections_clears_matched_vars_and_a_count_of_one_is_zero() {
    // Rule 2 reads only ARGS, which this request has none of: it tests nothing, matches
    // nothing, and so empties MATCHED_VARS (rule 3 must not see the Host rule 1 matched).
    // Rule 4 counts ARGS: an empty collection still gives the value 0 to test.
    let rules = r#"SecRuleEngine On
SecRule REQUEST_HEADERS:Host "@rx ." "id:1,phase:1,pass,nolog"
SecRule ARGS|ARGS_NAMES|REQUEST_COOKIES "@rx ." "id:2,phase:1,pass,nolog"
SecRule MATCHED_VARS "@rx ." "id:3,phase:1,deny,status:403,log,msg:'stale MATCHED_VARS'"
SecRule &ARGS "@eq 0" "id:4,phase:1,deny,status:403,log,msg:'no arguments'"
"#;
    let got = both(rules, &[get("/", &[(b"Host", b"h")])]);
    assert_eq!(got[0].1, Some((403, Some(4))));
}

#[test]
fn a_count_of_an_empty_collection_is_tested_as_zero_through_transformations_and_macros() {
    // The engine decides at load which counts cannot match when their collection is empty
    // (rules 1 and 2 here); the others still test the 0: rule 3 matches it, rule 4 after
    // t:length turns it into 1, rule 5 against a TX value set at run time. Then the same rule
    // set with the members present.
    let rules = r#"SecRuleEngine On
SecAction "id:10,phase:1,pass,nolog,setvar:tx.zero=0"
SecRule &REQUEST_HEADERS:X-Foo "!@eq 0" "id:1,phase:1,pass,log,msg:'x-foo sent'"
SecRule &ARGS "@gt 0" "id:2,phase:1,pass,log,msg:'arguments'"
SecRule &ARGS "@eq 0" "id:3,phase:1,pass,log,msg:'no arguments'"
SecRule &ARGS "@eq 1" "id:4,phase:1,pass,log,msg:'length of the count',t:length"
SecRule &ARGS "@eq %{tx.zero}" "id:5,phase:1,pass,log,msg:'count is tx.zero'"
"#;
    let bare: [(&[u8], &[u8]); 1] = [(b"Host", b"h")];
    let with_foo: [(&[u8], &[u8]); 2] = [(b"Host", b"h"), (b"X-Foo", b"1")];
    let got = both(rules, &[get("/", &bare), get("/?a=1", &with_foo)]);
    let ids = |s: &Summary| s.0.clone();
    assert_eq!(ids(&got[0]), vec![3, 4, 5]);
    assert_eq!(ids(&got[1]), vec![1, 2, 4]);
}
