//! Hostile input to the bundle parser: it must answer with a clear error in bounded time and
//! memory, and never panic.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns fail the test loudly, as they should

use fleetgate_shared::bundle::{Format, MAX_FILE_BYTES};
use fleetgate_shared::{LoadError, load_paths, parse_bundle};
use proptest::prelude::*;

fn first_error(text: &str, format: Format) -> String {
    match parse_bundle(text, format, "input.yaml") {
        Ok(r) => panic!("expected an error, parsed {} resources", r.len()),
        Err(errors) => errors[0].to_string(),
    }
}

#[test]
fn deeply_nested_yaml_is_refused_by_the_recursion_limit() {
    let depth = 100_000;
    let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let error = first_error(&text, Format::Yaml);
    assert!(
        error.starts_with("input.yaml, document 1: invalid YAML: recursion limit exceeded"),
        "{error}"
    );
    let nested_maps: String = (0..10_000)
        .map(|i| format!("{}a:\n", " ".repeat(i)))
        .collect();
    let error = first_error(&nested_maps, Format::Yaml);
    assert!(error.contains("recursion limit exceeded"), "{error}");
}

#[test]
fn deeply_nested_json_is_refused_by_the_recursion_limit() {
    let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let error = first_error(&text, Format::Json);
    assert!(
        error.contains("invalid JSON: recursion limit exceeded"),
        "{error}"
    );
}

#[test]
fn exponentially_expanding_yaml_aliases_are_refused() {
    // Each level refers to the previous one nine times: 9^9 nodes if expanded.
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for level in 1..10 {
        let prev = format!("*a{}", level - 1);
        text.push_str(&format!(
            "a{level}: &a{level} [{}]\n",
            [prev.as_str(); 9].join(", ")
        ));
    }
    let error = first_error(&text, Format::Yaml);
    assert!(error.contains("repetition limit exceeded"), "{error}");
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_it_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(MAX_FILE_BYTES + 1).unwrap();
    match load_paths(&[&path]) {
        Err(LoadError::Unreadable { reason, .. }) => {
            assert_eq!(reason, "larger than the 32 MiB limit for a config file")
        }
        other => panic!("expected unreadable, got {other:?}"),
    }
}

#[test]
fn invalid_utf8_names_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.yaml");
    std::fs::write(&path, b"kind: Route\nname: caf\xe9\n").unwrap();
    match load_paths(&[&path]) {
        Err(LoadError::Unreadable { reason, .. }) => {
            assert_eq!(reason, "not valid UTF-8 (first bad byte at offset 21)")
        }
        other => panic!("expected unreadable, got {other:?}"),
    }
}

#[test]
fn one_broken_document_does_not_hide_errors_in_others() {
    let text = "kind: Route\nname: a\nspec: { nope: 1 }\n---\nkind: Route\nname: b\nspec: { direct_response: { status: 204 } }\n---\nkind: Service\nname: c\nspec: { endpoints: 5 }\n";
    let errors = parse_bundle(text, Format::Yaml, "x.yaml").unwrap_err();
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("route/a: spec.nope: unknown field `nope`"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with("(in x.yaml, document 1)"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(
            "service/c: spec.endpoints: invalid type: integer `5`, expected a sequence"
        ),
        "{}",
        lines[1]
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics_the_parser(text in "\\PC{0,400}") {
        let _ = parse_bundle(&text, Format::Yaml, "");
        let _ = parse_bundle(&text, Format::Json, "");
    }

    #[test]
    fn yaml_shaped_noise_never_panics_the_parser(
        lines in prop::collection::vec(
            prop::sample::select(vec!["kind: Route", "kind: Service", "name: a", "spec:", "  forward:", "    backends: [{service: a}]",
                "  endpoints: [{address: '1.2.3.4:5'}]", "---", "  matches: [{path: {regex: '('}}]", "&x [*x]", "- a", "  - : :", "{", "]"]),
            0..30)
    ) {
        let text = lines.join("\n");
        if let Ok(resources) = parse_bundle(&text, Format::Yaml, "") {
            let _ = fleetgate_shared::validate(&resources);
        }
    }
}
