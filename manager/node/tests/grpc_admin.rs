//! The gRPC admin service (`fleetgate.admin.v1.Admin`) against real manager processes, from a
//! tonic client over TLS that trusts the cluster CA: the same port as the REST API, the same
//! tokens and roles, the same validation, concurrency checks and audit, writes through a
//! follower.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, Node, ca_of, service, single_node, three_nodes};
use fleetgate_manager::grpc_admin::CURRENT_REVISION_METADATA;
use fleetgate_proto::admin::v1::admin_client::AdminClient;
use fleetgate_proto::admin::v1::{
    self as admin, ApplyRequest, ClusterStatusRequest, DeleteRequest, GetRequest, HistoryRequest,
    ListRequest, ResourceList, RollbackRequest, apply_request::Source, change::Action,
};
use fleetgate_proto::sync::v1::{self as wire, Kind};
use fleetgate_shared::bundle::Format;
use http::{Method, StatusCode};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Status};

async fn client(node: &Node) -> AdminClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_of(node)))
        .domain_name(fleetgate_proto::MANAGER_SERVER_NAME);
    let channel = Channel::from_shared(format!("https://{}", node.api))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    AdminClient::new(channel)
}

fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn key(kind: Kind, name: &str) -> wire::ResourceKey {
    wire::ResourceKey {
        kind: kind.into(),
        name: name.to_owned(),
    }
}

fn yaml(text: &str) -> Option<Source> {
    Some(Source::BundleYaml(text.as_bytes().to_vec()))
}

/// Resources encoded by the client, as the `resources` source.
fn encoded(text: &str) -> Option<Source> {
    let resources = fleetgate_shared::parse_bundle(text, Format::Yaml, "").unwrap();
    Some(Source::Resources(ResourceList {
        items: resources.iter().map(wire::Resource::from).collect(),
    }))
}

fn actions(changes: &[admin::Change]) -> Vec<(String, Action)> {
    changes
        .iter()
        .map(|c| (c.key.clone().unwrap().name, c.action()))
        .collect()
}

/// The `ValidationFailure` in an `INVALID_ARGUMENT` status.
fn problems(status: &Status) -> Vec<wire::ResourceError> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    admin::ValidationFailure::decode(status.details())
        .unwrap()
        .errors
}

const BAD_ROUTE: &str = "kind: Route\nname: r1\nspec:\n  hosts: [a.example.com]\n  forward:\n    backends:\n      - service: missing\n";

#[tokio::test]
async fn grpc_admin_apply_get_list_history_rollback_delete_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, admin_token, extra) =
        single_node(tmp.path(), &[("alice", "viewer"), ("bob", "editor")]).await;
    let (viewer, editor) = (extra[0].as_str(), extra[1].as_str());
    let mut grpc = client(&node).await;

    tracing::info!("--- apply a YAML bundle: two services created, audited as bob");
    let bundle = format!("{}---\n{}", service("b"), service("a"));
    let applied = grpc
        .apply(request(
            ApplyRequest {
                source: yaml(&bundle),
                ..Default::default()
            },
            Some(editor),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.revision, 1);
    assert!(!applied.dry_run);
    assert_eq!(
        actions(&applied.changes),
        [("a".into(), Action::Created), ("b".into(), Action::Created)]
    );

    tracing::info!("--- apply encoded resources: one updated, one unchanged");
    let changed_a = service("a").replace("10.0.0.1", "10.0.0.2");
    let applied = grpc
        .apply(request(
            ApplyRequest {
                source: encoded(&format!("{changed_a}---\n{}", service("b"))),
                if_match: Some(1),
                ..Default::default()
            },
            Some(editor),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.revision, 2);
    assert_eq!(
        actions(&applied.changes),
        [
            ("a".into(), Action::Updated),
            ("b".into(), Action::Unchanged)
        ]
    );

    tracing::info!("--- a dry run shows the change and commits nothing");
    let dry = grpc
        .apply(request(
            ApplyRequest {
                source: yaml(&service("c")),
                dry_run: true,
                ..Default::default()
            },
            Some(editor),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(dry.dry_run);
    assert_eq!(dry.revision, 2);
    assert_eq!(actions(&dry.changes), [("c".into(), Action::Created)]);

    tracing::info!("--- get and list, by a viewer");
    let got = grpc
        .get(request(
            GetRequest {
                key: Some(key(Kind::Service, "a")),
            },
            Some(viewer),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.revision, 2);
    let resource = fleetgate_shared::Resource::try_from(got.resource.unwrap()).unwrap();
    assert_eq!(
        resource,
        fleetgate_shared::parse_bundle(&changed_a, Format::Yaml, "").unwrap()[0]
    );
    let missing = grpc
        .get(request(
            GetRequest {
                key: Some(key(Kind::Service, "c")),
            },
            Some(viewer),
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let listed = grpc
        .list(request(
            ListRequest {
                kind: Kind::Service.into(),
            },
            Some(viewer),
        ))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!((names, listed.revision), (vec!["a", "b"], 2));
    let routes = grpc
        .list(request(
            ListRequest {
                kind: Kind::Route.into(),
            },
            Some(viewer),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(routes.resources.is_empty());
    let all = grpc
        .list(request(ListRequest::default(), Some(viewer)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.resources.len(), 2);

    tracing::info!("--- 401 and 403 equivalents");
    for token in [None, Some("fgt_0000")] {
        let denied = grpc
            .list(request(ListRequest::default(), token))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::Unauthenticated, "{denied:?}");
    }
    let denied = grpc
        .apply(request(
            ApplyRequest {
                source: yaml(&service("c")),
                ..Default::default()
            },
            Some(viewer),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = grpc
        .delete(request(
            DeleteRequest {
                key: Some(key(Kind::Service, "a")),
                if_match: None,
            },
            Some(viewer),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    tracing::info!("--- validation: every problem in a ValidationFailure; bad encodings too");
    let invalid = grpc
        .apply(request(
            ApplyRequest {
                source: yaml(BAD_ROUTE),
                ..Default::default()
            },
            Some(editor),
        ))
        .await
        .unwrap_err();
    let found = problems(&invalid);
    assert!(found.iter().any(|p| p.resource == "route/r1"), "{found:?}");
    let mut unknown_field = wire::Resource::from(
        &fleetgate_shared::parse_bundle(&service("x"), Format::Yaml, "").unwrap()[0],
    );
    unknown_field.spec_json = br#"{"endpoints":[{"address":"10.0.0.1:80"}],"wieght":1}"#.to_vec();
    let invalid = grpc
        .apply(request(
            ApplyRequest {
                source: Some(Source::Resources(ResourceList {
                    items: vec![unknown_field],
                })),
                ..Default::default()
            },
            Some(editor),
        ))
        .await
        .unwrap_err();
    let found = problems(&invalid);
    assert_eq!(found[0].resource, "service/x", "{found:?}");
    let no_source = grpc
        .apply(request(ApplyRequest::default(), Some(editor)))
        .await
        .unwrap_err();
    assert_eq!(no_source.code(), Code::InvalidArgument);

    tracing::info!("--- a stale if_match: ABORTED with the current revision");
    let stale = grpc
        .apply(request(
            ApplyRequest {
                source: yaml(&service("c")),
                if_match: Some(1),
                ..Default::default()
            },
            Some(editor),
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    assert_eq!(
        stale.metadata().get(CURRENT_REVISION_METADATA).unwrap(),
        "2"
    );

    tracing::info!("--- rollback to 1, then delete; the history has authors and summaries");
    let rolled = grpc
        .rollback(request(
            RollbackRequest {
                to_revision: 1,
                if_match: Some(2),
            },
            Some(editor),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.revision, 3);
    assert_eq!(actions(&rolled.changes), [("a".into(), Action::Updated)]);
    let unknown = grpc
        .rollback(request(
            RollbackRequest {
                to_revision: 99,
                if_match: None,
            },
            Some(editor),
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let deleted = grpc
        .delete(request(
            DeleteRequest {
                key: Some(key(Kind::Service, "b")),
                if_match: Some(3),
            },
            Some(admin_token.as_str()),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.revision, 4);
    let gone = grpc
        .delete(request(
            DeleteRequest {
                key: Some(key(Kind::Service, "b")),
                if_match: None,
            },
            Some(editor),
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let history = grpc
        .history(request(HistoryRequest { limit: 0 }, Some(viewer)))
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<(u64, &str, &str)> = history
        .revisions
        .iter()
        .map(|r| (r.revision, r.author.as_str(), r.summary.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (4, "bootstrap-admin", "apply: 1 deleted"),
            (3, "bob", "rollback to 1: 1 updated"),
            (2, "bob", "apply: 1 updated"),
            (1, "bob", "apply: 2 created"),
        ]
    );
    assert!(history.revisions.iter().all(|r| r.checksum.len() == 64));
    let page = grpc
        .history(request(HistoryRequest { limit: 1 }, Some(viewer)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.revisions.len(), 1);

    tracing::info!("--- cluster status");
    let status = grpc
        .cluster_status(request(ClusterStatusRequest {}, Some(viewer)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.node_id, status.leader, status.revision),
        (1, Some(1), 4)
    );
    assert_eq!(status.members.len(), 1);
    assert!(status.members[0].voter);
    assert_eq!(status.members[0].address, node.raft);

    tracing::info!("--- REST on the same port is unchanged");
    let api = Api::of(&node);
    let (code, body) = api.get_json(&node.api, "/api/v1/services", viewer).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["revision"], 4);
    let reply = api
        .call(Method::GET, &node.api, "/nowhere", Some(viewer), None, "")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn grpc_admin_writes_through_a_follower_reach_the_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, token) = three_nodes(tmp.path()).await;
    let api = Api::of(&nodes[0]);
    let leader = api.leader(&nodes[0].api, &token).await;
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();
    let mut grpc = client(follower).await;
    let bearer = token.as_str();
    let token = Some(bearer);

    tracing::info!("--- cluster status from a follower");
    let status = grpc
        .cluster_status(request(ClusterStatusRequest {}, token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.node_id, follower.id);
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.members.len(), 3);
    assert!(status.members.iter().all(|m| m.voter));

    tracing::info!("--- an apply through the follower is committed by the leader");
    let applied = grpc
        .apply(request(
            ApplyRequest {
                source: yaml(&service("f")),
                if_match: Some(0),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.revision, 1);
    assert_eq!(actions(&applied.changes), [("f".into(), Action::Created)]);
    // Answered once the follower has applied it too: a read there sees it at once.
    let got = grpc
        .get(request(
            GetRequest {
                key: Some(key(Kind::Service, "f")),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.revision, 1);
    let leader_node = nodes.iter().find(|n| n.id == leader).unwrap();
    let (_, history) = api
        .get_json(&leader_node.api, "/api/v1/revisions", bearer)
        .await;
    assert_eq!(history["revision"], 1);
    assert_eq!(history["items"][0]["author"], "bootstrap-admin");

    tracing::info!("--- conflicts and validation are reported through the follower too");
    let stale = grpc
        .apply(request(
            ApplyRequest {
                source: yaml(&service("g")),
                if_match: Some(0),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    assert_eq!(
        stale.metadata().get(CURRENT_REVISION_METADATA).unwrap(),
        "1"
    );
    let invalid = grpc
        .apply(request(
            ApplyRequest {
                source: yaml(BAD_ROUTE),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap_err();
    assert!(problems(&invalid).iter().any(|p| p.resource == "route/r1"));

    tracing::info!("--- delete and rollback through the follower");
    let deleted = grpc
        .delete(request(
            DeleteRequest {
                key: Some(key(Kind::Service, "f")),
                if_match: Some(1),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.revision, 2);
    let rolled = grpc
        .rollback(request(
            RollbackRequest {
                to_revision: 1,
                if_match: None,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.revision, 3);
    assert_eq!(actions(&rolled.changes), [("f".into(), Action::Created)]);

    tracing::info!("--- every node converged on the same content");
    for node in &nodes {
        let status = api.wait_revision(&node.api, bearer, 3).await;
        assert_eq!(status.revision, 3);
    }
    let (_, leader_view) = api
        .get_json(&leader_node.api, "/api/v1/services/f", bearer)
        .await;
    assert_eq!(json_name(&leader_view), "f");
}

fn json_name(value: &serde_json::Value) -> &str {
    value["name"].as_str().unwrap_or_default()
}
