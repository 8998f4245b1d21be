//! `shoal daemon`: one per host, as root. It owns the node's identity, the container
//! runtime (and so its keeper), the manager when the node is one, the agent, and the
//! local API on a root-only Unix socket. SIGTERM stops it cleanly and leaves every
//! container running; the next start re-adopts them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use shoal_proto::*;
use shoal_runtime::container::logs::{follow_logs, read_logs, LogQuery, Stream as LogStream};
use shoal_runtime::container::ContainerRuntime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::manager::node::{Manager, ManagerOpts};
use crate::manager::raft::network::PeerTls;
use crate::manager::store::{new_id, Events, Store};
use crate::tls::{transport, JoinToken, NodeCerts, Role, RootCa};
use serde::{Deserialize, Serialize};
use shoal_proto::store_object::Object;

pub struct Daemon {
    pub data_root: PathBuf,
    pub socket: PathBuf,
    pub hostname: String,
    pub runtime: ContainerRuntime,
    node_id: RwLock<String>,
    state: RwLock<Option<SwarmState>>,
    manager: RwLock<Option<Arc<Manager>>>,
    agent: Mutex<Option<CancellationToken>>,
    cluster_port: Mutex<Option<CancellationToken>>,
    /// How this node reaches managers (its certificate); shared with Raft's network.
    peer_tls: PeerTls,
    /// A channel to the current leader, by address.
    leader_chan: Mutex<Option<(String, tonic::transport::Channel)>>,
    /// The cluster port's TLS configuration (a manager's), replaced on renewal.
    server_tls: Mutex<Option<transport::SharedServerConfig>>,
    /// The digest of the root that signed this node's certificate, as agents tell it.
    cert_root: Arc<RwLock<String>>,
    /// Makes the agent open a new session (after a renewal, to say so).
    agent_reconnect: Arc<tokio::sync::Notify>,
    /// The node's overlays and task namespaces (one for the daemon's life: standalone
    /// containers' network attachments are looked up in it too).
    net: Arc<crate::agent::net::NodeNet>,
    /// The managers' addresses as the agent last learnt them.
    agent_managers: Arc<RwLock<Vec<String>>>,
    /// Serializes init, join and leave.
    admin: tokio::sync::Mutex<()>,
}

/// What this node is in its swarm; `swarm/node.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwarmState {
    /// "manager" or "worker"
    pub role: String,
    /// The cluster port this node serves (managers), as bound.
    pub listen_addr: String,
    /// The address other nodes reach this node at.
    pub advertise_addr: String,
    /// Managers' cluster addresses, tried in turn.
    pub managers: Vec<String>,
    pub cluster_id: String,
    /// A manager's ID in the Raft group.
    #[serde(default)]
    pub raft_id: u64,
    /// The digest of the root CA that signed this node's certificate.
    #[serde(default)]
    pub cert_root_digest: String,
}

pub const DEFAULT_PORT: u16 = 2377;

fn swarm_dir(root: &Path) -> PathBuf {
    root.join("swarm")
}

fn state_file(root: &Path) -> PathBuf {
    swarm_dir(root).join("node.json")
}

/// Refuses an `--advertise-addr` IP that is not one of this host's: other nodes would
/// call an address nobody here answers (a typo, another host's address). Names are
/// left to resolve where they are used.
pub fn check_advertise_ip(addr: &str) -> anyhow::Result<()> {
    let ip = match addr.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip(),
        Err(_) => match addr.parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return Ok(()),
        },
    };
    if ip.is_unspecified() || ip.is_multicast() {
        anyhow::bail!("--advertise-addr {addr}: other nodes cannot reach this host at {ip}: give one of its own addresses");
    }
    // binding to an address succeeds only where this host has it
    if let Err(e) = std::net::UdpSocket::bind((ip, 0)) {
        if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            anyhow::bail!("--advertise-addr {addr}: {ip} is not an address of this host (see `ip addr`): give one of its own, which the other nodes can reach");
        }
    }
    Ok(())
}

/// `host[:port]` with Swarm's default port; `host` may be an IP or a name.
pub fn with_default_port(addr: &str, what: &str) -> anyhow::Result<String> {
    let a = addr.trim();
    if a.is_empty() {
        anyhow::bail!("{what}: an address is required");
    }
    if a.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(a.to_string());
    }
    if let Ok(ip) = a.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, DEFAULT_PORT).to_string());
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => {
            p.parse::<u16>()
                .map_err(|_| anyhow::anyhow!("{what} {a:?}: {p:?} is not a port number"))?;
            Ok(a.to_string())
        }
        None if a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') =>
        {
            Ok(format!("{a}:{DEFAULT_PORT}"))
        }
        _ => anyhow::bail!("{what} {a:?}: use HOST[:PORT] or IP[:PORT]"),
    }
}

/// The address of this host that routes towards `dest` (no packet is sent).
fn local_ip_towards(dest: std::net::SocketAddr) -> Option<std::net::IpAddr> {
    let bind = if dest.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(dest).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

impl Daemon {
    /// The daemon of `data_root`, serving `socket`; its tasks' resolvers forward other
    /// names to `dns` (none given: the nameservers of /etc/resolv.conf).
    pub async fn open(
        data_root: PathBuf,
        socket: PathBuf,
        runtime: ContainerRuntime,
        dns: Vec<std::net::SocketAddr>,
    ) -> anyhow::Result<Arc<Daemon>> {
        let id_file = data_root.join("node-id");
        let node_id = match std::fs::read_to_string(&id_file) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => new_node_id(&data_root)?,
        };
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into());
        let state: Option<SwarmState> =
            match std::fs::read(state_file(&data_root)) {
                Ok(b) => Some(serde_json::from_slice(&b).with_context(|| {
                    format!("{} is unreadable", state_file(&data_root).display())
                })?),
                Err(_) => None,
            };
        let dns = if dns.is_empty() {
            shoal_net::dns::Directory::from_host()
        } else {
            shoal_net::dns::Directory::forwarding_to(dns)
        };
        let net = Arc::new(crate::agent::net::NodeNet::new(
            &data_root.join("netns"),
            dns,
        ));
        let d = Arc::new(Daemon {
            data_root,
            socket,
            hostname,
            runtime,
            node_id: RwLock::new(node_id),
            state: RwLock::new(state.clone()),
            manager: RwLock::new(None),
            agent: Mutex::new(None),
            cluster_port: Mutex::new(None),
            peer_tls: PeerTls::default(),
            leader_chan: Mutex::new(None),
            server_tls: Mutex::new(None),
            cert_root: Arc::new(RwLock::new(
                state
                    .as_ref()
                    .map(|s| s.cert_root_digest.clone())
                    .unwrap_or_default(),
            )),
            agent_reconnect: Arc::new(tokio::sync::Notify::new()),
            net,
            agent_managers: Arc::default(),
            admin: tokio::sync::Mutex::new(()),
        });
        let Some(st) = state else { return Ok(d) };
        let certs = NodeCerts::load(&d.data_root)?
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

    /// Starts this node's manager; `init` makes a new Raft group of one with its cluster
    /// object (and the state of the swarm it replaces, for `--force-new-cluster`).
    async fn start_manager(
        &self,
        st: &SwarmState,
        init: Option<(Cluster, Option<crate::manager::store::Tables>)>,
    ) -> anyhow::Result<Manager> {
        let (dir, node_id) = (swarm_dir(&self.data_root), self.node_id());
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
            tls: self.peer_tls.clone(),
        })
        .await
    }

    /// `m` is this node's manager from now on; should its Raft stop on an error, it is
    /// started again ([`restart_raft_when_it_stops`]).
    fn set_manager(self: &Arc<Self>, m: Arc<Manager>) {
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
        tokio::spawn(restart_raft_when_it_stops(
            Arc::downgrade(self),
            Arc::downgrade(&m),
            m.raft.metrics(),
        ));
    }

    /// This node's certificate is what it shows other nodes from now on.
    fn set_certs(&self, certs: &NodeCerts) -> anyhow::Result<()> {
        *self.peer_tls.write().unwrap_or_else(|p| p.into_inner()) =
            Some(transport::client_config(certs)?);
        *self.leader_chan.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(server) = self
            .server_tls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            *server.write().unwrap_or_else(|p| p.into_inner()) = transport::server_config(certs)?;
        }
        Ok(())
    }

    fn set_cert_root(&self, digest: &str) -> anyhow::Result<()> {
        *self.cert_root.write().unwrap_or_else(|p| p.into_inner()) = digest.to_string();
        if let Some(mut st) = self.swarm_state() {
            st.cert_root_digest = digest.to_string();
            self.save_state(Some(st))?;
        }
        Ok(())
    }

    /// A channel to a manager at `addr` over mTLS (the leader's is kept).
    pub fn channel_to(&self, addr: &str) -> anyhow::Result<tonic::transport::Channel> {
        let mut cached = self.leader_chan.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, ch)) = cached.as_ref() {
            if a == addr {
                return Ok(ch.clone());
            }
        }
        let cfg = self
            .peer_tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .context("this node has no certificate")?;
        let ch = transport::channel(addr, cfg)?;
        *cached = Some((addr.to_string(), ch.clone()));
        Ok(ch)
    }

    pub fn node_id(&self) -> String {
        self.node_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn manager(&self) -> Option<Arc<Manager>> {
        self.manager
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn swarm_state(&self) -> Option<SwarmState> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn save_state(&self, st: Option<SwarmState>) -> anyhow::Result<()> {
        let path = state_file(&self.data_root);
        match &st {
            Some(st) => {
                shoal_runtime::files::private_dir(&swarm_dir(&self.data_root))?;
                shoal_runtime::files::write_atomic(&path, &serde_json::to_vec_pretty(st)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = st;
        Ok(())
    }

    /// The swarm this node is in ("" when none); checked on every cluster-port call.
    pub fn cluster_id(&self) -> String {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.cluster_id.clone())
            .unwrap_or_default()
    }

    pub fn info(&self) -> SwarmInfo {
        let m = self.manager();
        let st = self.swarm_state();
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
            data_root: self.data_root.display().to_string(),
            cgroup_parent: self.runtime.config().cgroup_parent.clone(),
        }
    }

    fn not_in_a_swarm_yet(&self) -> anyhow::Result<()> {
        if self.swarm_state().is_some() {
            anyhow::bail!("This node is already part of a swarm. Use \"shoal swarm leave\" to leave this swarm and join another one.");
        }
        Ok(())
    }

    pub async fn init(self: &Arc<Self>, r: SwarmInitRequest) -> anyhow::Result<()> {
        let _g = self.admin.lock().await;
        if r.force_new_cluster {
            return self.force_new_cluster().await;
        }
        self.not_in_a_swarm_yet()?;
        let listen = with_default_port(
            if r.listen_addr.is_empty() {
                "0.0.0.0"
            } else {
                &r.listen_addr
            },
            "--listen-addr",
        )?;
        let listen_sa: std::net::SocketAddr = listen
            .parse()
            .map_err(|_| anyhow::anyhow!("--listen-addr {listen:?}: use IP[:PORT]"))?;
        // bind first: a port in use is refused before anything changes
        let listener = tokio::net::TcpListener::bind(listen_sa)
            .await
            .with_context(|| format!("--listen-addr {listen}: cannot listen there"))?;
        let bound = listener.local_addr()?;
        let advertise = if !r.advertise_addr.is_empty() {
            let a = r.advertise_addr.trim();
            check_advertise_ip(a)?;
            match a.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, bound.port()).to_string(),
                Err(_) => with_default_port(a, "--advertise-addr")?,
            }
        } else if bound.ip().is_unspecified() {
            let ip = local_ip_towards("192.0.2.1:9".parse()?).context(
                "could not choose an address to advertise (no default route): use --advertise-addr",
            )?;
            std::net::SocketAddr::new(ip, bound.port()).to_string()
        } else {
            bound.to_string()
        };
        let ca = match (r.ca_cert_pem.is_empty(), r.ca_key_pem.is_empty()) {
            (true, true) => RootCa::generate()?,
            (false, false) => RootCa::from_pem(&r.ca_cert_pem, &r.ca_key_pem)?,
            _ => anyhow::bail!("--ca-cert and --ca-key go together: give both or neither"),
        };
        let expiry = match r.cert_expiry_secs {
            0 => crate::tls::DEFAULT_CERT_EXPIRY,
            s if s < 3600 => anyhow::bail!("--cert-expiry: at least 1h"),
            s => std::time::Duration::from_secs(s as u64),
        };
        let (pools, size) = crate::manager::network::check_pools(
            &r.default_addr_pool,
            r.default_addr_pool_mask_length,
        )?;
        let mut cluster = crate::manager::ca::new_cluster(&ca, expiry);
        cluster.default_addr_pool = pools;
        cluster.subnet_size = size;
        let cluster_id = cluster.id.clone();
        let (key_pem, csr) = crate::tls::new_key_and_csr()?;
        let node_id = self.node_id();
        let certs = NodeCerts {
            cert_pem: ca.issue(&csr, &node_id, Role::Manager, &cluster_id, expiry)?,
            key_pem,
            roots_pem: ca.cert_pem.clone(),
        };
        certs.save(&self.data_root)?;
        self.set_certs(&certs)?;
        let st = SwarmState {
            role: "manager".into(),
            listen_addr: bound.to_string(),
            advertise_addr: advertise.clone(),
            managers: vec![advertise],
            cluster_id,
            raft_id: 1,
            cert_root_digest: ca.digest(),
        };
        *self.cert_root.write().unwrap_or_else(|p| p.into_inner()) = ca.digest();
        let m = match self.start_manager(&st, Some((cluster, None))).await {
            Ok(m) => Arc::new(m),
            Err(e) => {
                NodeCerts::remove(&self.data_root);
                let _ = std::fs::remove_dir_all(swarm_dir(&self.data_root));
                return Err(e);
            }
        };
        self.set_manager(m.clone());
        self.save_state(Some(st.clone()))?;
        self.serve_cluster_port(listener, &certs)?;
        self.start_agent(&st.managers);
        // as in Swarm, init returns with this node ready for tasks: its agent's session
        // is open
        let (ready, mut events) = m.store.view_and_watch(|t| node_ready(t, &node_id));
        if !ready {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                        if m.store.view(|t| node_ready(t, &node_id)) {
                            break;
                        }
                    }
                    Ok(Err(_)) => break,
                    Err(_) => anyhow::bail!("the swarm was created but this node's agent did not report ready within 10 s"),
                }
            }
        }
        Ok(())
    }

    /// `swarm init --force-new-cluster`: a manager whose swarm lost quorum starts a new
    /// Raft group of one from its own state (services, tasks, nodes, CA and tokens all
    /// kept; the other managers become workers in the store). The old Raft database is
    /// kept beside as `raft.redb.before-force-new-cluster`.
    async fn force_new_cluster(self: &Arc<Self>) -> anyhow::Result<()> {
        let (Some(st), Some(old)) = (self.swarm_state(), self.manager()) else {
            anyhow::bail!("--force-new-cluster: this node is not a manager, so it has no swarm state to recover");
        };
        let tables = old.store.view(|t| t.clone());
        let cluster = tables
            .clusters
            .values()
            .next()
            .cloned()
            .context("--force-new-cluster: this manager's state has no cluster object")?;
        old.stop().await;
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = None;
        let db = swarm_dir(&self.data_root).join("raft.redb");
        std::fs::rename(&db, db.with_extension("redb.before-force-new-cluster"))
            .context("setting the old Raft database aside")?;
        let m = Arc::new(
            self.start_manager(&st, Some((cluster, Some(tables))))
                .await?,
        );
        self.set_manager(m);
        let mut st = st;
        st.managers = vec![st.advertise_addr.clone()];
        self.save_state(Some(st))?;
        tracing::warn!("--force-new-cluster: a new Raft group of one manager, with the old state");
        Ok(())
    }

    /// `swarm join`: check the manager's CA against the token, get a certificate, and
    /// start the agent (as a worker).
    pub async fn join(self: &Arc<Self>, r: SwarmJoinRequest) -> anyhow::Result<()> {
        use shoal_proto::node_ca_client::NodeCaClient;
        let _g = self.admin.lock().await;
        self.not_in_a_swarm_yet()?;
        let token = JoinToken::parse(&r.token)?;
        let remote = with_default_port(&r.remote_addr, "manager address")?;
        let unreachable = |e: tonic::Status| {
            anyhow::anyhow!("could not reach a manager at {remote}: {}", e.message())
        };
        let ch = transport::channel(&remote, transport::unverified_config()?)?;
        let ca_pem = NodeCaClient::new(ch)
            .get_root_ca_certificate(Empty {})
            .await
            .map_err(unreachable)?
            .into_inner()
            .cert_pem;
        let digest =
            crate::tls::ca_digest(&crate::tls::pem_cert_der(&ca_pem).map_err(anyhow::Error::msg)?);
        if digest != token.ca_digest {
            anyhow::bail!("the manager at {remote} shows a CA that does not match the join token (token pins {}, manager has {digest}): a wrong token, or not the swarm meant; nothing was sent", token.ca_digest);
        }
        let advertise = if r.advertise_addr.is_empty() {
            let dest: std::net::SocketAddr = tokio::net::lookup_host(&remote)
                .await?
                .next()
                .with_context(|| format!("{remote} does not resolve"))?;
            local_ip_towards(dest)
                .map(|ip| ip.to_string())
                .context("could not choose an address to advertise: use --advertise-addr")?
        } else {
            check_advertise_ip(r.advertise_addr.trim())?;
            r.advertise_addr.trim().to_string()
        };
        let (key_pem, csr) = crate::tls::new_key_and_csr()?;
        let ch = transport::channel(&remote, transport::bootstrap_config(&ca_pem)?)?;
        let resp = NodeCaClient::new(ch)
            .issue_node_certificate(IssueNodeCertificateRequest {
                csr_pem: csr,
                token: r.token.trim().to_string(),
                node_id: self.node_id(),
                hostname: self.hostname.clone(),
                addr: advertise.clone(),
            })
            .await
            .map_err(|e| anyhow::anyhow!("the manager at {remote} refused: {}", e.message()))?
            .into_inner();
        let certs = NodeCerts {
            cert_pem: resp.cert_pem,
            key_pem,
            roots_pem: resp.roots_pem,
        };
        let id = certs.identity()?;
        if id.node_id != self.node_id() {
            anyhow::bail!(
                "the manager issued a certificate for another node ({})",
                id.node_id
            );
        }
        certs.save(&self.data_root)?;
        self.set_certs(&certs)?;
        let mut managers = resp.managers;
        if !managers.contains(&remote) {
            managers.insert(0, remote.clone());
        }
        let mut st = SwarmState {
            role: "worker".into(),
            listen_addr: String::new(),
            advertise_addr: advertise,
            managers,
            cluster_id: resp.cluster_id,
            raft_id: 0,
            cert_root_digest: resp.cert_root_digest.clone(),
        };
        *self.cert_root.write().unwrap_or_else(|p| p.into_inner()) = resp.cert_root_digest;
        if id.role == Role::Manager {
            self.join_raft(&mut st, &r.listen_addr, resp.raft_id, &remote, &certs, true)
                .await?;
        } else {
            self.save_state(Some(st.clone()))?;
        }
        let session = self.start_agent(&st.managers);
        tokio::time::timeout(std::time::Duration::from_secs(10), session.notified())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "this node joined but could not open a session with a manager within 10 s"
                )
            })?;
        Ok(())
    }

    /// A node admitted as a manager: serve the cluster port, start Raft empty, and ask
    /// the leader to add this manager to the group; done once a leader is heard from.
    async fn join_raft(
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
        self.save_state(Some(st.clone()))?;
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
                let _ = std::fs::remove_dir_all(swarm_dir(&self.data_root).join("raft.redb"));
                if fresh {
                    self.save_state(None)?;
                    let _ = std::fs::remove_dir_all(swarm_dir(&self.data_root));
                    NodeCerts::remove(&self.data_root);
                }
                anyhow::bail!("joining the managers' Raft group failed: {}", e.message());
            }
        };
        st.managers = resp.managers;
        self.save_state(Some(st.clone()))?;
        m.raft
            .wait(Some(std::time::Duration::from_secs(30)))
            .metrics(|x| x.current_leader.is_some(), "a leader")
            .await
            .context("joined, but no leader was heard from within 30 s")?;
        Ok(())
    }

    pub async fn join_token(&self, role: &str, rotate: bool) -> anyhow::Result<(String, String)> {
        let m = self.manager().context(crate::api::NOT_MANAGER)?;
        let role = match role {
            "worker" => Role::Worker,
            "manager" => Role::Manager,
            r => anyhow::bail!("{r:?} is not a role: use worker or manager"),
        };
        let token = crate::manager::ca::join_token(&m.store, role, rotate)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let addr = self
            .swarm_state()
            .map(|s| s.advertise_addr)
            .unwrap_or_default();
        Ok((token, addr))
    }

    pub async fn leave(self: &Arc<Self>, force: bool) -> anyhow::Result<()> {
        let _g = self.admin.lock().await;
        if self.swarm_state().is_none() {
            anyhow::bail!("This node is not part of a swarm");
        }
        let m = self.manager();
        if let Some(m) = &m {
            let voters = m
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .count();
            if !force {
                if voters <= 1 {
                    anyhow::bail!("You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message.");
                }
                anyhow::bail!("You are attempting to leave the swarm on a node that is participating as a manager. Removing this node leaves {} managers out of {voters}. Demote it first (`shoal node demote`), or use `--force` to leave anyway: the other managers take it out of the Raft group.", voters - 1);
            }
            if voters > 1 {
                // out of the Raft group first, so that the others keep their quorum
                let me = self.node_id();
                let demote = async {
                    let ch = match m.leader_addr() {
                        Some(addr) => self.channel_to(&addr)?,
                        None => crate::api::client::connect(&self.socket).await?,
                    };
                    let mut ctl = shoal_proto::control_client::ControlClient::new(ch);
                    let n = ctl
                        .get_node(GetRequest {
                            id_or_name: me.clone(),
                        })
                        .await?
                        .into_inner();
                    let mut spec = n.spec.unwrap_or_default();
                    spec.desired_role = NodeRole::Worker as i32;
                    ctl.update_node(UpdateNodeRequest {
                        id_or_name: me,
                        version: 0,
                        spec: Some(spec),
                        force: true,
                    })
                    .await?;
                    anyhow::Ok(())
                };
                if let Err(e) = demote.await {
                    tracing::warn!(error = %format!("{e:#}"), "leaving: could not take this manager out of the Raft group first");
                }
            }
        }
        self.stop_agent_and_port();
        // the node's tasks go with the swarm
        let node = self.node_id();
        for c in self.runtime.list().await.unwrap_or_default() {
            if c.record.spec.labels.get("com.docker.swarm.node.id") == Some(&node) {
                let _ = self.runtime.stop(&c.record.id, None).await;
                let _ = self.runtime.remove(&c.record.id).await;
            }
        }
        if let Some(m) = m {
            m.stop().await;
            *self.manager.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.save_state(None)?;
        std::fs::remove_dir_all(swarm_dir(&self.data_root)).context("removing the swarm state")?;
        NodeCerts::remove(&self.data_root);
        // a node that left joins again as a new node, as in Swarm
        *self.node_id.write().unwrap_or_else(|p| p.into_inner()) = new_node_id(&self.data_root)?;
        Ok(())
    }

    fn serve_cluster_port(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        certs: &NodeCerts,
    ) -> anyhow::Result<()> {
        let tls = Arc::new(RwLock::new(transport::server_config(certs)?));
        *self.server_tls.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls.clone());
        let token = CancellationToken::new();
        crate::api::cluster::serve(self.clone(), listener, tls, token.clone());
        *self.cluster_port.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
        Ok(())
    }

    fn agent(&self) -> Agent<ContainerRuntime> {
        let description = NodeDescription {
            hostname: self.hostname.clone(),
            platform: Some(Platform {
                architecture: std::env::consts::ARCH.into(),
                os: std::env::consts::OS.into(),
            }),
            resources: Some(host_resources()),
            engine: Some(EngineDescription {
                engine_version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
        };
        Agent {
            net: Some(self.net.clone()),
            managers: self.agent_managers.clone(),
            assignments_file: Some(swarm_dir(&self.data_root).join("assignments.pb")),
            cert_root_digest: self.cert_root.clone(),
            reconnect: self.agent_reconnect.clone(),
            ..Agent::new(Arc::new(self.runtime.clone()), self.node_id(), description)
        }
    }

    /// Calls `take` with each new value the agent reports on `rx` (and the managers it
    /// knows), until `stop`; a failure is logged and waits for the next change.
    fn take_changes<T, F, Fut>(
        self: &Arc<Self>,
        mut rx: tokio::sync::watch::Receiver<Option<T>>,
        stop: &CancellationToken,
        managers: &Arc<RwLock<Vec<String>>>,
        what: &'static str,
        take: F,
    ) where
        T: Clone + Send + Sync + 'static,
        F: Fn(Arc<Daemon>, T, Vec<String>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
    {
        let (me, stop, managers) = (Arc::downgrade(self), stop.clone(), managers.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
                let Some(v) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let Some(d) = me.upgrade() else { return };
                let known = managers.read().unwrap_or_else(|p| p.into_inner()).clone();
                if let Err(e) = take(d, v, known).await {
                    tracing::error!(error = %format!("{e:#}"), "could not take {what}");
                }
            }
        });
    }

    /// Starts the agent. Its dispatcher is the leader's: over the local socket when this
    /// node leads, else over mTLS to the leader (a manager knows who leads) or to the
    /// known managers in turn (a worker; a manager that is not the leader says so and
    /// the agent tries the next). Notified when a session opens.
    fn start_agent(self: &Arc<Self>, managers: &[String]) -> Arc<tokio::sync::Notify> {
        let token = CancellationToken::new();
        let (role_tx, role_rx) = tokio::sync::watch::channel(None);
        let (trust_tx, trust_rx) = tokio::sync::watch::channel(None);
        let mut agent = self.agent();
        agent.desired_role = Arc::new(role_tx);
        agent.trust = Arc::new(trust_tx);
        tokio::spawn(self.clone().renew_when_due(token.clone()));
        // the roots the swarm trusts and the role the managers want, taken when they
        // change
        self.take_changes(
            trust_rx,
            &token,
            &agent.managers,
            "the swarm's new roots",
            |d, (roots, digest), m| async move { d.take_trust(roots, digest, m).await },
        );
        self.take_changes(
            role_rx,
            &token,
            &agent.managers,
            "the role the managers asked for",
            |d, want, m| async move { d.take_role(want, m).await },
        );
        let session = agent.on_session.clone();
        *agent.managers.write().unwrap_or_else(|p| p.into_inner()) = managers.to_vec();
        let me = Arc::downgrade(self);
        let next = std::sync::atomic::AtomicUsize::new(0);
        tokio::spawn(agent.run(
            move || {
                let me = me.clone();
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Box::pin(async move {
                    let d = me.upgrade().context("the daemon is stopping")?;
                    d.dispatcher_channel(i).await
                })
            },
            token.clone(),
        ));
        *self.agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
        session
    }

    /// A channel to the leader's dispatcher: over the local socket when this node leads,
    /// to the leader when this manager knows it, else to the `i`th known manager (a
    /// worker tries them in turn; one that does not lead says so).
    async fn dispatcher_channel(&self, i: usize) -> anyhow::Result<tonic::transport::Channel> {
        if let Some(m) = self.manager() {
            if m.is_leader() {
                return crate::api::client::connect(&self.socket).await;
            }
            if let Some(addr) = m.leader_addr() {
                return self.channel_to(&addr);
            }
        }
        let list = self
            .agent_managers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if list.is_empty() {
            anyhow::bail!("no manager address is known");
        }
        self.channel_to(&list[i % list.len()])
    }

    /// Calls the leader's dispatcher as this node (trying each known manager until one
    /// answers as the leader).
    async fn call_dispatcher<R, F, Fut>(&self, call: F) -> anyhow::Result<R>
    where
        F: Fn(crate::agent::Client) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>>,
    {
        if self.swarm_state().is_none() {
            anyhow::bail!("this node is not in a swarm: a container joins overlay networks only on a swarm's node (shoal swarm init or join)");
        }
        let tries = self
            .agent_managers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
            .max(1);
        let mut last = None;
        for i in 0..tries {
            let ch = match self.dispatcher_channel(i).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let client = shoal_proto::dispatcher_client::DispatcherClient::with_interceptor(
                ch,
                crate::agent::NodeIdentity::new(&self.node_id())?,
            );
            match call(client).await {
                Ok(r) => return Ok(r),
                // not the leader, or unreachable: the next manager
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::FailedPrecondition
                    ) =>
                {
                    last = Some(anyhow::anyhow!("{}", s.message()));
                }
                Err(s) => anyhow::bail!("{}", s.message()),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no manager answered")))
    }

    /// `container run --network`: the managers make the container's network attachment
    /// and this node builds its namespace; returns the attachment's ID and namespace.
    pub async fn attach_container(
        &self,
        container: String,
        networks: Vec<NetworkAttachmentConfig>,
    ) -> anyhow::Result<(String, crate::agent::net::TaskNet)> {
        let req = AttachNetworkRequest {
            container_id: container,
            networks,
        };
        let id = self
            .call_dispatcher(|mut c| {
                let req = req.clone();
                async move { c.attach_network(req).await }
            })
            .await?
            .into_inner()
            .attachment_id;
        match self
            .net
            .wait_ready(&id, std::time::Duration::from_secs(20))
            .await
        {
            Ok(n) => Ok((id, n)),
            Err(e) => {
                let _ = self.detach_container(id).await;
                anyhow::bail!(e)
            }
        }
    }

    /// The container is gone: its network attachment goes.
    pub async fn detach_container(&self, id: String) -> anyhow::Result<()> {
        let req = DetachNetworkRequest { attachment_id: id };
        self.call_dispatcher(|mut c| {
            let req = req.clone();
            async move { c.detach_network(req).await }
        })
        .await?;
        Ok(())
    }

    fn stop_cluster_port(&self) {
        if let Some(t) = self
            .cluster_port
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.cancel();
        }
    }

    /// A certificate for the role the managers now want this node to have.
    async fn renew_certificate(&self, via: &str) -> anyhow::Result<(NodeCerts, u64)> {
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
        certs.save(&self.data_root)?;
        self.set_certs(&certs)?;
        self.set_cert_root(&resp.cert_root_digest)?;
        Ok((certs, resp.raft_id))
    }

    /// The manager to ask for a certificate: the leader (this node itself when it
    /// leads), or on a worker the first of the managers it knows.
    fn manager_to_ask(&self, known: &[String]) -> Option<String> {
        match self.manager() {
            Some(m) => m
                .leader_addr()
                .or_else(|| self.swarm_state().map(|s| s.advertise_addr)),
            None => known.first().cloned(),
        }
    }

    /// Renews this node's certificate when it is two thirds through its life; checked
    /// every minute while the daemon runs.
    async fn renew_when_due(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let due = NodeCerts::load(&self.data_root)
                .ok()
                .flatten()
                .and_then(|c| c.identity().ok())
                .is_some_and(|id| {
                    id.due_for_renewal(time::OffsetDateTime::now_utc().unix_timestamp())
                });
            if due {
                let _g = self.admin.lock().await;
                let known = self.swarm_state().map(|s| s.managers).unwrap_or_default();
                match self.manager_to_ask(&known) {
                    Some(via) => match self.renew_certificate(&via).await {
                        Ok(_) => {
                            tracing::info!("renewed this node's certificate before it expires");
                            self.agent_reconnect.notify_one();
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
    async fn take_trust(
        &self,
        roots: String,
        ca_digest: String,
        managers: Vec<String>,
    ) -> anyhow::Result<()> {
        let _g = self.admin.lock().await;
        let Some(mut certs) = NodeCerts::load(&self.data_root)? else {
            return Ok(());
        };
        if certs.roots_pem != roots {
            certs.roots_pem = roots;
            certs.save(&self.data_root)?;
            self.set_certs(&certs)?;
            tracing::info!("the swarm's trusted roots changed");
        }
        let mine = self
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
            self.agent_reconnect.notify_one();
        }
        Ok(())
    }

    /// Promotion or demotion, as the managers want it (`node promote|demote`): a new
    /// certificate for the role, then Raft joined (the leader adds this manager) or left
    /// (the leader has removed it already).
    async fn take_role(self: &Arc<Self>, want: i32, managers: Vec<String>) -> anyhow::Result<()> {
        let _g = self.admin.lock().await;
        let Some(mut st) = self.swarm_state() else {
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
            let _ = std::fs::remove_file(swarm_dir(&self.data_root).join("raft.redb"));
            st.role = "worker".into();
            st.listen_addr.clear();
            st.raft_id = 0;
            st.managers = managers;
            self.save_state(Some(st))?;
        }
        Ok(())
    }

    fn stop_agent_and_port(&self) {
        for slot in [&self.agent, &self.cluster_port] {
            if let Some(t) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                t.cancel();
            }
        }
    }

    pub async fn stop(&self) {
        self.stop_agent_and_port();
        if let Some(m) = self.manager() {
            m.stop().await;
        }
    }

    /// Log lines of tasks that ran on this node. With `follow` and a service's events
    /// (`watch`), tasks that start later are followed too, until the caller goes away.
    pub fn task_logs(
        &self,
        tasks: Vec<Task>,
        follow: bool,
        tail: u64,
        watch: Option<(String, Store, Events)>,
    ) -> mpsc::Receiver<Result<LogMessage, tonic::Status>> {
        let (tx, rx) = mpsc::channel(256);
        let logs = TaskLogs {
            rt: self.runtime.clone(),
            node: self.node_id(),
            tx,
            follow,
        };
        let mut followed = std::collections::HashSet::new();
        for t in tasks.into_iter().filter(|t| t.node_id == logs.node) {
            followed.insert(t.id.clone());
            logs.spawn(t, tail);
        }
        if let (true, Some((service_id, store, mut events))) = (follow, watch) {
            tokio::spawn(async move {
                loop {
                    let ev = tokio::select! {
                        _ = logs.tx.closed() => return,
                        ev = events.recv() => ev,
                    };
                    let candidates: Vec<Task> = match ev {
                        Ok(e) if !e.restored => e
                            .changes
                            .iter()
                            .filter_map(|c| match &*c.object {
                                Object::Task(t) => Some(t.clone()),
                                _ => None,
                            })
                            .collect(),
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            store.view(|t| t.tasks_of_service(&service_id).cloned().collect())
                        }
                        Err(_) => return, // the manager stopped
                    };
                    for t in candidates {
                        // a task's logs exist once its container does
                        if t.service_id == service_id
                            && t.node_id == logs.node
                            && !followed.contains(&t.id)
                            && logs.rt.logs_dir(&t.id).exists()
                        {
                            followed.insert(t.id.clone());
                            logs.spawn(t, 0);
                        }
                    }
                }
            });
        }
        rx
    }
}

/// What one `service logs` request sends its lines through.
struct TaskLogs {
    rt: ContainerRuntime,
    node: String,
    tx: mpsc::Sender<Result<LogMessage, tonic::Status>>,
    follow: bool,
}

impl TaskLogs {
    /// Sends one task's lines (the last `tail`, or all when 0), following if asked.
    fn spawn(&self, t: Task, tail: u64) {
        let (rt, node, tx, follow) = (
            self.rt.clone(),
            self.node.clone(),
            self.tx.clone(),
            self.follow,
        );
        tokio::spawn(async move {
            let dir = rt.logs_dir(&t.id);
            if !dir.exists() {
                return;
            }
            let q = LogQuery {
                tail: (tail > 0).then_some(tail as usize),
                ..Default::default()
            };
            let conv = |e: shoal_runtime::container::logs::LogEntry| LogMessage {
                task_id: t.id.clone(),
                node_id: node.clone(),
                stream: if e.stream == LogStream::Stdout {
                    "stdout"
                } else {
                    "stderr"
                }
                .into(),
                time_ms: e.time.timestamp_millis(),
                data: e.log.into_bytes(),
            };
            if follow {
                let exit = rt.dir(&t.id).join("exit.json");
                let tx2 = tx.clone();
                let _ = follow_logs(&dir, &q, &|| exit.exists() || tx2.is_closed(), |e| {
                    let (tx, m) = (tx.clone(), conv(e));
                    async move { tx.send(Ok(m)).await.is_ok() }
                })
                .await;
            } else if let Ok(lines) = read_logs(&dir, &q) {
                for e in lines {
                    if tx.send(Ok(conv(e))).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn new_node_id(data_root: &Path) -> anyhow::Result<String> {
    let id = new_id();
    let file = data_root.join("node-id");
    shoal_runtime::files::write_atomic(&file, id.as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(id)
}

/// Makes the data root (0700) and what the daemon keeps in it root's alone, also in a
/// data root made before shoal said so (0755, with a 0644 Raft log that held the CA key
/// and the join tokens): the swarm's state, the certificates, network namespaces'
/// files, top-level files, and the volumes' directories (a volume's `_data` keeps the
/// mode its container sees). The image store and the containers secure their own.
pub fn secure_data_root(root: &Path) -> std::io::Result<()> {
    use shoal_runtime::files::{private_dir, secure_tree};
    private_dir(root)?;
    for e in std::fs::read_dir(root)?.flatten() {
        let p = e.path();
        match e.file_name().to_str() {
            Some("images" | "containers") => {}
            Some("volumes") => {
                private_dir(&p)?;
                for v in std::fs::read_dir(&p)?.flatten() {
                    if v.path().is_dir() {
                        private_dir(&v.path())?;
                    }
                }
            }
            _ => {
                secure_tree(&p)?;
            }
        }
    }
    Ok(())
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
    let Some(dir) = d.upgrade().map(|d| swarm_dir(&d.data_root)) else {
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
        let (Some(st), Some(current)) = (d.swarm_state(), current) else {
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

fn node_ready(t: &crate::manager::store::Tables, id: &str) -> bool {
    t.nodes
        .get(id)
        .and_then(|n| n.status.as_ref())
        .is_some_and(|s| s.state == NodeState::Ready as i32)
}

/// CPUs and memory of this host, for the scheduler's resource filter.
fn host_resources() -> Resources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:").map(|v| {
                    v.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<i64>()
                        .unwrap_or(0)
                        * 1024
                })
            })
        })
        .unwrap_or(0);
    Resources {
        nano_cpus: cpus * 1_000_000_000,
        memory_bytes: mem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_hosts_addresses_are_advertised() {
        assert!(check_advertise_ip("127.0.0.1").is_ok());
        assert!(check_advertise_ip("127.0.0.1:2377").is_ok());
        assert!(
            check_advertise_ip("manager-1.example").is_ok(),
            "names resolve later"
        );
        // TEST-NET-1: documentation only, on no host
        let e = check_advertise_ip("192.0.2.123:2377")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("192.0.2.123 is not an address of this host"),
            "{e}"
        );
        let e = check_advertise_ip("0.0.0.0").unwrap_err().to_string();
        assert!(e.contains("cannot reach this host at 0.0.0.0"), "{e}");
    }
}
