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
use crate::manager::node::Manager;
use crate::manager::store::{new_id, Event, Store};
use shoal_proto::store_object::Object;

pub struct Daemon {
    pub data_root: PathBuf,
    pub socket: PathBuf,
    pub node_id: String,
    pub hostname: String,
    pub runtime: ContainerRuntime,
    manager: RwLock<Option<Arc<Manager>>>,
    agent: Mutex<Option<CancellationToken>>,
    /// Serializes init and leave.
    admin: tokio::sync::Mutex<()>,
}

fn swarm_dir(root: &Path) -> PathBuf {
    root.join("swarm")
}

impl Daemon {
    pub async fn open(
        data_root: PathBuf,
        socket: PathBuf,
        runtime: ContainerRuntime,
    ) -> anyhow::Result<Arc<Daemon>> {
        let id_file = data_root.join("node-id");
        let node_id = match std::fs::read_to_string(&id_file) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                let id = new_id();
                std::fs::write(&id_file, &id)
                    .with_context(|| format!("writing {}", id_file.display()))?;
                id
            }
        };
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into());
        let d = Arc::new(Daemon {
            data_root,
            socket,
            node_id,
            hostname,
            runtime,
            manager: RwLock::new(None),
            agent: Mutex::new(None),
            admin: tokio::sync::Mutex::new(()),
        });
        if swarm_dir(&d.data_root).join("raft.redb").exists() {
            let m = Manager::start(
                &swarm_dir(&d.data_root),
                &d.node_id,
                &d.hostname,
                "127.0.0.1:2377",
                false,
            )
            .await
            .context("restarting the manager")?;
            *d.manager.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(m));
            d.start_agent();
        }
        Ok(d)
    }

    pub fn manager(&self) -> Option<Arc<Manager>> {
        self.manager
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn info(&self) -> SwarmInfo {
        let m = self.manager();
        SwarmInfo {
            local_node_state: if m.is_some() { "active" } else { "inactive" }.into(),
            node_id: self.node_id.clone(),
            cluster_id: m.as_ref().map(|m| m.cluster_id()).unwrap_or_default(),
            is_manager: m.is_some(),
            hostname: self.hostname.clone(),
        }
    }

    pub async fn init(self: &Arc<Self>, advertise: &str) -> anyhow::Result<()> {
        let _g = self.admin.lock().await;
        if self.manager().is_some() {
            anyhow::bail!("This node is already part of a swarm. Use \"shoal swarm leave\" to leave this swarm and join another one.");
        }
        let addr = if advertise.is_empty() {
            "127.0.0.1:2377".to_string()
        } else {
            advertise.to_string()
        };
        let m = Manager::start(
            &swarm_dir(&self.data_root),
            &self.node_id,
            &self.hostname,
            &addr,
            true,
        )
        .await?;
        let m = Arc::new(m);
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
        self.start_agent();
        // as in Swarm, init returns with this node ready for tasks: its agent's session
        // is open
        let (ready, mut events) = m.store.view_and_watch(|t| node_ready(t, &self.node_id));
        if !ready {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                        if m.store.view(|t| node_ready(t, &self.node_id)) {
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

    pub async fn leave(self: &Arc<Self>, force: bool) -> anyhow::Result<()> {
        let _g = self.admin.lock().await;
        let Some(m) = self.manager() else {
            anyhow::bail!("This node is not part of a swarm")
        };
        if !force {
            anyhow::bail!("You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message.");
        }
        if let Some(t) = self.agent.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.cancel();
        }
        // the node's tasks go with the swarm
        let ours: Vec<String> = m.store.view(|t| {
            t.tasks
                .values()
                .filter(|x| x.node_id == self.node_id)
                .map(|x| x.id.clone())
                .collect()
        });
        for id in ours {
            let _ = self.runtime.stop(&id, None).await;
            let _ = self.runtime.remove(&id).await;
        }
        m.stop().await;
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = None;
        std::fs::remove_dir_all(swarm_dir(&self.data_root)).context("removing the swarm state")?;
        Ok(())
    }

    fn start_agent(self: &Arc<Self>) {
        let token = CancellationToken::new();
        let agent = Agent {
            exec: Arc::new(self.runtime.clone()),
            node_id: self.node_id.clone(),
            description: NodeDescription {
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
            },
        };
        let sock = self.socket.clone();
        tokio::spawn(agent.run(
            move || {
                let p = sock.clone();
                Box::pin(async move { crate::api::client::connect(&p).await })
            },
            token.clone(),
        ));
        *self.agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
    }

    pub async fn stop(&self) {
        if let Some(t) = self.agent.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.cancel();
        }
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
        watch: Option<(String, Store, tokio::sync::broadcast::Receiver<Event>)>,
    ) -> mpsc::Receiver<Result<LogMessage, tonic::Status>> {
        let (tx, rx) = mpsc::channel(256);
        let logs = TaskLogs {
            rt: self.runtime.clone(),
            node: self.node_id.clone(),
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
                        Ok(Event::Change { object, .. }) => match *object {
                            Object::Task(t) => vec![t],
                            _ => continue,
                        },
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            store.view(|t| t.tasks.values().cloned().collect())
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
