//! A running manager: Raft (single member for now) over the redb log, the store it
//! feeds, the dispatcher, and the leader-only loops, started when this manager becomes
//! leader (openraft's metrics say so) and stopped when it is not.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ServerState};
use shoal_proto::*;
use tokio_util::sync::CancellationToken;

use super::dispatcher::Dispatcher;
use super::orchestrator::Orchestrator;
use super::raft::network::NoPeers;
use super::raft::storage::{open_db, LogStore, StateMachine};
use super::raft::{config, Raft, RaftProposer};
use super::restart::RestartSupervisor;
use super::scheduler::Scheduler;
use super::store::Store;

pub struct Manager {
    pub store: Store,
    pub raft: Raft,
    pub dispatcher: Dispatcher,
    shutdown: CancellationToken,
    /// The Raft database, to know when Raft's tasks have let go of it.
    db: std::sync::Arc<redb::Database>,
}

impl Manager {
    /// Starts the manager whose state is under `dir`; `init` (the new cluster object,
    /// with its CA) makes a new cluster with this node as its only member.
    pub async fn start(
        dir: &Path,
        node_id: &str,
        hostname: &str,
        addr: &str,
        init: Option<Cluster>,
    ) -> anyhow::Result<Manager> {
        Self::start_with(config()?, dir, node_id, hostname, addr, init).await
    }

    pub async fn start_with(
        cfg: std::sync::Arc<openraft::Config>,
        dir: &Path,
        node_id: &str,
        hostname: &str,
        addr: &str,
        init: Option<Cluster>,
    ) -> anyhow::Result<Manager> {
        std::fs::create_dir_all(dir)?;
        let db = open_db(&dir.join("raft.redb"))?;
        let store = Store::new();
        let sm = StateMachine::open(store.clone(), db.clone())?;
        let raft = Raft::new(1, cfg, NoPeers, LogStore::new(db.clone()), sm).await?;
        if init.is_some() {
            let mut members = BTreeMap::new();
            members.insert(1u64, BasicNode::new(addr));
            if let Err(e) = raft.initialize(members).await {
                if !matches!(
                    e,
                    openraft::error::RaftError::APIError(
                        openraft::error::InitializeError::NotAllowed(_)
                    )
                ) {
                    return Err(e.into());
                }
            }
        }
        store.set_proposer(Arc::new(RaftProposer { raft: raft.clone() }));
        raft.wait(Some(Duration::from_secs(10)))
            .state(ServerState::Leader, "the only manager leads")
            .await?;
        // the log is applied before we serve: wait for what was committed
        let last = raft.metrics().borrow().last_log_index;
        raft.wait(Some(Duration::from_secs(30)))
            .applied_index_at_least(last, "the log is applied")
            .await?;
        if let Some(cluster) = init {
            let (nid, host, addr) = (node_id.to_string(), hostname.to_string(), addr.to_string());
            store
                .update(move |tx| {
                    if tx.list::<Cluster>().is_empty() {
                        tx.create(cluster)?;
                    }
                    let node = Node {
                        id: nid.clone(),
                        spec: Some(NodeSpec {
                            desired_role: NodeRole::Manager as i32,
                            ..Default::default()
                        }),
                        description: Some(NodeDescription {
                            hostname: host,
                            ..Default::default()
                        }),
                        status: Some(NodeStatus {
                            state: NodeState::Unknown as i32,
                            addr: addr.clone(),
                            ..Default::default()
                        }),
                        manager_status: Some(ManagerStatus {
                            raft_id: 1,
                            addr,
                            leader: true,
                            reachability: Reachability::Reachable as i32,
                        }),
                        role: NodeRole::Manager as i32,
                        ..Default::default()
                    };
                    match tx.get::<Node>(&nid) {
                        Some(_) => Ok(()),
                        None => tx.create(node),
                    }
                })
                .await?;
        }
        let shutdown = CancellationToken::new();
        let dispatcher = Dispatcher::new(store.clone(), shutdown.child_token());
        tokio::spawn(lead_when_leader(
            raft.clone(),
            store.clone(),
            dispatcher.clone(),
            shutdown.clone(),
        ));
        Ok(Manager {
            store,
            raft,
            dispatcher,
            shutdown,
            db,
        })
    }

    /// Stops Raft and the loops, and waits (up to 5 s) until Raft's tasks have closed the
    /// database, so that a manager can start again in this process.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        let _ = self.raft.shutdown().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::sync::Arc::strong_count(&self.db) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// Runs the leader-only loops while this manager leads.
async fn lead_when_leader(
    raft: Raft,
    store: Store,
    dispatcher: Dispatcher,
    shutdown: CancellationToken,
) {
    let mut metrics = raft.metrics();
    let mut loops: Option<CancellationToken> = None;
    loop {
        let leading = metrics.borrow_and_update().state == ServerState::Leader;
        match (leading, &loops) {
            (true, None) => {
                let t = shutdown.child_token();
                tracing::info!(
                    "became leader: starting the orchestrator, scheduler, restart supervisor and node monitor"
                );
                tokio::spawn(Orchestrator::new(store.clone()).run(t.clone()));
                tokio::spawn(Scheduler::new(store.clone()).run(t.clone()));
                tokio::spawn(RestartSupervisor::new(store.clone()).run(t.clone()));
                tokio::spawn(dispatcher.clone().monitor_nodes(t.clone()));
                loops = Some(t);
            }
            (false, Some(t)) => {
                tracing::info!("no longer leader: stopping the leader loops");
                t.cancel();
                loops = None;
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::raft::config_with_snapshots_every;
    use crate::manager::store::{new_id, Tables};

    async fn started(dir: &Path, init: bool) -> Manager {
        let cfg = config_with_snapshots_every(20, 5).unwrap();
        let ca = crate::tls::RootCa::generate().unwrap();
        let init =
            init.then(|| crate::manager::ca::new_cluster(&ca, crate::tls::DEFAULT_CERT_EXPIRY));
        Manager::start_with(cfg, dir, "node1", "host1", "127.0.0.1:2377", init)
            .await
            .unwrap()
    }

    /// Everything acknowledged survives a restart, also once the log has been compacted
    /// into snapshots (real openraft, real redb, no root).
    #[tokio::test(flavor = "multi_thread")]
    async fn state_survives_restarts_across_snapshots_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let m = started(dir.path(), true).await;
        for i in 0..60 {
            let svc = Service {
                id: new_id(),
                spec: Some(ServiceSpec {
                    annotations: Some(Annotations {
                        name: format!("s{i}"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            m.store.update(|tx| tx.create(svc)).await.unwrap();
        }
        // the last ones removed again, so the snapshot is not simply "everything"
        let gone: Vec<String> = m.store.view(|t| {
            t.services
                .values()
                .filter(|s| {
                    s.spec
                        .as_ref()
                        .unwrap()
                        .annotations
                        .as_ref()
                        .unwrap()
                        .name
                        .starts_with("s5")
                })
                .map(|s| s.id.clone())
                .collect()
        });
        for id in &gone {
            m.store.update(|tx| tx.remove::<Service>(id)).await.unwrap();
        }
        let before: Tables = m.store.view(|t| t.clone());
        let metrics = m
            .raft
            .wait(Some(std::time::Duration::from_secs(10)))
            .metrics(
                |x| x.snapshot.is_some() && x.purged.is_some(),
                "a snapshot taken and the log compacted",
            )
            .await
            .expect("snapshot and compaction");
        assert!(metrics.purged.unwrap().index >= 20);
        m.stop().await;
        drop(m);

        let m = started(dir.path(), false).await;
        assert_eq!(
            m.store.view(|t| t.clone()),
            before,
            "the same state after a restart"
        );
        assert_eq!(
            m.store.view(|t| t.services.len()),
            60 - 11,
            "s5 and s50..s59 went"
        );
        m.store
            .update(|tx| {
                tx.create(Node {
                    id: "n2".into(),
                    ..Default::default()
                })
            })
            .await
            .unwrap();
        m.stop().await;
    }
}
