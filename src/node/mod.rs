//! The daemon of a node: `shoal daemon`, one per host, as root. It holds the node's
//! parts (its state on disk, its trust, its links to the managers, the container
//! runtime, its manager when it is one, its agent) and serves what the local API asks of
//! them. SIGTERM stops it cleanly and leaves every container running; the next start
//! re-adopts them.
//!
//! Layout, one file per concern:
//! - `state`: the node's ID and swarm state on disk, and the data root made root's alone.
//! - `swarm`: the swarm's life cycle: init, join, leave, `--force-new-cluster`, tokens.
//! - `role`: this node's manager started and stopped (promotion, demotion), its
//!   cluster port, and Raft restarted after a storage error.
//! - `trust`: certificates and roots: renewal, rotation, the TLS shown and served.
//! - `links`: connections to the managers: channels, the agent and its dispatcher, and
//!   standalone containers' network attachments.
//! - `logs`: the lines of this node's tasks, for `service logs`.
//! - `socket`: the local socket's path and a channel to it.
//!
//! The cluster port's gRPC services (`crate::api`) are given to [`Daemon::open`] as a
//! function, so `api` depends on this module and never the other way round.

mod links;
mod logs;
mod role;
pub mod socket;
mod state;
mod swarm;
mod trust;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use shoal_proto::*;
use shoal_runtime::container::ContainerRuntime;
use tokio_util::sync::CancellationToken;

use crate::manager::node::Manager;
use crate::tls::transport::SharedServerConfig;
use crate::tls::NodeCerts;

pub use state::secure_data_root;

pub const NOT_MANAGER: &str = "This node is not a swarm manager. Use \"shoal swarm init\" or \"shoal swarm join\" to connect this node to swarm and try again.";

/// Serves the cluster port's gRPC services on a listener with a TLS configuration,
/// until the token is cancelled (`crate::api::cluster::serve`).
pub type ClusterPortServer = Arc<
    dyn Fn(Arc<Daemon>, tokio::net::TcpListener, SharedServerConfig, CancellationToken)
        + Send
        + Sync,
>;

pub struct Daemon {
    /// The node's ID and swarm state, on disk.
    pub local: state::LocalState,
    pub hostname: String,
    pub runtime: ContainerRuntime,
    /// This node's certificate and trusted roots.
    trust: trust::Trust,
    /// How this node reaches its managers.
    links: links::Links,
    /// The node's manager, while it is one.
    manager: RwLock<Option<Arc<Manager>>>,
    /// Stops the agent.
    agent: Mutex<Option<CancellationToken>>,
    /// Stops the cluster port (a manager's).
    cluster_port: Mutex<Option<CancellationToken>>,
    /// Serves the cluster port.
    cluster_port_server: ClusterPortServer,
    /// The node's overlays and task namespaces (one for the daemon's life: standalone
    /// containers' network attachments are looked up in it too).
    net: Arc<crate::agent::net::NodeNet>,
    /// Serializes init, join, leave and the changes of role and trust.
    admin: tokio::sync::Mutex<()>,
    /// What the managers sent for this node's tasks (credentials, secrets, configs), in
    /// memory only; shared by each agent this daemon runs.
    held: Arc<crate::agent::files::Held>,
}

impl Daemon {
    /// The daemon of `data_root`, serving `socket` (and, on a manager, the cluster port
    /// with `cluster_port`); its tasks' resolvers forward other names to `dns` (none
    /// given: the nameservers of /etc/resolv.conf).
    pub async fn open(
        data_root: PathBuf,
        socket: PathBuf,
        runtime: ContainerRuntime,
        dns: Vec<std::net::SocketAddr>,
        cluster_port: ClusterPortServer,
    ) -> anyhow::Result<Arc<Daemon>> {
        let local = state::LocalState::load(data_root)?;
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into());
        let dns = if dns.is_empty() {
            shoal_net::dns::Directory::from_host()
        } else {
            shoal_net::dns::Directory::forwarding_to(dns)
        };
        let net = Arc::new(crate::agent::net::NodeNet::new(
            &local.data_root.join("netns"),
            dns,
        ));
        let state = local.swarm();
        let trust = trust::Trust::default();
        *trust.cert_root.write().unwrap_or_else(|p| p.into_inner()) = state
            .as_ref()
            .map(|s| s.cert_root_digest.clone())
            .unwrap_or_default();
        let d = Arc::new(Daemon {
            local,
            hostname,
            runtime,
            trust,
            links: links::Links::new(socket),
            manager: RwLock::new(None),
            agent: Mutex::new(None),
            cluster_port: Mutex::new(None),
            cluster_port_server: cluster_port,
            net,
            admin: tokio::sync::Mutex::new(()),
            held: Arc::default(),
        });
        let Some(st) = state else { return Ok(d) };
        let certs = NodeCerts::load(&d.local.data_root)?
            .context("the node is in a swarm but its certificates are missing")?;
        d.set_certs(&certs)?;
        if st.role == "manager" {
            // serve the cluster port first: the other managers' Raft must reach us for
            // this manager to learn who leads
            let listener = tokio::net::TcpListener::bind(&st.listen_addr)
                .await
                .with_context(|| format!("listening on the cluster port {}", st.listen_addr))?;
            d.serve_cluster_port(listener, &certs)?;
            let m = d
                .start_manager(&st, None)
                .await
                .context("restarting the manager")?;
            d.set_manager(Arc::new(m));
        }
        d.start_agent(&st.managers);
        Ok(d)
    }

    pub fn node_id(&self) -> String {
        self.local.node_id()
    }

    pub fn manager(&self) -> Option<Arc<Manager>> {
        self.manager
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The swarm this node is in ("" when none); checked on every cluster-port call.
    pub fn cluster_id(&self) -> String {
        self.local.cluster_id()
    }

    pub fn info(&self) -> SwarmInfo {
        let m = self.manager();
        let st = self.local.swarm();
        SwarmInfo {
            local_node_state: if st.is_some() { "active" } else { "inactive" }.into(),
            node_id: self.node_id(),
            cluster_id: st
                .as_ref()
                .map(|s| s.cluster_id.clone())
                .unwrap_or_default(),
            is_manager: m.is_some(),
            hostname: self.hostname.clone(),
            managers: st.as_ref().map(|s| s.managers.clone()).unwrap_or_default(),
            node_addr: st.map(|s| s.advertise_addr).unwrap_or_default(),
            data_root: self.local.data_root.display().to_string(),
            cgroup_parent: self.runtime.config().cgroup_parent.clone(),
            secrets_held: self.held.counts().0 as u32,
            configs_held: self.held.counts().1 as u32,
            secrets_received: self
                .held
                .secrets_received
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub(super) fn stop_agent_and_port(&self) {
        for slot in [&self.agent, &self.cluster_port] {
            if let Some(t) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                t.cancel();
            }
        }
    }

    /// Forgets what the managers sent for this node's tasks (on leaving the swarm).
    pub(super) fn forget_held(&self) {
        self.held
            .learn(true, Default::default(), vec![], vec![], |_| {});
    }

    pub async fn stop(&self) {
        self.stop_agent_and_port();
        if let Some(m) = self.manager() {
            m.stop().await;
        }
    }
}
