//! The swarm's life cycle on this node: `swarm init` (a new swarm with this node its
//! first manager), `--force-new-cluster`, `swarm join` (a token checked against the
//! manager's CA, a certificate, the agent started), `swarm leave`, and the join tokens.

use std::sync::Arc;

use anyhow::Context;
use shoal_proto::*;

use super::state::SwarmState;
use super::Daemon;
use crate::tls::{transport, JoinToken, NodeCerts, Role, RootCa};

/// Swarm's cluster port.
pub const DEFAULT_PORT: u16 = 2377;

/// The address of this host that routes towards `dest` (no packet is sent).
pub(super) fn local_ip_towards(dest: std::net::SocketAddr) -> Option<std::net::IpAddr> {
    let bind = if dest.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(dest).ok()?;
    s.local_addr().ok().map(|a| a.ip())
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

impl Daemon {
    pub(super) fn not_in_a_swarm_yet(&self) -> anyhow::Result<()> {
        if self.local.swarm().is_some() {
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
        certs.save(&self.local.data_root)?;
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
        *self
            .trust
            .cert_root
            .write()
            .unwrap_or_else(|p| p.into_inner()) = ca.digest();
        let m = match self.start_manager(&st, Some((cluster, None))).await {
            Ok(m) => Arc::new(m),
            Err(e) => {
                NodeCerts::remove(&self.local.data_root);
                let _ = std::fs::remove_dir_all(self.local.swarm_dir());
                return Err(e);
            }
        };
        self.set_manager(m.clone());
        self.local.save(Some(st.clone()))?;
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
    pub(super) async fn force_new_cluster(self: &Arc<Self>) -> anyhow::Result<()> {
        let (Some(st), Some(old)) = (self.local.swarm(), self.manager()) else {
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
        let db = self.local.swarm_dir().join("raft.redb");
        std::fs::rename(&db, db.with_extension("redb.before-force-new-cluster"))
            .context("setting the old Raft database aside")?;
        let m = Arc::new(
            self.start_manager(&st, Some((cluster, Some(tables))))
                .await?,
        );
        self.set_manager(m);
        let mut st = st;
        st.managers = vec![st.advertise_addr.clone()];
        self.local.save(Some(st))?;
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
        certs.save(&self.local.data_root)?;
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
        *self
            .trust
            .cert_root
            .write()
            .unwrap_or_else(|p| p.into_inner()) = resp.cert_root_digest;
        if id.role == Role::Manager {
            self.join_raft(&mut st, &r.listen_addr, resp.raft_id, &remote, &certs, true)
                .await?;
        } else {
            self.local.save(Some(st.clone()))?;
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

    pub async fn join_token(&self, role: &str, rotate: bool) -> anyhow::Result<(String, String)> {
        let m = self.manager().context(super::NOT_MANAGER)?;
        let role = match role {
            "worker" => Role::Worker,
            "manager" => Role::Manager,
            r => anyhow::bail!("{r:?} is not a role: use worker or manager"),
        };
        let token = crate::manager::ca::join_token(&m.store, role, rotate)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let addr = self
            .local
            .swarm()
            .map(|s| s.advertise_addr)
            .unwrap_or_default();
        Ok((token, addr))
    }

    pub async fn leave(self: &Arc<Self>, force: bool) -> anyhow::Result<()> {
        let _g = self.admin.lock().await;
        if self.local.swarm().is_none() {
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
                        None => super::socket::connect(&self.links.socket).await?,
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
        self.forget_held();
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
        self.local.save(None)?;
        std::fs::remove_dir_all(self.local.swarm_dir()).context("removing the swarm state")?;
        NodeCerts::remove(&self.local.data_root);
        // a node that left joins again as a new node, as in Swarm
        self.local.renew_node_id()?;
        Ok(())
    }
}

fn node_ready(t: &crate::manager::store::Tables, id: &str) -> bool {
    t.nodes
        .get(id)
        .and_then(|n| n.status.as_ref())
        .is_some_and(|s| s.state == NodeState::Ready as i32)
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
