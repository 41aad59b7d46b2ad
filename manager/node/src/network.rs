//! openraft's network ([`RaftNetworkFactory`], [`RaftNetwork`]) over any [`RaftTransport`].

use std::error::Error as StdError;

use fleetgate_manager_store::{ManagerNode, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::transport::{RaftTransport, RpcKind, TransportError};

/// Makes a [`NetworkClient`] per peer; all share one transport.
#[derive(Clone, Debug)]
pub struct NetworkFactory<T> {
    transport: T,
}

impl<T: RaftTransport> NetworkFactory<T> {
    pub fn new(transport: T) -> Self {
        Self { transport }
    }
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for NetworkFactory<T> {
    type Network = NetworkClient<T>;

    async fn new_client(&mut self, target: NodeId, node: &ManagerNode) -> Self::Network {
        NetworkClient {
            transport: self.transport.clone(),
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

/// openraft's client for one peer.
#[derive(Debug)]
pub struct NetworkClient<T> {
    transport: T,
    target: NodeId,
    addr: String,
}

#[derive(Debug, thiserror::Error)]
#[error("Raft RPC timed out after {0:?}")]
struct TimedOut(std::time::Duration);

#[derive(Debug, thiserror::Error)]
#[error("bad Raft reply: {0}")]
struct BadReply(serde_json::Error);

impl<T: RaftTransport> NetworkClient<T> {
    async fn rpc<Req, Resp, E>(
        &self,
        kind: RpcKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, ManagerNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned + StdError,
    {
        let payload = serde_json::to_vec(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&BadReply(e))))?;
        let ttl = option.hard_ttl();
        let reply = tokio::time::timeout(ttl, self.transport.call(&self.addr, kind, payload))
            .await
            .map_err(|_| RPCError::Network(NetworkError::new(&TimedOut(ttl))))?;
        let bytes = match reply {
            Ok(bytes) => bytes,
            Err(e @ TransportError::Unreachable { .. }) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Err(e @ TransportError::Failed { .. }) => {
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        let result: Result<Resp, E> = serde_json::from_slice(&bytes)
            .map_err(|e| RPCError::Network(NetworkError::new(&BadReply(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for NetworkClient<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ManagerNode, RaftError<NodeId>>>
    {
        self.rpc(RpcKind::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ManagerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(RpcKind::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ManagerNode, RaftError<NodeId>>> {
        self.rpc(RpcKind::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use openraft::Vote;
    use openraft::error::RaftError;

    use super::*;

    /// A transport that answers every call with one canned outcome and records what it sent.
    #[derive(Clone)]
    struct Canned {
        reply: Arc<dyn Fn() -> Result<Vec<u8>, TransportError> + Send + Sync>,
        sent: Arc<Mutex<Vec<(String, RpcKind)>>>,
    }

    impl RaftTransport for Canned {
        async fn call(
            &self,
            addr: &str,
            kind: RpcKind,
            _payload: Vec<u8>,
        ) -> Result<Vec<u8>, TransportError> {
            self.sent.lock().unwrap().push((addr.to_owned(), kind));
            (self.reply)()
        }
    }

    async fn canned(
        reply: impl Fn() -> Result<Vec<u8>, TransportError> + Send + Sync + 'static,
    ) -> (NetworkClient<Canned>, Arc<Mutex<Vec<(String, RpcKind)>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut factory = NetworkFactory::new(Canned {
            reply: Arc::new(reply),
            sent: sent.clone(),
        });
        let node = ManagerNode {
            raft_addr: "peer:1".into(),
            ..ManagerNode::default()
        };
        (factory.new_client(2, &node).await, sent)
    }

    fn vote_request() -> VoteRequest<NodeId> {
        VoteRequest::new(Vote::new(1, 1), None)
    }

    fn option() -> RPCOption {
        RPCOption::new(std::time::Duration::from_secs(1))
    }

    #[tokio::test]
    async fn a_reply_is_decoded_and_sent_to_the_peer_s_raft_address() {
        let ok: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            Ok(VoteResponse::new(Vote::new(1, 2), None, true));
        let bytes = serde_json::to_vec(&ok).unwrap();
        let (mut client, sent) = canned(move || Ok(bytes.clone())).await;
        let response = client.vote(vote_request(), option()).await.unwrap();
        assert!(response.vote_granted);
        assert_eq!(
            sent.lock().unwrap().as_slice(),
            &[("peer:1".to_owned(), RpcKind::Vote)]
        );
    }

    #[tokio::test]
    async fn transport_failures_and_remote_errors_map_to_openraft_s_kinds() {
        let (mut client, _) = canned(|| {
            Err(TransportError::Unreachable {
                addr: "peer:1".into(),
                reason: "refused".into(),
            })
        })
        .await;
        let error = client.vote(vote_request(), option()).await.unwrap_err();
        assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");

        let (mut client, _) = canned(|| Ok(b"not json".to_vec())).await;
        let error = client.vote(vote_request(), option()).await.unwrap_err();
        assert!(matches!(error, RPCError::Network(_)), "{error:?}");

        let remote: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        let bytes = serde_json::to_vec(&remote).unwrap();
        let (mut client, _) = canned(move || Ok(bytes.clone())).await;
        let error = client.vote(vote_request(), option()).await.unwrap_err();
        match error {
            RPCError::RemoteError(e) => assert_eq!(e.target, 2),
            other => panic!("expected a remote error, got {other:?}"),
        }
    }
}
