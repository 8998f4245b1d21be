//! Trust: this node's certificate, the roots it trusts, and their changes: the TLS it
//! shows managers and its cluster port serves, renewal at two thirds of a certificate's
//! life, and a CA rotation taken in.

use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use shoal_proto::*;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::manager::raft::network::PeerTls;
use crate::tls::{transport, NodeCerts};

/// What this node shows and trusts.
#[derive(Default)]
pub struct Trust {
    /// How this node reaches managers (its certificate); shared with Raft's network.
    pub peer: PeerTls,
    /// The cluster port's TLS configuration (a manager's), replaced on renewal.
    pub(super) server: Mutex<Option<transport::SharedServerConfig>>,
    /// The digest of the root that signed this node's certificate, as agents tell it.
    pub cert_root: Arc<RwLock<String>>,
}

impl Daemon {
    /// This node's certificate is what it shows other nodes from now on.
    pub(super) fn set_certs(&self, certs: &NodeCerts) -> anyhow::Result<()> {
        *self.trust.peer.write().unwrap_or_else(|p| p.into_inner()) =
            Some(transport::client_config(certs)?);
        *self.links.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(server) = self
            .trust
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            *server.write().unwrap_or_else(|p| p.into_inner()) = transport::server_config(certs)?;
        }
        Ok(())
    }

    pub(super) fn set_cert_root(&self, digest: &str) -> anyhow::Result<()> {
        *self
            .trust
            .cert_root
            .write()
            .unwrap_or_else(|p| p.into_inner()) = digest.to_string();
        if let Some(mut st) = self.local.swarm() {
            st.cert_root_digest = digest.to_string();
            self.local.save(Some(st))?;
        }
        Ok(())
    }

    /// A certificate for the role the managers now want this node to have.
    pub(super) async fn renew_certificate(&self, via: &str) -> anyhow::Result<(NodeCerts, u64)> {
        let (key_pem, csr_pem) = crate::tls::new_key_and_csr()?;
        let resp = shoal_proto::node_ca_client::NodeCaClient::new(self.channel_to(via)?)
            .renew_node_certificate(RenewNodeCertificateRequest { csr_pem })
            .await
            .map_err(|e| anyhow::anyhow!("renewing the certificate at {via}: {}", e.message()))?
            .into_inner();
        let certs = NodeCerts {
            cert_pem: resp.cert_pem,
            key_pem,
            roots_pem: resp.roots_pem,
        };
        certs.save(&self.local.data_root)?;
        self.set_certs(&certs)?;
        self.set_cert_root(&resp.cert_root_digest)?;
        Ok((certs, resp.raft_id))
    }

    /// The manager to ask for a certificate: the leader (this node itself when it
    /// leads), or on a worker the first of the managers it knows.
    pub(super) fn manager_to_ask(&self, known: &[String]) -> Option<String> {
        match self.manager() {
            Some(m) => m
                .leader_addr()
                .or_else(|| self.local.swarm().map(|s| s.advertise_addr)),
            None => known.first().cloned(),
        }
    }

    /// Renews this node's certificate when it is two thirds through its life; checked
    /// every minute while the daemon runs.
    pub(super) async fn renew_when_due(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let due = NodeCerts::load(&self.local.data_root)
                .ok()
                .flatten()
                .and_then(|c| c.identity().ok())
                .is_some_and(|id| {
                    id.due_for_renewal(time::OffsetDateTime::now_utc().unix_timestamp())
                });
            if due {
                let _g = self.admin.lock().await;
                let known = self.local.swarm().map(|s| s.managers).unwrap_or_default();
                match self.manager_to_ask(&known) {
                    Some(via) => match self.renew_certificate(&via).await {
                        Ok(_) => {
                            tracing::info!("renewed this node's certificate before it expires");
                            self.links.reconnect.notify_one();
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "certificate renewal failed; retrying in a minute")
                        }
                    },
                    None => {
                        tracing::warn!("certificate renewal due, but no manager address is known")
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            }
        }
    }

    /// The swarm's roots changed (a CA rotation): trust them, and when the signing root
    /// is not the one that signed this node's certificate, get a new certificate and
    /// say so in a new session.
    pub(super) async fn take_trust(
        &self,
        roots: String,
        ca_digest: String,
        managers: Vec<String>,
    ) -> anyhow::Result<()> {
        let _g = self.admin.lock().await;
        let Some(mut certs) = NodeCerts::load(&self.local.data_root)? else {
            return Ok(());
        };
        if certs.roots_pem != roots {
            certs.roots_pem = roots;
            certs.save(&self.local.data_root)?;
            self.set_certs(&certs)?;
            tracing::info!("the swarm's trusted roots changed");
        }
        let mine = self
            .trust
            .cert_root
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if mine != ca_digest {
            let via = self
                .manager_to_ask(&managers)
                .context("no manager address is known")?;
            self.renew_certificate(&via).await?;
            tracing::info!("renewed this node's certificate from the new root CA");
            self.links.reconnect.notify_one();
        }
        Ok(())
    }
}
