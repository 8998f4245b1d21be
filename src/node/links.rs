//! Connections to the managers: a channel to a manager over mTLS (the leader's kept), the
//! leader's dispatcher for this node's agent (over the local socket when this node
//! leads), the agent itself, and standalone containers' network attachments, which the
//! managers make through this node's dispatcher session.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use shoal_proto::*;
use shoal_runtime::container::ContainerRuntime;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::agent::Agent;
use crate::tls::transport;

/// How this node reaches its managers.
pub struct Links {
    /// The daemon's own socket: this node's dispatcher when it leads.
    pub socket: PathBuf,
    /// A channel to the current leader, by address.
    pub(super) leader: Mutex<Option<(String, tonic::transport::Channel)>>,
    /// The managers' addresses as the agent last learnt them.
    pub managers: Arc<RwLock<Vec<String>>>,
    /// Makes the agent open a new session (after a renewal, to say so).
    pub reconnect: Arc<tokio::sync::Notify>,
}

impl Links {
    pub fn new(socket: PathBuf) -> Links {
        Links {
            socket,
            leader: Mutex::new(None),
            managers: Arc::default(),
            reconnect: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

impl Daemon {
    /// A channel to a manager at `addr` over mTLS (the leader's is kept).
    pub fn channel_to(&self, addr: &str) -> anyhow::Result<tonic::transport::Channel> {
        let mut cached = self.links.leader.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, ch)) = cached.as_ref() {
            if a == addr {
                return Ok(ch.clone());
            }
        }
        let cfg = self
            .trust
            .peer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .context("this node has no certificate")?;
        let ch = transport::channel(addr, cfg)?;
        *cached = Some((addr.to_string(), ch.clone()));
        Ok(ch)
    }

    pub(super) fn agent(&self) -> Agent<ContainerRuntime> {
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
            managers: self.links.managers.clone(),
            assignments_file: Some(self.local.swarm_dir().join("assignments.pb")),
            files_dir: Some(self.local.data_root.join("task-files")),
            held: self.held.clone(),
            cert_root_digest: self.trust.cert_root.clone(),
            reconnect: self.links.reconnect.clone(),
            ..Agent::new(Arc::new(self.runtime.clone()), self.node_id(), description)
        }
    }

    /// Calls `take` with each new value the agent reports on `rx` (and the managers it
    /// knows), until `stop`; a failure is logged and waits for the next change.
    pub(super) fn take_changes<T, F, Fut>(
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
    pub(super) fn start_agent(self: &Arc<Self>, managers: &[String]) -> Arc<tokio::sync::Notify> {
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
    pub(super) async fn dispatcher_channel(
        &self,
        i: usize,
    ) -> anyhow::Result<tonic::transport::Channel> {
        if let Some(m) = self.manager() {
            if m.is_leader() {
                return super::socket::connect(&self.links.socket).await;
            }
            if let Some(addr) = m.leader_addr() {
                return self.channel_to(&addr);
            }
        }
        let list = self
            .links
            .managers
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
    pub(super) async fn call_dispatcher<R, F, Fut>(&self, call: F) -> anyhow::Result<R>
    where
        F: Fn(crate::agent::Client) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>>,
    {
        if self.local.swarm().is_none() {
            anyhow::bail!("this node is not in a swarm: a container joins overlay networks only on a swarm's node (shoal swarm init or join)");
        }
        let tries = self
            .links
            .managers
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
            // an incremental assignment carries the secrets and configs (up to 1000 KiB
            // each) of the tasks it brings, which may be more than gRPC's default 4 MiB
            let client = shoal_proto::dispatcher_client::DispatcherClient::with_interceptor(
                ch,
                crate::agent::NodeIdentity::new(&self.node_id())?,
            )
            .max_decoding_message_size(64 << 20);
            match call(client).await {
                Ok(r) => return Ok(r),
                // not the leader, or unreachable: the next manager
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::FailedPrecondition
                    ) =>
                {
                    last = Some(anyhow::Error::from(s));
                }
                // the refusal as it came (a spec problem keeps its fields)
                Err(s) => return Err(s.into()),
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
