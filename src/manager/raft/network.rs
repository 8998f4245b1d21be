//! Raft between managers over gRPC (proto's `Raft` service) on the cluster port, with
//! mutual TLS: this manager shows its own (manager) certificate and checks the peer's
//! against the swarm's roots. openraft's requests and responses travel as JSON.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::raft_client::RaftClient;
use shoal_proto::RaftMessage;
use tonic::transport::Channel;

use super::TypeConfig;
use crate::tls::transport::channel;

/// The TLS configuration peers are reached with; replaced when this node's certificate
/// is renewed. Empty until the node has one (then every peer is unreachable).
pub type PeerTls = Arc<RwLock<Option<Arc<ClientConfig>>>>;

/// A channel and the TLS configuration it was made with.
type MadeWith = (Arc<ClientConfig>, Channel);

/// Makes one client per peer; channels are shared by address and reconnect by
/// themselves.
#[derive(Clone, Default)]
pub struct GrpcNetwork {
    pub tls: PeerTls,
    /// By address, with the TLS configuration each was made with (a renewed
    /// certificate makes new ones).
    channels: Arc<Mutex<HashMap<String, MadeWith>>>,
}

impl GrpcNetwork {
    pub fn new(tls: PeerTls) -> GrpcNetwork {
        GrpcNetwork {
            tls,
            channels: Arc::default(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let cfg = self
            .tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or("this manager has no certificate yet")?;
        let mut chans = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made_with, c)) = chans.get(addr) {
            if Arc::ptr_eq(made_with, &cfg) {
                return Ok(c.clone());
            }
        }
        let c = channel(addr, cfg.clone()).map_err(|e| e.to_string())?;
        chans.insert(addr.to_string(), (cfg, c.clone()));
        Ok(c)
    }
}

pub struct Peer {
    target: u64,
    addr: String,
    net: GrpcNetwork,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = Peer;
    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            net: self.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

type Rpc =
    fn(
        &mut RaftClient<Channel>,
        RaftMessage,
    ) -> futures::future::BoxFuture<'_, Result<tonic::Response<RaftMessage>, tonic::Status>>;

impl Peer {
    /// Sends one request and decodes the peer's `Result<Resp, E>`.
    async fn call<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        req: &Req,
        opt: &RPCOption,
        rpc: Rpc,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        self.call_with(encode(req).map_err(RPCError::Network)?, opt, rpc)
            .await
    }

    /// [`Peer::call`] with the request encoded already.
    async fn call_with<Resp: DeserializeOwned, E>(
        &self,
        data: Vec<u8>,
        opt: &RPCOption,
        rpc: Rpc,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |m: String| RPCError::Unreachable(Unreachable::new(&Failure(m)));
        let mut client = RaftClient::new(self.net.channel(&self.addr).map_err(unreachable)?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let resp = tokio::time::timeout(opt.hard_ttl(), rpc(&mut client, RaftMessage { data }))
            .await
            .map_err(|_| unreachable(format!("{}: no answer in time", self.addr)))?
            .map_err(|s| unreachable(format!("{}: {}", self.addr, s.message())))?;
        let r: Result<Resp, RaftError<u64, E>> = serde_json::from_slice(&resp.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&Failure(e.to_string()))))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn encode<Req: Serialize>(req: &Req) -> Result<Vec<u8>, NetworkError> {
    serde_json::to_vec(req).map_err(|e| NetworkError::new(&Failure(e.to_string())))
}

/// The most an AppendEntries message carries, encoded, unless one entry alone is more:
/// openraft allows 300 entries per message, which with big transactions (up to
/// `store::MAX_TX_BYTES` each) would be hundreds of MiB, and every message must arrive
/// within a heartbeat period (a follower once never caught up with a log of 4 MB
/// entries).
const APPEND_BYTES: usize = 1 << 20;

/// How many of `n` entries that encode to `size` bytes fit in [`APPEND_BYTES`] (at least
/// one), when not all do.
fn entries_that_fit(n: usize, size: usize) -> Option<u64> {
    (size > APPEND_BYTES && n > 1).then(|| (n * APPEND_BYTES / size).clamp(1, n - 1) as u64)
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        o: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let data = encode(&rpc).map_err(RPCError::Network)?;
        if let Some(n) = entries_that_fit(rpc.entries.len(), data.len()) {
            // openraft sends fewer next time (for the next ten messages)
            return Err(RPCError::PayloadTooLarge(
                openraft::error::PayloadTooLarge::new_entries_hint(n),
            ));
        }
        self.call_with(data, &o, |c, m| Box::pin(c.append_entries(m)))
            .await
    }
    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        o: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(&rpc, &o, |c, m| Box::pin(c.install_snapshot(m)))
            .await
    }
    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        o: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(&rpc, &o, |c, m| Box::pin(c.vote(m))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_appends_are_cut_to_what_fits_and_one_entry_always_goes() {
        assert_eq!(entries_that_fit(300, 1000), None);
        assert_eq!(entries_that_fit(300, 3 * APPEND_BYTES), Some(100));
        assert_eq!(entries_that_fit(2, 100 * APPEND_BYTES), Some(1));
        assert_eq!(
            entries_that_fit(1, 100 * APPEND_BYTES),
            None,
            "one entry goes whole"
        );
    }
}
