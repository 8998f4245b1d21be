//! Role changes: this node's manager started (at init, join or promotion) and stopped
//! (at demotion), its cluster port served, and Raft started again should it stop on a
//! storage error.

use std::sync::{Arc, RwLock};

use anyhow::Context;
use shoal_proto::*;
use tokio_util::sync::CancellationToken;

use super::state::SwarmState;
use super::swarm::with_default_port;
use super::Daemon;
use crate::manager::node::{Manager, ManagerOpts};
use crate::tls::{transport, NodeCerts};

impl Daemon {
    /// Starts this node's manager; `init` makes a new Raft group of one with its cluster
    /// object (and the state of the swarm it replaces, for `--force-new-cluster`).
    pub(super) async fn start_manager(
        &self,
        st: &SwarmState,
        init: Option<(Cluster, Option<crate::manager::store::Tables>)>,
    ) -> anyhow::Result<Manager> {
        let (dir, node_id) = (self.local.swarm_dir(), self.node_id());
        let (init, restore) = match init {
            Some((c, r)) => (Some(c), r),
            None => (None, None),
        };
        Manager::start(ManagerOpts {
            dir: &dir,
            node_id: &node_id,
            hostname: &self.hostname,
            addr: &st.advertise_addr,
            raft_id: st.raft_id.max(1),
            init,
            restore,
            tls: self.trust.peer.clone(),
            seal: crate::manager::raft::seal::Sealer::load_or_create(
                &crate::tls::NodeCerts::dir(&self.local.data_root)
                    .join(crate::manager::raft::seal::DEK_FILE),
            )?,
        })
        .await
    }

    /// `m` is this node's manager from now on; should its Raft stop on an error, it is
    /// started again ([`restart_raft_when_it_stops`]).
    pub(super) fn set_manager(self: &Arc<Self>, m: Arc<Manager>) {
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
        tokio::spawn(restart_raft_when_it_stops(
            Arc::downgrade(self),
            Arc::downgrade(&m),
            m.raft.metrics(),
        ));
    }

    /// A node admitted as a manager: serve the cluster port, start Raft empty, and ask
    /// the leader to add this manager to the group; done once a leader is heard from.
    pub(super) async fn join_raft(
        self: &Arc<Self>,
        st: &mut SwarmState,
        listen: &str,
        raft_id: u64,
        remote: &str,
        certs: &NodeCerts,
        fresh: bool,
    ) -> anyhow::Result<()> {
        let listen = with_default_port(
            if listen.is_empty() { "0.0.0.0" } else { listen },
            "--listen-addr",
        )?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("--listen-addr {listen}: cannot listen there"))?;
        let bound = listener.local_addr()?;
        let ip = st
            .advertise_addr
            .parse::<std::net::IpAddr>()
            .or_else(|_| {
                st.advertise_addr
                    .parse::<std::net::SocketAddr>()
                    .map(|a| a.ip())
            })
            .context("--advertise-addr: a manager advertises an IP address")?;
        st.advertise_addr = std::net::SocketAddr::new(ip, bound.port()).to_string();
        st.role = "manager".into();
        st.listen_addr = bound.to_string();
        st.raft_id = raft_id;
        // the state (cluster ID included) is in place before the leader calls in
        self.local.save(Some(st.clone()))?;
        self.serve_cluster_port(listener, certs)?;
        let m = Arc::new(self.start_manager(st, None).await?);
        self.set_manager(m.clone());
        let joined = shoal_proto::raft_client::RaftClient::new(self.channel_to(remote)?)
            .join(RaftJoinRequest {
                node_id: self.node_id(),
                raft_id,
                addr: st.advertise_addr.clone(),
            })
            .await;
        let resp = match joined {
            Ok(r) => r.into_inner(),
            Err(e) => {
                self.stop_cluster_port();
                m.stop().await;
                *self.manager.write().unwrap_or_else(|p| p.into_inner()) = None;
                let _ = std::fs::remove_dir_all(self.local.swarm_dir().join("raft.redb"));
                if fresh {
                    self.local.save(None)?;
                    let _ = std::fs::remove_dir_all(self.local.swarm_dir());
                    NodeCerts::remove(&self.local.data_root);
                }
                anyhow::bail!("joining the managers' Raft group failed: {}", e.message());
            }
        };
        st.managers = resp.managers;
        self.local.save(Some(st.clone()))?;
        m.raft
            .wait(Some(std::time::Duration::from_secs(30)))
            .metrics(|x| x.current_leader.is_some(), "a leader")
            .await
            .context("joined, but no leader was heard from within 30 s")?;
        Ok(())
    }

    pub(super) fn serve_cluster_port(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        certs: &NodeCerts,
    ) -> anyhow::Result<()> {
        let tls = Arc::new(RwLock::new(transport::server_config(certs)?));
        *self.trust.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls.clone());
        let token = CancellationToken::new();
        (self.cluster_port_server)(self.clone(), listener, tls, token.clone());
        *self.cluster_port.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
        Ok(())
    }

    pub(super) fn stop_cluster_port(&self) {
        if let Some(t) = self
            .cluster_port
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.cancel();
        }
    }

    /// Promotion or demotion, as the managers want it (`node promote|demote`): a new
    /// certificate for the role, then Raft joined (the leader adds this manager) or left
    /// (the leader has removed it already).
    pub(super) async fn take_role(
        self: &Arc<Self>,
        want: i32,
        managers: Vec<String>,
    ) -> anyhow::Result<()> {
        let _g = self.admin.lock().await;
        let Some(mut st) = self.local.swarm() else {
            return Ok(());
        };
        let is_manager = self.manager().is_some();
        let via = self
            .manager_to_ask(&managers)
            .context("no manager address is known")?;
        if want == NodeRole::Manager as i32 && !is_manager {
            tracing::info!("promoted: becoming a manager");
            let (certs, raft_id) = self.renew_certificate(&via).await?;
            let listen = st.listen_addr.clone();
            self.join_raft(&mut st, &listen, raft_id, &via, &certs, false)
                .await?;
        } else if want == NodeRole::Worker as i32 && is_manager {
            tracing::info!("demoted: becoming a worker");
            self.renew_certificate(&via).await?;
            self.stop_cluster_port();
            let m = self
                .manager
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(m) = m {
                m.stop().await;
            }
            let _ = std::fs::remove_file(self.local.swarm_dir().join("raft.redb"));
            st.role = "worker".into();
            st.listen_addr.clear();
            st.raft_id = 0;
            st.managers = managers;
            self.local.save(Some(st))?;
        }
        Ok(())
    }
}

/// Raft stops for good on a storage error: a write that met a full disk, say, which the
/// managers' space checks did not foresee (they refuse changes and entries beforehand).
/// Then the manager is started again from its database, in this daemon, once its disk
/// has [`NO_SPACE_RESERVE`] free, so that it resumes by itself; until then its reads
/// answer from what it had, and its writes are refused.
async fn restart_raft_when_it_stops(
    d: std::sync::Weak<Daemon>,
    m: std::sync::Weak<Manager>,
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, openraft::BasicNode>>,
) {
    use crate::manager::raft::NO_SPACE_RESERVE;
    let fatal = loop {
        if let Err(e) = &metrics.borrow_and_update().running_state {
            break e.clone();
        }
        if metrics.changed().await.is_err() {
            return; // the manager was stopped
        }
    };
    if matches!(fatal, openraft::error::Fatal::Stopped) {
        return;
    }
    let Some(dir) = d.upgrade().map(|d| d.local.swarm_dir()) else {
        return;
    };
    tracing::error!(
        "Raft stopped: {fatal}; this manager starts it again once {} has {} MiB free",
        dir.display(),
        NO_SPACE_RESERVE >> 20
    );
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        // a condition polled, with a back-off should the restart fail again
        tokio::time::sleep(delay).await;
        let free = shoal_runtime::files::free_bytes(&dir).unwrap_or(u64::MAX);
        if free < NO_SPACE_RESERVE {
            continue;
        }
        let (Some(d), Some(old)) = (d.upgrade(), m.upgrade()) else {
            return;
        };
        let _g = d.admin.lock().await;
        let current = d.manager();
        let (Some(st), Some(current)) = (d.local.swarm(), current) else {
            return; // it left the swarm or was demoted meanwhile
        };
        if !Arc::ptr_eq(&current, &old) {
            return; // another manager took its place meanwhile
        }
        old.stop().await;
        drop((old, current));
        match d.start_manager(&st, None).await {
            Ok(new) => {
                tracing::info!("Raft started again");
                d.set_manager(Arc::new(new));
                return;
            }
            Err(e) => {
                tracing::error!("starting Raft again failed ({e:#}); trying again");
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}
