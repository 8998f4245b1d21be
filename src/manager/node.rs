//! A running manager: Raft (one member at init, others joining as voters) over the redb
//! log, the store it feeds, the dispatcher, and the leader-only loops, started when this
//! manager becomes leader (openraft's metrics say so) and stopped when it is not.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ServerState};
use shoal_proto::*;
use tokio_util::sync::CancellationToken;

use super::dispatcher::Dispatcher;
use super::orchestrator::reaper::TaskReaper;
use super::orchestrator::restart::RestartSupervisor;
use super::orchestrator::update::UpdateSupervisor;
use super::orchestrator::Orchestrator;
use super::raft::network::{GrpcNetwork, PeerTls};
use super::raft::storage::{open_db, LogBytes, LogStore, StateMachine, SNAPSHOT_BYTES};
use super::raft::{config, Raft, RaftProposer};
use super::scheduler::Scheduler;
use super::store::{Store, Tables};

/// What a manager starts from.
pub struct ManagerOpts<'a> {
    /// Where its Raft database is.
    pub dir: &'a Path,
    pub node_id: &'a str,
    pub hostname: &'a str,
    /// Its cluster address (host:port), as other managers reach it.
    pub addr: &'a str,
    pub raft_id: u64,
    /// A new cluster (its object, with the CA) with this manager as its only member.
    pub init: Option<Cluster>,
    /// With `init`: the state of the swarm it replaces (`swarm init --force-new-cluster`),
    /// restored before the leader's loops start.
    pub restore: Option<Tables>,
    /// How it reaches other managers.
    pub tls: PeerTls,
    /// The data key its Raft database is sealed with ([`super::raft::seal`]).
    pub seal: super::raft::seal::Sealer,
}

pub struct Manager {
    pub store: Store,
    pub raft: Raft,
    pub dispatcher: Dispatcher,
    shutdown: CancellationToken,
    /// The Raft database, to know when Raft's tasks have let go of it; closed by `stop`.
    db: std::sync::Mutex<Option<super::raft::storage::RaftDb>>,
    /// Where the Raft database is.
    dir: std::path::PathBuf,
    /// Whether entries from the leader are being refused for want of space (logged once).
    short_of_space: std::sync::atomic::AtomicBool,
}

impl Manager {
    /// Starts the manager described by `o`.
    pub async fn start(o: ManagerOpts<'_>) -> anyhow::Result<Manager> {
        Self::start_with(config()?, o).await
    }

    pub async fn start_with(
        cfg: std::sync::Arc<openraft::Config>,
        o: ManagerOpts<'_>,
    ) -> anyhow::Result<Manager> {
        let ManagerOpts {
            dir,
            node_id,
            hostname,
            addr,
            raft_id,
            init,
            restore,
            tls,
            seal,
        } = o;
        std::fs::create_dir_all(dir)?;
        let db = open_db(&dir.join("raft.redb"), seal)?;
        let store = Store::new();
        let written = LogBytes::default();
        let sm = StateMachine::open(store.clone(), db.clone(), written.clone())?;
        let log = LogStore::new(db.clone(), written.clone());
        let raft = Raft::new(raft_id, cfg, GrpcNetwork::new(tls), log, sm).await?;
        if init.is_some() {
            let mut members = BTreeMap::new();
            members.insert(raft_id, BasicNode::new(addr));
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
        store.set_proposer(Arc::new(RaftProposer {
            raft: raft.clone(),
            dir: dir.to_path_buf(),
        }));
        if init.is_some() {
            raft.wait(Some(Duration::from_secs(10)))
                .state(ServerState::Leader, "the only manager leads")
                .await?;
        } else {
            // a restarted manager serves once a leader is known and what it had is
            // applied; without quorum it comes up anyway and says so when asked
            let known = raft
                .wait(Some(Duration::from_secs(5)))
                .metrics(|m| m.current_leader.is_some(), "a leader is known")
                .await;
            if known.is_err() {
                tracing::warn!("no Raft leader yet: is a majority of managers down?");
            }
        }
        let last = raft.metrics().borrow().last_log_index;
        let _ = raft
            .wait(Some(Duration::from_secs(30)))
            .applied_index_at_least(last, "the log is applied")
            .await;
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
                            raft_id,
                            addr,
                            leader: true,
                            reachability: Reachability::Reachable as i32,
                        }),
                        role: NodeRole::Manager as i32,
                        ..Default::default()
                    };
                    if tx.get::<Node>(&nid).is_none() {
                        tx.create(node)?;
                    }
                    // the routing mesh's network, from the start (as in Swarm), after the
                    // node: its subnet keeps clear of the node's own address
                    if crate::manager::allocator::ingress_id(tx).is_none() {
                        crate::manager::network::new_network(
                            tx,
                            crate::manager::network::ingress_spec(),
                        )
                        .map_err(|e| {
                            super::store::StoreError::Invalid(format!("the ingress network: {e}"))
                        })?;
                    }
                    Ok(())
                })
                .await?;
        }
        if let Some(tables) = restore {
            restore_swarm(&store, tables, node_id).await?;
        }
        let shutdown = CancellationToken::new();
        let dispatcher = Dispatcher::new(store.clone(), shutdown.child_token(), node_id);
        tokio::spawn(snapshot_big_logs(raft.clone(), written, shutdown.clone()));
        tokio::spawn(compact_when_sparse(
            db.clone(),
            dir.join("raft.redb"),
            shutdown.clone(),
        ));
        tokio::spawn(rotate_key_when_asked(
            db.clone(),
            dir.join("raft.redb"),
            store.clone(),
            shutdown.clone(),
        ));
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
            db: std::sync::Mutex::new(Some(db)),
            dir: dir.to_path_buf(),
            short_of_space: Default::default(),
        })
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader's cluster address, when one is known and it is not this manager.
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            return None;
        }
        let id = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// Every member's cluster address.
    pub fn member_addrs(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(_, n)| n.addr.clone())
            .collect()
    }

    /// Stops Raft and the loops, waits (up to 5 s) until Raft's tasks have let go of the
    /// database, and closes it, so that a manager can start again in this process.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        let _ = self.raft.shutdown().await;
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(db) = db else { return };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while db.handles() > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Whether `need` bytes from the leader (entries or a snapshot) may be written to the
    /// Raft log here: refused while the disk would be left with less than
    /// [`super::raft::FOLLOWER_RESERVE`], so that a full disk never stops Raft half-way
    /// through a write; the leader sends them again, and this manager catches up by
    /// itself once there is room.
    pub fn room_for(&self, need: u64) -> Result<(), super::store::StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        // what is written is about twice the message: the entry, and the pages redb copies
        let r = super::raft::check_space(
            &self.dir,
            need.saturating_mul(2),
            super::raft::FOLLOWER_RESERVE,
        );
        match &r {
            Err(e) if !self.short_of_space.swap(true, Relaxed) => {
                tracing::warn!("refusing Raft entries from the leader until there is room: {e}")
            }
            Ok(()) if self.short_of_space.swap(false, Relaxed) => {
                tracing::info!("room again on {}: taking Raft entries", self.dir.display())
            }
            _ => {}
        }
        r
    }
}

/// `--force-new-cluster`: the old swarm's state into the new Raft group of one, before
/// any loop runs (so none acts on half of it), a commit's worth at a time. Services,
/// tasks, networks (ingress included: services and tasks hold their IDs and addresses,
/// so the old ones replace the new group's), secrets and configs are kept; the other
/// managers become workers in the store; this node keeps its new manager status.
async fn restore_swarm(
    store: &Store,
    tables: Tables,
    me: &str,
) -> Result<(), super::store::StoreError> {
    let me = me.to_string();
    let old_networks: std::collections::BTreeSet<String> =
        tables.networks.keys().cloned().collect();
    store
        .update(|tx| {
            for n in tx.list::<Network>() {
                if !old_networks.contains(&n.id) {
                    tx.remove::<Network>(&n.id)?;
                }
            }
            Ok(())
        })
        .await?;
    let mut objects: Vec<store_object::Object> = Vec::new();
    for mut n in tables.nodes.into_values() {
        n.meta = None;
        if n.id != me && n.manager_status.take().is_some() {
            n.role = NodeRole::Worker as i32;
            if let Some(s) = n.spec.as_mut() {
                s.desired_role = NodeRole::Worker as i32;
            }
        }
        objects.push(store_object::Object::Node(n));
    }
    macro_rules! keep {
        ($($table:ident => $variant:ident),*) => {$(
            for mut x in tables.$table.into_values() {
                x.meta = None;
                objects.push(store_object::Object::$variant(x));
            }
        )*};
    }
    keep!(networks => Network, secrets => Secret, configs => Config, services => Service, tasks => Task, revisions => Revision);
    let mut next = 0;
    store
        .update_all(|tx| {
            while let Some(o) = objects.get(next) {
                if tx.full() {
                    return Ok(true);
                }
                next += 1;
                match o.clone() {
                    store_object::Object::Node(mut n) if n.id == me => {
                        // the new group's view of this manager, with the old spec
                        let mine = tx.get::<Node>(&me);
                        n.manager_status = mine.as_ref().and_then(|x| x.manager_status.clone());
                        n.meta = mine.and_then(|x| x.meta);
                        tx.update(n)?;
                    }
                    store_object::Object::Node(n) => tx.create(n)?,
                    store_object::Object::Network(n) => {
                        if tx.get::<Network>(&n.id).is_some() {
                            let mut n = n;
                            n.meta = tx.get::<Network>(&n.id).and_then(|x| x.meta);
                            tx.update(n)?;
                        } else {
                            tx.create(n)?;
                        }
                    }
                    store_object::Object::Secret(x) => tx.create(x)?,
                    store_object::Object::Config(x) => tx.create(x)?,
                    store_object::Object::Service(x) => tx.create(x)?,
                    store_object::Object::Task(x) => tx.create(x)?,
                    store_object::Object::Revision(x) => tx.create(x)?,
                    store_object::Object::Cluster(_) => {}
                }
            }
            Ok(false)
        })
        .await
}

/// Takes a snapshot (and so lets the log behind it go) once [`SNAPSHOT_BYTES`] of log
/// have been written since the last: big entries would otherwise grow the log to
/// thousands of them before the count of entries asks for one; and when the writes
/// stop for 2 s with more than a MiB of log since the last.
async fn snapshot_big_logs(raft: Raft, written: LogBytes, shutdown: CancellationToken) {
    // often: a flood of big changes writes tens of MiB a second
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // and once the writes stop, with more than a MiB of log since the last snapshot: the
    // log behind it goes, and the file shrinks back after a flood (it held up to
    // SNAPSHOT_BYTES of it until the next flood)
    let (mut last, mut still) = (0u64, 0u32);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        if now == last {
            still = still.saturating_add(1);
        } else {
            (last, still) = (now, 0);
        }
        let idle = still == 20 && now > 1 << 20; // 2 s without a write
        if now > SNAPSHOT_BYTES || idle {
            // counted again from the snapshot on, so this asks once per SNAPSHOT_BYTES
            written.store(0, std::sync::atomic::Ordering::Relaxed);
            if raft.trigger().snapshot().await.is_err() {
                return; // Raft stopped
            }
        }
    }
}

/// Compacts the Raft database while it runs, when most of the file is free space (a
/// flood of big entries, since purged): checked every 10 s.
async fn compact_when_sparse(
    db: super::raft::storage::RaftDb,
    path: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (db, path) = (db.clone(), path.clone());
        match tokio::task::spawn_blocking(move || db.compact_if_sparse(&path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("compacting the Raft database: {e}"),
            Err(_) => return,
        }
    }
}

/// Re-seals this manager's Raft database with a new data key whenever the cluster asks
/// for a rotation its key does not answer yet (`swarm update --rotate-dek`), on every
/// manager, leader or not; a manager that was down does it when it catches up.
async fn rotate_key_when_asked(
    db: super::raft::storage::RaftDb,
    path: std::path::PathBuf,
    store: Store,
    shutdown: CancellationToken,
) {
    let wanted = |s: &Store| s.view(|t| t.clusters.values().map(|c| c.dek_rotation).max());
    let (_, mut events) = store.view_and_watch(|_| ());
    loop {
        if let Some(n) = wanted(&store).filter(|n| db.rotation_due(*n)) {
            let (db, path) = (db.clone(), path.clone());
            match tokio::task::spawn_blocking(move || db.rotate_key(&path, n)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // what is on disk stays readable: try again later, not at every change
                    tracing::error!("rotating the Raft data key (tried again in 30 s): {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    }
                    continue;
                }
                Err(_) => return,
            }
        }
        // any change may be the cluster's (a lagging watcher reads again)
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = ev {
                    return;
                }
            }
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
                    "became leader: starting the orchestrator, scheduler, update and restart supervisors, task reaper and node monitor"
                );
                tokio::spawn(Orchestrator::new(store.clone()).run(t.clone()));
                tokio::spawn(Scheduler::new(store.clone()).run(t.clone()));
                tokio::spawn(UpdateSupervisor::new(store.clone()).run(t.clone()));
                tokio::spawn(RestartSupervisor::new(store.clone()).run(t.clone()));
                tokio::spawn(TaskReaper::new(store.clone()).run(t.clone()));
                tokio::spawn(dispatcher.clone().monitor_nodes(t.clone()));
                dispatcher.set_term(Some(t.clone()));
                loops = Some(t);
            }
            (false, Some(t)) => {
                tracing::info!("no longer leader: stopping the leader loops");
                t.cancel();
                dispatcher.set_term(None);
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
    use crate::manager::store::new_id;

    async fn started(dir: &Path, init: bool) -> Manager {
        let cfg = config_with_snapshots_every(20, 5).unwrap();
        let ca = crate::tls::RootCa::generate().unwrap();
        let init =
            init.then(|| crate::manager::ca::new_cluster(&ca, crate::tls::DEFAULT_CERT_EXPIRY));
        Manager::start_with(
            cfg,
            ManagerOpts {
                dir,
                node_id: "node1",
                hostname: "host1",
                addr: "127.0.0.1:2377",
                raft_id: 1,
                init,
                restore: None,
                tls: Default::default(),
                seal: crate::manager::raft::seal::Sealer::load_or_create(
                    &dir.join(crate::manager::raft::seal::DEK_FILE),
                )
                .unwrap(),
            },
        )
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

    /// A replayed entry stamps the time the leader proposed it, not the time of the
    /// replay: what a restart rebuilds from the log (no snapshot yet) is what was.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_replayed_log_keeps_the_times_it_was_written_with() {
        let dir = tempfile::tempdir().unwrap();
        let m = started(dir.path(), true).await;
        let svc = Service {
            id: new_id(),
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: "web".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        m.store.update(|tx| tx.create(svc)).await.unwrap();
        assert!(
            m.raft.metrics().borrow().snapshot.is_none(),
            "replayed, not restored"
        );
        let before: Tables = m.store.view(|t| t.clone());
        let latest = before
            .services
            .values()
            .filter_map(|s| s.meta.map(|m| m.updated_at_ms))
            .max()
            .unwrap();
        m.stop().await;
        drop(m);
        // the clock moves on past what was stamped
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while crate::manager::store::now_ms() <= latest + 5 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        }
        let m = started(dir.path(), false).await;
        assert_eq!(m.store.view(|t| t.services.clone()), before.services);
        assert_eq!(m.store.view(|t| t.clusters.clone()), before.clusters);
        m.stop().await;
    }
}
