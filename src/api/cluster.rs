//! The cluster port (2377 by default): the gRPC services managers offer other nodes, over
//! mutual TLS only. Who may call what:
//!
//! | service    | caller                                           |
//! |------------|--------------------------------------------------|
//! | NodeCA     | anyone (a joining node has no certificate yet)  |
//! | Dispatcher | a node certificate of this swarm                 |
//! | Control    | a manager certificate of this swarm              |
//!
//! and a certificate whose node was removed, or that names another swarm, is refused.

use std::sync::Arc;

use shoal_proto::control_server::ControlServer;
use shoal_proto::dispatcher_server::DispatcherServer;
use shoal_proto::node_ca_server::{NodeCa, NodeCaServer};
use shoal_proto::raft_server::{Raft as RaftApi, RaftServer};
use shoal_proto::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{status, Api};
use crate::manager::ca;
use crate::manager::store::Store;
use crate::node::Daemon;
use crate::tls::transport::{incoming, Peer, SharedServerConfig};
use crate::tls::Role;

/// Checks the caller of a cluster-port method: a certificate of this swarm, of a node
/// that has not been removed, with the role `need` (if any).
pub fn authorize(daemon: &Daemon, req: &Request<()>, need: Option<Role>) -> Result<(), Status> {
    let cluster_id = daemon.cluster_id();
    let m = daemon.manager();
    authorize_with(&cluster_id, m.as_ref().map(|m| &m.store), req, need)
}

fn authorize_with(
    cluster_id: &str,
    store: Option<&Store>,
    req: &Request<()>,
    need: Option<Role>,
) -> Result<(), Status> {
    let id = req
        .extensions()
        .get::<Peer>()
        .and_then(|p| p.identity.as_ref())
        .ok_or_else(|| {
            Status::unauthenticated("this call needs a node certificate of the swarm")
        })?;
    if id.cluster_id != cluster_id {
        return Err(Status::permission_denied(format!(
            "the certificate of node {} is for another swarm ({})",
            id.node_id, id.cluster_id
        )));
    }
    if need == Some(Role::Manager) && id.role != Role::Manager {
        return Err(Status::permission_denied(format!(
            "node {} is a {}: this call needs a manager",
            id.node_id,
            id.role.name()
        )));
    }
    // a manager that is still joining has no store yet; every other one checks that
    // the node is a member
    let verdict = store.and_then(|s| {
        s.view(|t| {
            let cluster = t.clusters.values().next()?;
            if cluster.removed_nodes.contains(&id.node_id) {
                return Some(Err("has been removed from the swarm"));
            }
            let Some(n) = t.nodes.get(&id.node_id) else {
                return Some(Err("has been removed from the swarm"));
            };
            // a demoted manager's certificate still says manager until it is renewed
            let manager = n.spec.as_ref().map(|s| s.desired_role) == Some(NodeRole::Manager as i32);
            if need == Some(Role::Manager) && !manager {
                return Some(Err("is no longer a manager"));
            }
            Some(Ok(()))
        })
    });
    if let Some(Err(why)) = verdict {
        return Err(Status::permission_denied(format!(
            "node {} {why}",
            id.node_id
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl NodeCa for Api {
    async fn get_root_ca_certificate(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<RootCaCertificate>, Status> {
        let m = self.manager()?;
        let c = ca::cluster(&m.store).map_err(status)?;
        Ok(Response::new(RootCaCertificate {
            cert_pem: String::from_utf8_lossy(&c.root_ca_cert).into_owned(),
        }))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let probe = Request::from_parts(meta, ext, ());
        authorize(&self.daemon, &probe, None)?;
        let id = probe
            .extensions()
            .get::<Peer>()
            .and_then(|p| p.identity.clone())
            .ok_or_else(|| Status::unauthenticated("a node certificate is required"))?;
        let m = self.manager()?;
        ca::renew_node_certificate(&m.store, &id.node_id, &r.csr_pem)
            .map(Response::new)
            .map_err(status)
    }

    async fn issue_node_certificate(
        &self,
        req: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let m = self.manager()?;
        let peer = req.extensions().get::<Peer>().map(|p| p.addr);
        let mut r = req.into_inner();
        r.addr = r.addr.trim().to_string();
        if r.addr.is_empty() {
            r.addr = peer.map(|a| a.ip().to_string()).unwrap_or_default();
        }
        // the leader writes the new node; a follower passes the request on
        if let Some(ch) = self.leader_channel().await? {
            return shoal_proto::node_ca_client::NodeCaClient::new(ch)
                .issue_node_certificate(r)
                .await;
        }
        ca::issue_node_certificate(&m.store, r)
            .await
            .map(Response::new)
            .map_err(status)
    }
}

fn decode<Req: serde::de::DeserializeOwned>(m: &RaftMessage) -> Result<Req, Status> {
    serde_json::from_slice(&m.data)
        .map_err(|e| Status::invalid_argument(format!("raft message: {e}")))
}

/// Encodes openraft's `Result` for the caller.
fn respond<T: serde::Serialize>(r: &T) -> Result<Response<RaftMessage>, Status> {
    let data = serde_json::to_vec(r).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { data }))
}

#[tonic::async_trait]
impl RaftApi for Api {
    /// Entries are refused while this manager's disk has no room for them (the leader
    /// sends them again later); heartbeats always go through.
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = self.manager()?;
        let r: openraft::raft::AppendEntriesRequest<crate::manager::raft::TypeConfig> =
            decode(req.get_ref())?;
        if !r.entries.is_empty() {
            m.room_for(req.get_ref().data.len() as u64)
                .map_err(|e| status(e.into()))?;
        }
        respond(&m.raft.append_entries(r).await)
    }
    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = self.manager()?;
        respond(&m.raft.vote(decode(req.get_ref())?).await)
    }
    /// A snapshot is refused, as entries are, while there is no room for it.
    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = self.manager()?;
        let r: openraft::raft::InstallSnapshotRequest<crate::manager::raft::TypeConfig> =
            decode(req.get_ref())?;
        m.room_for(r.offset + r.data.len() as u64)
            .map_err(|e| status(e.into()))?;
        respond(&m.raft.install_snapshot(r).await)
    }

    /// A new manager joins the Raft group (`manager::membership::add_manager`).
    /// Followers pass this to the leader.
    async fn join(
        &self,
        req: Request<RaftJoinRequest>,
    ) -> Result<Response<RaftJoinResponse>, Status> {
        if let Some(ch) = self.leader_channel().await? {
            return shoal_proto::raft_client::RaftClient::new(ch)
                .join(req.into_inner())
                .await;
        }
        let m = self.manager()?;
        let caller = req
            .extensions()
            .get::<Peer>()
            .and_then(|p| p.identity.clone())
            .ok_or_else(|| Status::unauthenticated("a manager certificate is required"))?;
        if caller.role != Role::Manager {
            return Err(Status::permission_denied(
                "a node can only add itself, with a manager certificate",
            ));
        }
        crate::manager::membership::add_manager(&m, &caller.node_id, req.get_ref())
            .await
            .map_err(status)?;
        Ok(Response::new(RaftJoinResponse {
            managers: m.member_addrs(),
        }))
    }
}

/// Serves the cluster port on `listener` until `shutdown`.
pub fn serve(
    daemon: Arc<Daemon>,
    listener: TcpListener,
    tls: SharedServerConfig,
    shutdown: CancellationToken,
) {
    let api = Api {
        daemon: daemon.clone(),
    };
    let (d1, d2) = (daemon.clone(), daemon);
    let node_only = move |r: Request<()>| authorize(&d1, &r, None).map(|_| r);
    let manager_only = move |r: Request<()>| authorize(&d2, &r, Some(Role::Manager)).map(|_| r);
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .add_service(NodeCaServer::new(api.clone()))
        .add_service(DispatcherServer::with_interceptor(api.clone(), node_only))
        .add_service(ControlServer::with_interceptor(
            api.clone(),
            manager_only.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            RaftServer::new(api)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            manager_only,
        ))
        .serve_with_incoming_shutdown(incoming(listener, tls), shutdown.cancelled_owned());
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the cluster port stopped");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::transport::{bootstrap_config, channel, client_config, server_config};
    use crate::tls::{new_key_and_csr, NodeCerts, RootCa, DEFAULT_CERT_EXPIRY};
    use shoal_proto::node_ca_client::NodeCaClient;

    /// Answers with the caller's node ID, behind the same checks as the cluster port.
    struct Echo;

    #[tonic::async_trait]
    impl NodeCa for Echo {
        async fn get_root_ca_certificate(
            &self,
            req: Request<Empty>,
        ) -> Result<Response<RootCaCertificate>, Status> {
            let id = req
                .extensions()
                .get::<Peer>()
                .and_then(|p| p.identity.clone());
            Ok(Response::new(RootCaCertificate {
                cert_pem: id.map(|i| i.node_id).unwrap_or_default(),
            }))
        }
        async fn issue_node_certificate(
            &self,
            _req: Request<IssueNodeCertificateRequest>,
        ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn renew_node_certificate(
            &self,
            _req: Request<RenewNodeCertificateRequest>,
        ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
    }

    /// The connection was dropped before any service saw the call.
    fn refused_by_transport(e: &Status) -> bool {
        matches!(
            e.code(),
            tonic::Code::Unavailable
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
                | tonic::Code::Internal
        )
    }

    fn certs(ca: &RootCa, node: &str, role: Role, cluster: &str) -> NodeCerts {
        let (key_pem, csr) = new_key_and_csr().unwrap();
        NodeCerts {
            cert_pem: ca
                .issue(&csr, node, role, cluster, DEFAULT_CERT_EXPIRY)
                .unwrap(),
            key_pem,
            roots_pem: ca.cert_pem.clone(),
        }
    }

    /// The cluster port over real TCP and rustls: plaintext and strangers are refused,
    /// a worker certificate cannot make manager calls, a removed node is refused.
    #[tokio::test(flavor = "multi_thread")]
    async fn mtls_and_roles_on_the_cluster_port() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = RootCa::generate().unwrap();
        let store = Store::in_memory();
        let mut cluster = ca::new_cluster(&ca, DEFAULT_CERT_EXPIRY);
        cluster.id = "c1".into();
        let (mgr_id, wrk_id) = ("manager0000001", "worker00000001");
        let c = cluster.clone();
        store
            .update(move |tx| {
                tx.create(c)?;
                for (id, role) in [(mgr_id, NodeRole::Manager), (wrk_id, NodeRole::Worker)] {
                    tx.create(Node {
                        id: id.into(),
                        spec: Some(NodeSpec {
                            desired_role: role as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let server_certs = certs(&ca, mgr_id, Role::Manager, "c1");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tls = Arc::new(std::sync::RwLock::new(
            server_config(&server_certs).unwrap(),
        ));
        let st = store.clone();
        let manager_only = move |r: Request<()>| {
            authorize_with("c1", Some(&st), &r, Some(Role::Manager)).map(|_| r)
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(NodeCaServer::with_interceptor(Echo, manager_only))
                .serve_with_incoming_shutdown(
                    incoming(listener, tls),
                    shutdown.clone().cancelled_owned(),
                ),
        );
        let call = |cfg| {
            let addr = addr.clone();
            async move {
                NodeCaClient::new(channel(&addr, cfg).unwrap())
                    .get_root_ca_certificate(Empty {})
                    .await
                    .map(|r| r.into_inner().cert_pem)
            }
        };

        // a manager of this swarm is let in, and the server knows who it is
        let mgr = client_config(&certs(&ca, mgr_id, Role::Manager, "c1")).unwrap();
        assert_eq!(call(mgr.clone()).await.unwrap(), mgr_id);
        // no certificate: refused
        let e = call(bootstrap_config(&ca.cert_pem).unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        // a worker: refused with the reason
        let e = call(client_config(&certs(&ca, wrk_id, Role::Worker, "c1")).unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(e.message().contains("needs a manager"), "{e}");
        // a certificate of another CA does not get through the handshake
        let other = RootCa::generate().unwrap();
        let mut stranger = certs(&other, mgr_id, Role::Manager, "c1");
        stranger.roots_pem = ca.cert_pem.clone();
        let e = call(client_config(&stranger).unwrap()).await.unwrap_err();
        assert!(refused_by_transport(&e), "{e}");
        // plaintext is not spoken on the cluster port
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await;
        if let Ok(ch) = plain {
            let e = NodeCaClient::new(ch)
                .get_root_ca_certificate(Empty {})
                .await
                .unwrap_err();
            assert!(refused_by_transport(&e), "{e}");
        }
        // a removed node's certificate is refused from then on
        let mut c = cluster.clone();
        c.removed_nodes.push(mgr_id.into());
        let c = Cluster {
            meta: store.view(|t| t.clusters["c1"].meta),
            ..c
        };
        store.update(move |tx| tx.update(c)).await.unwrap();
        let e = call(mgr).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(e.message().contains("removed"), "{e}");
        shutdown.cancel();
    }
}
