//! The story of a config crossing the wire: model → wire → protobuf bytes → wire → model, for a
//! snapshot holding every kind of resource, then for a delta; and what a receiver does with
//! messages that are wrong (unknown kinds, unknown fields, tampered checksums, garbage bytes).

use fleetgate_proto::convert::kind_to_wire;
use fleetgate_proto::sync::v1 as wire;
use fleetgate_proto::sync::v1::{agent_message, manager_message};
use fleetgate_proto::{PROTOCOL_VERSION, WireError};
use fleetgate_shared::bundle::Format;
use fleetgate_shared::{Checksum, DeltaError, Kind, Resource, Snapshot, diff, parse_bundle};
use proptest::prelude::*;
use prost::Message;

/// One resource of each kind, with labels and a placement on some, as an operator writes them.
const EVERY_KIND: &str = r#"
kind: Certificate
name: example-com
spec:
  cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
  key_pem: "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
---
kind: Domain
name: example-com
labels: { team: edge }
spec:
  hosts: [api.example.com, "*.example.com"]
  certificate: example-com
  https_redirect: true
---
kind: Service
name: chat
placement:
  match_labels: { cloud: aws }
  match_expressions:
    - { key: region, operator: In, values: [eu-west-1, eu-central-1] }
    - { key: env, operator: DoesNotExist }
spec:
  endpoints:
    - { address: "10.0.0.1:8080", labels: { stage: green } }
    - { address: "10.0.0.2:8080", weight: 3, labels: { stage: blue } }
---
kind: Consumer
name: alice
spec:
  credentials:
    keys: [alice-key-1]
---
kind: Policy
name: keys
spec:
  type: key-auth
  config:
    consumers: [alice]
---
kind: Route
name: chat-ws
labels: { owner: chat-team }
spec:
  hosts: [api.example.com]
  matches: [{ path: { prefix: /ws } }]
  forward:
    backends:
      - { service: chat, subset: { stage: green }, weight: 100 }
  policies: [keys]
"#;

fn parse(text: &str) -> Vec<Resource> {
    parse_bundle(text, Format::Yaml, "").expect("the test bundle parses")
}

fn every_kind(revision: u64) -> Snapshot {
    Snapshot::new(revision, parse(EVERY_KIND)).expect("no duplicates")
}

/// Encodes `message` as a manager would put it on a stream, and decodes it as an agent would.
fn through_the_wire(body: manager_message::Body) -> manager_message::Body {
    let bytes = wire::ManagerMessage { body: Some(body) }.encode_to_vec();
    wire::ManagerMessage::decode(bytes.as_slice())
        .expect("valid bytes decode")
        .body
        .expect("a body")
}

fn received_snapshot(snapshot: wire::Snapshot) -> Result<Snapshot, WireError> {
    match through_the_wire(manager_message::Body::Snapshot(snapshot)) {
        manager_message::Body::Snapshot(s) => Snapshot::try_from(s),
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

#[test]
fn snapshot_with_every_kind_survives_the_wire() {
    let original = every_kind(7);
    let kinds: Vec<Kind> = original.resources().map(Resource::kind).collect();
    assert_eq!(
        kinds,
        Kind::ALL,
        "the fixture holds one resource of each kind"
    );

    let sent = wire::Snapshot::from(&original);
    assert_eq!(sent.checksum, original.checksum().to_string());
    assert_eq!(sent.resources.len(), Kind::ALL.len());

    let received = received_snapshot(sent).expect("a faithful snapshot decodes");
    assert_eq!(received, original);
    assert_eq!(received.revision, 7);
    assert_eq!(received.checksum(), original.checksum());
}

#[test]
fn spec_json_is_the_canonical_json_the_checksum_covers() {
    let snapshot = every_kind(1);
    let canonical = String::from_utf8(snapshot.canonical_bytes()).expect("JSON is UTF-8");
    for (line, resource) in canonical.lines().zip(snapshot.resources()) {
        let sent = wire::Resource::from(resource);
        let spec = std::str::from_utf8(&sent.spec_json).expect("JSON is UTF-8");
        assert!(
            line.ends_with(&format!(r#""spec":{spec}}}"#)),
            "{line} does not end with spec {spec}"
        );
    }
}

#[test]
fn encoding_is_deterministic() {
    let a = wire::Snapshot::from(&every_kind(3)).encode_to_vec();
    let b = wire::Snapshot::from(&every_kind(3)).encode_to_vec();
    assert_eq!(a, b);
}

#[test]
fn unknown_kind_number_is_rejected() {
    let mut sent = wire::Snapshot::from(&every_kind(1));
    sent.resources[2].kind = 99;
    assert_eq!(received_snapshot(sent), Err(WireError::UnknownKind(99)));
}

#[test]
fn unknown_spec_field_is_rejected_by_name() {
    let mut sent = wire::Snapshot::from(&every_kind(1));
    let route = sent
        .resources
        .iter_mut()
        .find(|r| r.kind == kind_to_wire(Kind::Route))
        .expect("a route");
    let mut spec: serde_json::Value = serde_json::from_slice(&route.spec_json).expect("JSON");
    spec["forward"]["backends"][0]["wieght"] = serde_json::json!(5);
    route.spec_json = serde_json::to_vec(&spec).expect("JSON");
    sent.checksum.clear();

    let err = received_snapshot(sent).expect_err("an unknown field is an error");
    let WireError::BadSpec {
        resource,
        path,
        message,
    } = &err
    else {
        panic!("expected BadSpec, got {err:?}")
    };
    assert_eq!(resource, "route/chat-ws");
    assert!(path.starts_with("spec.forward.backends"), "{path}");
    assert!(message.contains("wieght"), "{message}");
    assert!(err.to_string().contains("wieght"), "{err}");
}

#[test]
fn unknown_policy_config_field_is_rejected_by_name() {
    let mut sent = wire::Resource::from(&parse(EVERY_KIND)[4]);
    assert_eq!(sent.kind, kind_to_wire(Kind::Policy));
    sent.spec_json =
        br#"{"type":"key-auth","config":{"consumers":["alice"],"hide_creds":false}}"#.to_vec();
    let err = Resource::try_from(sent).expect_err("an unknown config field is an error");
    assert!(err.to_string().contains("hide_creds"), "{err}");
    assert!(
        err.to_string().starts_with("policy/keys: spec.config"),
        "{err}"
    );
}

#[test]
fn tampered_content_fails_the_checksum() {
    let original = every_kind(1);
    let mut sent = wire::Snapshot::from(&original);
    let consumer = sent
        .resources
        .iter_mut()
        .find(|r| r.kind == kind_to_wire(Kind::Consumer))
        .expect("a consumer");
    consumer.spec_json = br#"{"credentials":{"keys":["mallory-key"]}}"#.to_vec();

    let err = received_snapshot(sent).expect_err("tampering is detected");
    assert!(
        matches!(err, WireError::ChecksumMismatch { expected, .. } if expected == original.checksum()),
        "{err:?}"
    );
}

#[test]
fn tampered_checksum_is_detected() {
    let mut sent = wire::Snapshot::from(&every_kind(1));
    sent.checksum = Checksum([0; 32]).to_string();
    assert!(matches!(
        received_snapshot(sent.clone()),
        Err(WireError::ChecksumMismatch { .. })
    ));

    sent.checksum = "not-hex".into();
    assert!(matches!(
        received_snapshot(sent.clone()),
        Err(WireError::BadChecksum(_))
    ));

    // An empty checksum means "not sent": nothing to verify.
    sent.checksum.clear();
    assert_eq!(received_snapshot(sent), Ok(every_kind(1)));
}

#[test]
fn duplicate_resources_are_rejected() {
    let mut sent = wire::Snapshot::from(&every_kind(1));
    sent.resources.push(sent.resources[0].clone());
    sent.checksum.clear();
    let err = received_snapshot(sent).expect_err("a duplicate is an error");
    assert_eq!(
        err.to_string(),
        "certificate/example-com appears more than once"
    );
}

#[test]
fn delta_survives_the_wire_and_verifies_its_result() {
    let base = every_kind(4);
    let mut resources = parse(EVERY_KIND);
    resources.retain(|r| r.kind() != Kind::Consumer);
    let route = resources
        .iter_mut()
        .find(|r| r.kind() == Kind::Route)
        .expect("a route");
    route.labels.insert("owner".into(), "platform".into());
    let target = Snapshot::new(5, resources).expect("no duplicates");

    let delta = diff(&base, &target);
    assert_eq!((delta.upserts.len(), delta.deletes.len()), (1, 1));
    let sent = wire::Delta::from_model(&delta, target.checksum());
    let manager_message::Body::Delta(received) =
        through_the_wire(manager_message::Body::Delta(sent))
    else {
        panic!("expected a delta")
    };

    assert_eq!(
        fleetgate_shared::Delta::try_from(received.clone()),
        Ok(delta.clone())
    );
    assert_eq!(received.clone().apply_to(&base), Ok(target.clone()));

    // Applied to the wrong base, the delta is refused before the checksum is even looked at.
    assert_eq!(
        received.clone().apply_to(&target),
        Err(WireError::Delta(DeltaError::BaseMismatch {
            snapshot: 5,
            delta_from: 4
        }))
    );

    // A base that has the right revision but other content produces the wrong result.
    let mut drifted = parse(EVERY_KIND);
    drifted.retain(|r| r.kind() != Kind::Domain);
    let drifted = Snapshot::new(4, drifted).expect("no duplicates");
    assert!(matches!(
        received.apply_to(&drifted),
        Err(WireError::ChecksumMismatch { .. })
    ));
}

#[test]
fn delta_with_a_wrong_result_checksum_is_refused() {
    let base = every_kind(1);
    let target = Snapshot::new(2, parse(EVERY_KIND).into_iter().skip(1)).expect("no duplicates");
    let sent = wire::Delta::from_model(&diff(&base, &target), base.checksum());
    assert_eq!(
        sent.apply_to(&base),
        Err(WireError::ChecksumMismatch {
            expected: base.checksum(),
            actual: target.checksum()
        })
    );
}

#[test]
fn agent_messages_round_trip() {
    let hello = wire::Hello {
        agent_id: "agent-1".into(),
        name: "eu-west-1a".into(),
        labels: [("cloud".to_string(), "aws".to_string())].into(),
        version: "0.1.0".into(),
        have_revision: 3,
        checksum: every_kind(3).checksum().to_string(),
        protocol_version: PROTOCOL_VERSION,
    };
    let nack = wire::Nack {
        revision: 4,
        errors: vec![wire::ResourceError::from(&WireError::UnknownKind(9))],
    };
    for body in [
        agent_message::Body::Hello(hello),
        agent_message::Body::Nack(nack),
    ] {
        let message = wire::AgentMessage { body: Some(body) };
        let decoded =
            wire::AgentMessage::decode(message.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, message);
    }
}

#[test]
fn debug_output_hides_specs() {
    let certificate = wire::Resource::from(&parse(EVERY_KIND)[0]);
    let shown = format!("{certificate:?}");
    assert!(!shown.contains("PRIVATE"), "{shown}");
    assert!(
        shown.contains("Certificate") && shown.contains("bytes"),
        "{shown}"
    );
}

proptest! {
    #[test]
    fn garbage_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // Decoding may fail or succeed; converting whatever decoded may fail or succeed; none of
        // it may panic.
        if let Ok(message) = wire::ManagerMessage::decode(bytes.as_slice()) {
            match message.body {
                Some(manager_message::Body::Snapshot(s)) => { let _ = Snapshot::try_from(s); }
                Some(manager_message::Body::Delta(d)) => { let _ = d.apply_to(&Snapshot::default()); }
                _ => {}
            }
        }
        let _ = wire::AgentMessage::decode(bytes.as_slice());
    }

    #[test]
    fn corrupted_snapshots_never_panic(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        // Flip one byte of a real message: the likeliest corruption is a small one.
        let mut bytes = wire::ManagerMessage {
            body: Some(manager_message::Body::Snapshot(wire::Snapshot::from(&every_kind(1)))),
        }
        .encode_to_vec();
        let at = index.index(bytes.len());
        bytes[at] ^= byte | 1;
        if let Ok(wire::ManagerMessage { body: Some(manager_message::Body::Snapshot(s)) }) =
            wire::ManagerMessage::decode(bytes.as_slice())
        {
            // Either the corruption is caught, or it hit a byte that does not change the content.
            if let Ok(decoded) = Snapshot::try_from(s) {
                prop_assert_eq!(decoded.checksum(), every_kind(1).checksum());
            }
        }
    }

    #[test]
    fn arbitrary_spec_json_never_panics(kind in 0i32..8, spec in ".{0,64}") {
        let resource = wire::Resource {
            kind,
            name: "x".into(),
            labels: Default::default(),
            placement: None,
            spec_json: spec.into_bytes(),
        };
        let _ = Resource::try_from(resource);
    }
}
