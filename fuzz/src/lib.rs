//! The checks behind Fleetgate's fuzz targets, one function per target.
//!
//! Each target feeds arbitrary bytes to a parser of untrusted input and then checks properties
//! that must hold for whatever the parser accepts. A panic anywhere, in our code or in a
//! dependency, is a bug: hostile input must be answered with an error, never a crash.
//!
//! The properties, for everything a parser accepts:
//! - a resource's canonical JSON (the bytes the checksum hashes) parses back to the same
//!   resource, so an agent that re-parses what the manager sent holds the same content;
//! - the wire form (`fleetgate_proto`) decodes back to the same snapshot, and its checksum
//!   verifies;
//! - `apply(diff(a, b), a) == b`;
//! - a bundle that validates still validates after those round trips.

pub mod requests;

use fleetgate_proto::join_token::JoinToken;
use fleetgate_proto::sync::v1 as wire;
use fleetgate_proto::sync::v1::{agent_message, manager_message};
use fleetgate_shared::bundle::Format;
use fleetgate_shared::{Delta, Resource, Snapshot, ValidationError, diff, parse_bundle, validate};
use prost::Message;

/// `bundle_yaml` and `bundle_json`: bytes → text → resources → validation → snapshot.
pub fn bundle(data: &[u8], format: Format) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resources) = parse_bundle(text, format, "") else {
        return;
    };
    let valid = validate(&resources).is_ok();
    // Duplicate keys parse but cannot form a snapshot; validation reports them.
    let Ok(snapshot) = Snapshot::new(0, resources) else {
        assert!(!valid, "validation accepted a bundle with a duplicate key");
        return;
    };
    let checksum = snapshot.checksum();

    let reparsed = reparse_canonical(&snapshot);
    assert_eq!(reparsed, snapshot, "canonical JSON does not parse back");
    assert_eq!(reparsed.checksum(), checksum);

    let decoded = Snapshot::try_from(wire::Snapshot::from(&snapshot))
        .unwrap_or_else(|e| panic!("the wire form of a parsed snapshot does not decode: {e}"));
    assert_eq!(decoded, snapshot, "wire round trip changed the snapshot");

    let empty = Snapshot::default();
    assert_eq!(
        empty.apply(&diff(&empty, &snapshot)).as_ref(),
        Ok(&snapshot)
    );

    if valid {
        let again: Vec<Resource> = reparsed.into_resources();
        if let Err(errors) = validate(&again) {
            panic!("valid before the round trip, invalid after: {errors:?}");
        }
    }
}

/// Parses each line of `snapshot`'s canonical bytes (one resource as compact JSON per line).
fn reparse_canonical(snapshot: &Snapshot) -> Snapshot {
    let bytes = snapshot.canonical_bytes();
    let text = std::str::from_utf8(&bytes).expect("canonical bytes are JSON, hence UTF-8");
    let mut resources = Vec::with_capacity(snapshot.len());
    for line in text.lines() {
        match parse_bundle(line, Format::Json, "") {
            Ok(mut found) => resources.append(&mut found),
            Err(errors) => panic!("canonical JSON `{line}` does not parse: {errors:?}"),
        }
    }
    Snapshot::new(snapshot.revision, resources).expect("keys were unique before the round trip")
}

/// `wire_messages`: bytes → `ManagerMessage` and `AgentMessage` → model types.
pub fn wire_messages(data: &[u8]) {
    if let Ok(message) = wire::ManagerMessage::decode(data) {
        match message.body {
            Some(manager_message::Body::Snapshot(snapshot)) => wire_snapshot(snapshot),
            Some(manager_message::Body::Delta(delta)) => wire_delta(delta),
            // An enrolment's answer is certificates, which rustls parses where they are used.
            Some(
                manager_message::Body::Ping(_)
                | manager_message::Body::Pong(_)
                | manager_message::Body::Goodbye(_)
                | manager_message::Body::Enrolled(_),
            )
            | None => {}
        }
    }
    if let Ok(message) = wire::AgentMessage::decode(data) {
        match message.body {
            Some(agent_message::Body::Hello(hello)) => {
                let _ = fleetgate_proto::convert::parse_checksum(&hello.checksum);
            }
            Some(agent_message::Body::Ack(ack)) => {
                let _ = fleetgate_proto::convert::parse_checksum(&ack.checksum);
            }
            Some(agent_message::Body::Nack(nack)) => {
                for error in nack.errors {
                    let _ = ValidationError::from(error).to_string();
                }
            }
            Some(agent_message::Body::Enroll(enroll)) => {
                // The join token is the one field a manager reads before it trusts the sender.
                if let Ok(token) = JoinToken::parse(&enroll.join_token) {
                    assert_eq!(
                        JoinToken::parse(&token.to_string()).ok().as_ref(),
                        Some(&token),
                        "a parsed join token does not print back to itself"
                    );
                }
            }
            // A renewal's CSR is parsed by the manager's certificate issuer (rcgen), outside
            // this crate's dependencies.
            Some(
                agent_message::Body::Renew(_)
                | agent_message::Body::Status(_)
                | agent_message::Body::Ping(_)
                | agent_message::Body::Pong(_),
            )
            | None => {}
        }
    }
}

fn wire_snapshot(message: wire::Snapshot) {
    let snapshot = match Snapshot::try_from(message) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            // Every error must turn into a Nack entry without panicking.
            let _ = wire::ResourceError::from(&e);
            return;
        }
    };
    let _ = validate(&snapshot.resources().cloned().collect::<Vec<_>>());
    let decoded = Snapshot::try_from(wire::Snapshot::from(&snapshot))
        .unwrap_or_else(|e| panic!("re-encoding a decoded snapshot broke it: {e}"));
    assert_eq!(decoded, snapshot, "wire round trip changed the snapshot");
    assert_eq!(reparse_canonical(&snapshot), snapshot);
}

fn wire_delta(message: wire::Delta) {
    // Applying to an empty base exercises the revision and delete bookkeeping and, when it
    // succeeds, the result-checksum verification.
    let _ = message.clone().apply_to(&Snapshot::default());
    let delta = match Delta::try_from(message) {
        Ok(delta) => delta,
        Err(e) => {
            let _ = wire::ResourceError::from(&e);
            return;
        }
    };
    let decoded = Delta::try_from(wire::Delta::from(&delta))
        .unwrap_or_else(|e| panic!("re-encoding a decoded delta broke it: {e}"));
    assert_eq!(decoded, delta, "wire round trip changed the delta");
}
