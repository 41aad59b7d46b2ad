//! Rules folded at load (evaluated once, their outcome replayed per request) must leave every
//! verdict as it was. Small rule sets where the analysis could go wrong, then generated rule
//! programs of `TX` arithmetic, request-dependent jumps and run-time rule removal, each run
//! through libmodsecurity, the native engine and the native engine without folding.
//!
//! Needs libmodsecurity3 (installed by .ci/run).

use fleetgate_agent_waf::{Engine, Request, native};
use proptest::prelude::*;

mod support;
use support::{Summary, crs_text, request, summary};

fn get(uri: &str) -> Request<'_> {
    const HOST: [(&[u8], &[u8]); 1] = [(b"Host", b"h")];
    request("GET", uri, "1.1", &HOST, b"")
}

/// The three engines' common outcome for a `GET` of each URI; panics on any difference.
fn all_three(rules: &str, uris: &[&str]) -> (Vec<Summary>, usize) {
    let requests: Vec<Request<'_>> = uris.iter().map(|uri| get(uri)).collect();
    all_three_requests(rules, &requests)
}

/// The three engines' common outcome for each request; panics on any difference.
fn all_three_requests(rules: &str, requests: &[Request<'_>]) -> (Vec<Summary>, usize) {
    let reference = Engine::load(rules).expect("libmodsecurity loads the rules");
    let folded = native::Engine::load(rules).expect("the native engine loads the rules");
    let unfolded = native::Engine::load_unfolded(rules).expect("... and without folding");
    let outcomes = requests
        .iter()
        .map(|request| {
            let expected = summary(&reference.evaluate(request).expect("libmodsecurity"));
            let plain = summary(&unfolded.evaluate(request).expect("native, unfolded"));
            let got = summary(&folded.evaluate(request).expect("native, folded"));
            assert_eq!(
                plain, expected,
                "unfolded vs libmodsecurity: {request:?}\n{rules}"
            );
            assert_eq!(
                got, expected,
                "folded vs libmodsecurity: {request:?}\n{rules}"
            );
            got
        })
        .collect();
    (outcomes, folded.folded_rules())
}

#[test]
fn configuration_defaults_are_folded_and_requests_compare_against_them() {
    let rules = r#"SecRuleEngine On
SecAction "id:1,phase:1,pass,nolog,setvar:tx.limit=5"
SecRule &TX:limit "@eq 0" "id:2,phase:1,pass,nolog,setvar:tx.limit=10"
SecRule &TX:other "@eq 0" "id:3,phase:1,pass,nolog,setvar:tx.other=%{tx.limit}"
SecRule ARGS:x "@gt %{tx.other}" "id:4,phase:1,deny,status:403,log,msg:'over'"
"#;
    let (got, folded) = all_three(rules, &["/?x=7", "/?x=3"]);
    assert_eq!(folded, 3, "the three configuration rules are folded");
    assert_eq!(got[0].1, Some((403, Some(4))), "7 is over the limit of 5");
    assert_eq!(got[1].1, None, "3 is not");
}

#[test]
fn a_chain_stopped_by_a_known_value_is_folded_and_one_it_passes_is_not() {
    // The CRS's argument-limit pattern: rule 2's chain starts on a limit the configuration
    // never set, so it stops there for every request (folded, though its second link reads
    // the request); rule 3's limit is set, so its chain goes on to `&ARGS` per request. The
    // first links' setvar runs as they match, before the chain goes on.
    let rules = r#"SecRuleEngine On
SecAction "id:1,phase:1,pass,nolog,setvar:tx.max_args=2"
SecRule &TX:max_names "@eq 1" "id:2,phase:1,pass,nolog,chain"
    SecRule &ARGS "@gt 0" "setvar:tx.never=1"
SecRule &TX:max_args "@eq 1" "id:3,phase:1,pass,nolog,chain,setvar:tx.checked=1"
    SecRule &ARGS "@gt %{tx.max_args}" "setvar:tx.over=1"
SecRule TX:never "@eq 1" "id:4,phase:1,deny,status:403,log,msg:'rule 2 went on'"
SecRule TX:over "@eq 1" "id:5,phase:1,deny,status:403,log,msg:'too many arguments'"
SecRule TX:checked "@eq 1" "id:6,phase:1,pass,log,msg:'limit checked'"
"#;
    let (got, folded) = all_three(rules, &["/?a=1&b=2&c=3", "/?a=1"]);
    assert_eq!(
        folded, 3,
        "the SecAction, rule 2, and rule 4 (tx.never stays unset)"
    );
    assert_eq!(got[0].1, Some((403, Some(5))), "three arguments, limit 2");
    assert_eq!(
        got[1],
        (vec![6], None),
        "one argument: rule 3's first link matched and set tx.checked"
    );
}

#[test]
fn a_sec_action_cannot_start_a_chain_in_either_engine() {
    // libmodsecurity adds a SecAction on its own, leaving the chained rule without an id; the
    // native engine refuses the same text instead of giving it a meaning of its own.
    let rules = r#"SecRuleEngine On
SecAction "id:1,phase:1,pass,nolog,chain,setvar:tx.a=1"
    SecRule ARGS "@rx x" "setvar:tx.b=1"
SecRule TX:a "@eq 1" "id:3,phase:1,deny,status:403,log,msg:'a is set'"
"#;
    assert!(Engine::load(rules).is_err(), "libmodsecurity refuses it");
    let e = native::Engine::load(rules).expect_err("the native engine refuses it");
    assert!(e.to_string().contains("`chain` on a SecAction"), "{e}");
}

#[test]
fn a_value_a_request_dependent_jump_may_skip_is_not_folded() {
    // Rule 2 sets tx.level unless rule 1 jumps over it: at the marker tx.level is unknown, so
    // rule 3 must be evaluated per request.
    let rules = r#"SecRuleEngine On
SecRule ARGS:skip "@streq 1" "id:1,phase:1,pass,nolog,skipAfter:M"
SecAction "id:2,phase:1,pass,nolog,setvar:tx.level=2"
SecMarker M
SecRule TX:level "@eq 2" "id:3,phase:1,deny,status:403,log,msg:'level 2'"
"#;
    let (got, folded) = all_three(rules, &["/?skip=1", "/?skip=0"]);
    assert_eq!(folded, 1, "only the SecAction is folded");
    assert_eq!(got[0].1, None, "the jump skipped the setvar");
    assert_eq!(got[1].1, Some((403, Some(3))));
}

#[test]
fn a_rule_removed_at_run_time_is_evaluated_as_removed() {
    // Rules 2 and 3 fold (tx.seed is known); a request that removes rule 3 must not get the
    // folded outcome, which assumed rule 3 ran.
    let rules = r#"SecRuleEngine On
SecRule ARGS:off "@streq 1" "id:1,phase:1,pass,nolog,ctl:ruleRemoveById=3"
SecAction "id:2,phase:1,pass,nolog,setvar:tx.seed=1"
SecRule TX:seed "@eq 1" "id:3,phase:1,pass,nolog,setvar:tx.block=1"
SecRule TX:block "@eq 1" "id:4,phase:1,deny,status:403,log,msg:'blocked'"
"#;
    let (got, folded) = all_three(rules, &["/?off=1", "/?off=0"]);
    assert!(folded >= 2, "rules 2 and 3 are folded ({folded})");
    assert_eq!(
        got[0].1, None,
        "rule 3 was removed, so tx.block stays unset"
    );
    assert_eq!(got[1].1, Some((403, Some(4))));
}

#[test]
fn matched_var_after_folded_rules_is_theirs() {
    let rules = r#"SecRuleEngine On
SecAction "id:1,phase:1,pass,nolog,setvar:tx.a=alpha"
SecRule TX:a "@streq alpha" "id:2,phase:1,pass,nolog"
SecRule MATCHED_VAR "@streq alpha" "id:3,phase:1,deny,status:403,log,msg:'saw %{MATCHED_VAR_NAME}'"
"#;
    let (got, folded) = all_three(rules, &["/"]);
    assert_eq!(folded, 2);
    assert_eq!(got[0].1, Some((403, Some(3))));
}

#[test]
fn a_folded_jump_into_the_next_phase_resumes_there() {
    // Markers stand in every phase. Rule 2's marker comes before it in the text, so phase 1
    // has no END after rule 2: the jump skips the rest of phase 1 and phase 2 starts at END.
    let rules = r#"SecRuleEngine On
SecRequestBodyAccess On
SecAction "id:1,phase:1,pass,nolog,setvar:tx.pl=1"
SecRule ARGS:x "@streq a" "id:4,phase:2,deny,status:403,log,msg:'before the marker'"
SecMarker END
SecRule TX:pl "@lt 2" "id:2,phase:1,pass,nolog,skipAfter:END"
SecRule ARGS:x "@streq a" "id:3,phase:1,deny,status:403,log,msg:'skipped in phase 1'"
SecRule ARGS:x "@streq a" "id:5,phase:2,deny,status:403,log,msg:'after the marker'"
"#;
    let (got, folded) = all_three(rules, &["/?x=a"]);
    assert_eq!(folded, 2);
    assert_eq!(got[0].1, Some((403, Some(5))));
}

#[test]
fn a_name_built_at_run_time_unknowns_only_the_names_it_can_build() {
    // Rule 2 writes `tx.seen_<argument>` (like the CRS's 920450, `tx.header_name_%{tx.0}`):
    // `tx.limit` stays known and rule 3 folds. Rule 4 writes `tx.<argument>`, which can be
    // `tx.limit`: rule 5 must compare per request.
    let rules = r#"SecRuleEngine On
SecAction "id:1,phase:1,pass,nolog,setvar:tx.limit=5"
SecRule ARGS:name "@rx ^(\w+)$" "id:2,phase:1,pass,nolog,capture,setvar:'tx.seen_%{tx.1}=1'"
SecRule TX:limit "@eq 5" "id:3,phase:1,pass,nolog,setvar:tx.checked=1"
SecRule ARGS:name "@rx ^(\w+)$" "id:4,phase:1,pass,nolog,capture,setvar:'tx.%{tx.1}=9'"
SecRule TX:limit "@eq 9" "id:5,phase:1,deny,status:403,log,msg:'limit overwritten'"
"#;
    let (got, folded) = all_three(
        rules,
        &["/?name=limit", "/?name=seen_limit", "/?name=other"],
    );
    assert_eq!(folded, 2, "rules 1 and 3");
    assert_eq!(
        got[0].1,
        Some((403, Some(5))),
        "tx.limit was overwritten by rule 4"
    );
    assert_eq!(got[1].1, None);
    assert_eq!(got[2].1, None);
}

#[test]
fn a_rule_with_a_ctl_is_never_folded() {
    // Rule 1 reads nothing, but its ctl changes how the rest of the request is evaluated: a
    // block has nothing to replay it with.
    let engine_on = r#"SecRuleEngine DetectionOnly
SecAction "id:1,phase:1,pass,nolog,ctl:ruleEngine=On"
SecRule ARGS:x "@streq a" "id:2,phase:1,deny,status:403,log,msg:'denied once the engine is on'"
"#;
    let (got, folded) = all_three(engine_on, &["/?x=a"]);
    assert_eq!(folded, 0);
    assert_eq!(got[0].1, Some((403, Some(2))));

    let body_on = r#"SecRuleEngine On
SecRequestBodyAccess Off
SecAction "id:1,phase:1,pass,nolog,ctl:requestBodyAccess=On"
SecRule ARGS_POST:x "@streq a" "id:2,phase:2,deny,status:403,log,msg:'seen in the body'"
"#;
    let headers: [(&[u8], &[u8]); 2] = [
        (b"Host", b"h"),
        (b"Content-Type", b"application/x-www-form-urlencoded"),
    ];
    let post = request("POST", "/", "1.1", &headers, b"x=a");
    let (got, folded) = all_three_requests(body_on, &[post]);
    assert_eq!(folded, 0);
    assert_eq!(got[0].1, Some((403, Some(2))));
}

#[test]
fn capture_groups_past_nine_make_their_tx_names_unknown() {
    // Rule 2 stores group 10 as TX.10, which the text also names: rule 3 must compare per
    // request.
    let rules = r#"SecRuleEngine On
SecAction "id:1,phase:1,pass,nolog,setvar:tx.10=none"
SecRule ARGS:x "@rx ^(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)$" "id:2,phase:1,pass,nolog,capture"
SecRule TX:10 "@streq j" "id:3,phase:1,pass,nolog,setvar:tx.hit=1"
SecRule TX:hit "@eq 1" "id:4,phase:1,deny,status:403,log,msg:'group 10 seen'"
"#;
    let (got, folded) = all_three(rules, &["/?x=abcdefghij", "/?x=other"]);
    assert_eq!(folded, 1, "only the SecAction");
    assert_eq!(got[0].1, Some((403, Some(4))));
    assert_eq!(got[1].1, None);
}

#[test]
fn the_crs_paranoia_gates_and_defaults_are_folded() {
    let rules = crs_text(1);
    let engine = native::Engine::load(&rules).expect("the CRS loads");
    // 901's defaults, every file's paranoia gates in both phases and the chains that stop on
    // an unset limit (920380 and its kind): 112 at paranoia level 1 when written.
    assert!(
        engine.folded_rules() >= 110,
        "only {} rules folded",
        engine.folded_rules()
    );
}

/// A generated rule program: `TX` names v0–v3 set, compared, incremented and unset by rules
/// that read the configuration only or the request's arguments a0–a2, with jumps to markers
/// M0–M2 and run-time rule removal; observers at the end log what `TX` holds.
fn program() -> impl Strategy<Value = String> {
    let var = 0..4u8;
    let value = 0..4u8;
    let effect = prop_oneof![
        (var.clone(), value.clone()).prop_map(|(k, v)| format!("setvar:tx.v{k}={v}")),
        (var.clone(), value.clone()).prop_map(|(k, v)| format!("setvar:tx.v{k}=+{v}")),
        var.clone().prop_map(|k| format!("setvar:!tx.v{k}")),
        (0..3u8).prop_map(|m| format!("skipAfter:M{m}")),
        (var.clone(), 0..3u8).prop_map(|(k, m)| format!("setvar:tx.v{k}=+1,skipAfter:M{m}")),
        prop_oneof![Just("On"), Just("DetectionOnly")].prop_map(|m| format!("ctl:ruleEngine={m}")),
    ];
    let line = prop_oneof![
        3 => (1..3u8, var.clone(), value.clone())
            .prop_map(|(p, k, v)| format!("SecAction \"id:ID,phase:{p},pass,nolog,setvar:tx.v{k}={v}\"")),
        4 => (1..3u8, var.clone(), value.clone(), effect.clone())
            .prop_map(|(p, k, v, e)| format!("SecRule TX:v{k} \"@eq {v}\" \"id:ID,phase:{p},pass,nolog,{e}\"")),
        2 => (1..3u8, var.clone(), effect.clone())
            .prop_map(|(p, k, e)| format!("SecRule &TX:v{k} \"@eq 0\" \"id:ID,phase:{p},pass,nolog,{e}\"")),
        2 => (1..3u8, var.clone(), var.clone(), effect.clone())
            .prop_map(|(p, k, j, e)| format!("SecRule TX:v{k} \"@lt %{{tx.v{j}}}\" \"id:ID,phase:{p},pass,nolog,{e}\"")),
        3 => (1..3u8, 0..3u8, value.clone(), effect.clone())
            .prop_map(|(p, a, v, e)| format!("SecRule ARGS:a{a} \"@eq {v}\" \"id:ID,phase:{p},pass,nolog,{e}\"")),
        2 => (0..3u8).prop_map(|m| format!("SecMarker M{m}")),
        1 => (1..3u8, 0..3u8, value.clone(), 100..130u32)
            .prop_map(|(p, a, v, id)| format!("SecRule ARGS:a{a} \"@eq {v}\" \"id:ID,phase:{p},pass,nolog,ctl:ruleRemoveById={id}\"")),
        1 => (1..3u8, var.clone(), value.clone())
            .prop_map(|(p, k, v)| format!("SecRule TX:v{k} \"@eq {v}\" \"id:ID,phase:{p},pass,log,msg:'seen'\"")),
        1 => (1..3u8, value.clone())
            .prop_map(|(p, v)| format!("SecRule MATCHED_VAR \"@streq {v}\" \"id:ID,phase:{p},pass,log,msg:'matched'\"")),
        // Capture groups land in TX.0, TX.1: numbered names other rules read.
        1 => (1..3u8, 0..3u8, var.clone())
            .prop_map(|(p, a, k)| format!("SecRule ARGS:a{a} \"@rx ^(\\d)$\" \"id:ID,phase:{p},pass,nolog,capture,setvar:tx.v{k}=%{{tx.1}}\"")),
        1 => (1..3u8, value.clone(), effect.clone())
            .prop_map(|(p, v, e)| format!("SecRule TX:1 \"@eq {v}\" \"id:ID,phase:{p},pass,nolog,{e}\"")),
        1 => (1..3u8, var.clone(), value.clone(), var.clone(), var.clone(), value.clone())
            .prop_map(|(p, k, v, j, s, w)| format!(
                "SecRule TX:v{k} \"@eq {v}\" \"id:ID,phase:{p},pass,nolog,chain\"\n    SecRule TX:v{j} \"@lt 3\" \"setvar:tx.v{s}=+{w}\""
            )),
        // A chain that starts on `TX` and goes on to the request: decided at load when the
        // `TX` link does not match, opaque when it does.
        2 => (1..3u8, any::<bool>(), var.clone(), value.clone(), var, 0..3u8, value)
            .prop_map(|(p, count, k, v, s, a, w)| format!(
                "SecRule {} \"@eq {v}\" \"id:ID,phase:{p},pass,nolog,chain,setvar:tx.v{s}=+1\"\n    SecRule ARGS:a{a} \"@eq {w}\" \"setvar:tx.v{s}=+2\"",
                if count { format!("&TX:v{k}") } else { format!("TX:v{k}") }
            )),
    ];
    proptest::collection::vec(line, 1..30).prop_map(|lines| {
        let mut text = String::from("SecRuleEngine On\nSecRequestBodyAccess On\n");
        for (n, line) in lines.iter().enumerate() {
            text.push_str(&line.replace("ID", &(100 + n).to_string()));
            text.push('\n');
        }
        // Every marker exists, then observers report each name's final value.
        for m in 0..3 {
            text.push_str(&format!("SecMarker M{m}\n"));
        }
        // A deny that only an engine left On carries out (the program may switch it).
        text.push_str(
            "SecRule TX:v0 \"@eq 3\" \"id:899,phase:2,deny,status:403,log,msg:'v0 is 3'\"\n",
        );
        for k in 0..4 {
            text.push_str(&format!(
                "SecRule &TX:v{k} \"@eq 0\" \"id:{},phase:2,pass,log,msg:'unset'\"\n",
                900 + k * 10
            ));
            for v in 0..9 {
                text.push_str(&format!(
                    "SecRule TX:v{k} \"@eq {v}\" \"id:{},phase:2,pass,log,msg:'value'\"\n",
                    901 + k * 10 + v
                ));
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn folding_never_changes_a_verdict(
        rules in program(),
        queries in proptest::collection::vec((0..4u8, 0..4u8, 0..4u8), 1..4),
    ) {
        let uris: Vec<String> = queries
            .iter()
            .map(|(a, b, c)| format!("/?a0={a}&a1={b}&a2={c}"))
            .collect();
        let uris: Vec<&str> = uris.iter().map(String::as_str).collect();
        all_three(&rules, &uris);
    }
}
