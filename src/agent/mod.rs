//! The agent: the worker side of a node. It holds a session with the dispatcher (the
//! same gRPC service whether the manager is this process or another host), receives its
//! assignments (a full set, then changes), runs one task manager per task, and reports
//! statuses until the dispatcher acknowledges them.

pub mod files;
pub mod net;
pub mod task;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::assignments_message::Type as AssignType;
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::{
    AssignmentsRequest, HeartbeatRequest, NodeDescription, SessionMessage, SessionRequest, Task,
    TaskStatusUpdate, UpdateTaskStatusRequest,
};
use shoal_runtime::container::executor::Executor;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use shoal_proto::TaskStatus;
use task::Report;

/// The agent of one node.
pub struct Agent<E: Executor> {
    pub exec: Arc<E>,
    pub node_id: String,
    pub description: NodeDescription,
    /// Notified each time a session with a dispatcher opens.
    pub on_session: Arc<tokio::sync::Notify>,
    /// The managers' addresses, as the dispatcher last told them.
    pub managers: Arc<std::sync::RwLock<Vec<String>>>,
    /// The role the managers want this node to have, as last told.
    pub desired_role: Arc<watch::Sender<Option<i32>>>,
    /// Where the assigned tasks are kept, for a restart cut off from the managers.
    pub assignments_file: Option<std::path::PathBuf>,
    /// The digest of the root that signed this node's certificate (told at each session).
    pub cert_root_digest: Arc<std::sync::RwLock<String>>,
    /// The roots the swarm trusts and the digest of the one that signs, as last told.
    pub trust: Arc<watch::Sender<Option<(String, String)>>>,
    /// Notified to end the session and open a new one (after a certificate renewal).
    pub reconnect: Arc<tokio::sync::Notify>,
    /// The node's overlay networking (none on a simulated node).
    pub net: Option<Arc<net::NodeNet>>,
    /// Registry credentials, secrets and configs of the tasks this node has: in memory
    /// only, never in the kept assignments.
    pub held: Arc<files::Held>,
    /// Where tasks' tmpfs mounts of their secrets and configs go while their containers
    /// are made (none on a simulated node: a task with files is refused there).
    pub files_dir: Option<std::path::PathBuf>,
}

impl<E: Executor> Agent<E> {
    /// An agent with nothing shared yet: no assignments kept on disk, no certificate
    /// digest, fresh notifiers and watches (callers replace what they share).
    pub fn new(exec: Arc<E>, node_id: String, description: NodeDescription) -> Agent<E> {
        Agent {
            exec,
            node_id,
            description,
            on_session: Arc::default(),
            managers: Arc::default(),
            desired_role: Arc::new(watch::channel(None).0),
            assignments_file: None,
            cert_root_digest: Arc::default(),
            trust: Arc::new(watch::channel(None).0),
            reconnect: Arc::default(),
            net: None,
            held: Arc::default(),
            files_dir: None,
        }
    }

    /// Runs sessions until shut down, reconnecting when a session breaks.
    pub async fn run(
        self,
        connect: impl Fn() -> futures::future::BoxFuture<'static, anyhow::Result<Channel>>,
        shutdown: CancellationToken,
    ) {
        self.resume().await;
        let (tx, rx) = mpsc::unbounded_channel::<Report>();
        let mut rx = Some(rx);
        let mut tasks: HashMap<String, watch::Sender<Task>> = HashMap::new();
        let sid_cell: SessionId = Arc::default();
        let mut backoff = Duration::from_millis(100);
        loop {
            let res = async {
                let ch = connect().await?;
                self.session(ch, &tx, &mut rx, &mut tasks, &sid_cell, &shutdown)
                    .await
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = res => {
                    if let Err(e) = r {
                        tracing::info!(error = %e, "dispatcher session ended; reconnecting");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn session(
        &self,
        ch: Channel,
        tx: &mpsc::UnboundedSender<Report>,
        rx: &mut Option<mpsc::UnboundedReceiver<Report>>,
        tasks: &mut HashMap<String, watch::Sender<Task>>,
        sid_cell: &SessionId,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut client = DispatcherClient::with_interceptor(ch, NodeIdentity::new(&self.node_id)?);
        let req = tonic::Request::new(SessionRequest {
            description: Some(self.description.clone()),
            running_tasks: tasks.keys().cloned().collect(),
            cert_root_digest: self
                .cert_root_digest
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        });
        let mut session = client.session(req).await?.into_inner();
        let first = session
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("dispatcher closed the session"))?;
        let sid = first.session_id.clone();
        self.learn(&first);
        let period = Duration::from_millis(first.heartbeat_period_ms.max(100) as u64);
        tracing::info!(session = %sid, node.id = %self.node_id, "dispatcher session started");

        // the reporter outlives sessions (it is started once and keeps the receiver) and
        // sends through the current one
        *sid_cell.lock().unwrap_or_else(|p| p.into_inner()) = (sid.clone(), Some(client.clone()));
        if let Some(r) = rx.take() {
            tokio::spawn(report_loop(sid_cell.clone(), r, shutdown.clone()));
        }
        self.on_session.notify_one();

        let mut assign = client
            .assignments(AssignmentsRequest {
                session_id: sid.clone(),
            })
            .await?
            .into_inner();
        // heartbeats go on their own: work on an assignment (building a network takes
        // seconds on a slow box) must not hold them back, or the node is taken for dead
        // (aborted when the session ends, whichever way)
        let mut beats = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(heartbeats(
            client.clone(),
            sid.clone(),
            period,
        )));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.reconnect.notified() => anyhow::bail!("a new session, with the renewed certificate"),
                e = &mut beats => {
                    return Err(e.unwrap_or_else(|e| anyhow::anyhow!("the heartbeats stopped: {e}")));
                }
                m = session.message() => {
                    let Some(m) = m? else { anyhow::bail!("dispatcher closed the session") };
                    self.learn(&m);
                }
                m = assign.message() => {
                    let Some(mut m) = m? else { anyhow::bail!("assignments stream ended") };
                    // a complete set in parts: the set is all of them
                    if m.r#type == AssignType::Complete as i32 {
                        while m.more {
                            let Some(next) = assign.message().await? else { anyhow::bail!("assignments stream ended") };
                            m.update_tasks.extend(next.update_tasks);
                            m.update_secrets.extend(next.update_secrets);
                            m.update_configs.extend(next.update_configs);
                            m.more = next.more;
                        }
                    }
                    // networks first: a new task's network is built before the task
                    if let (true, Some(net)) = (m.networks_set, &self.net) {
                        net.apply(m.networks.clone()).await;
                    }
                    if m.r#type == AssignType::Complete as i32 {
                        let keep: std::collections::HashSet<&str> = m.update_tasks.iter().map(|t| t.id.as_str()).collect();
                        if let Some(net) = &self.net {
                            net.sweep(&keep);
                        }
                        if let Some(dir) = &self.files_dir {
                            files::sweep(dir, &keep);
                        }
                        let gone: Vec<String> = tasks.keys().filter(|k| !keep.contains(k.as_str())).cloned().collect();
                        for id in gone {
                            self.forget(tasks, tx, &id);
                        }
                    }
                    for id in &m.remove_tasks {
                        self.forget(tasks, tx, id);
                    }
                    self.held.learn(
                        m.r#type == AssignType::Complete as i32,
                        std::mem::take(&mut m.pull_auths),
                        std::mem::take(&mut m.update_secrets),
                        std::mem::take(&mut m.update_configs),
                        |f| {
                            tasks.values().for_each(|w| f(&w.borrow()));
                            m.update_tasks.iter().for_each(&mut *f);
                        },
                    );
                    for t in m.update_tasks {
                        match tasks.get(&t.id) {
                            Some(w) => {
                                w.send_if_modified(|cur| {
                                    let changed = cur.desired_state != t.desired_state || cur.spec_version != t.spec_version;
                                    *cur = t.clone();
                                    changed
                                });
                            }
                            None => {
                                let (w, r) = watch::channel(t.clone());
                                tasks.insert(t.id.clone(), w);
                                tokio::spawn(task::manage(self.exec.clone(), self.net.clone(), r, tx.clone(), self.held.clone(), self.files_dir.clone()));
                            }
                        }
                    }
                    self.persist(tasks);
                }
            }
        }
    }

    /// Writes the assigned tasks down, so that a node that restarts cut off from every
    /// manager can run them again ([`Agent::resume`]).
    fn persist(&self, tasks: &HashMap<String, watch::Sender<Task>>) {
        let Some(path) = &self.assignments_file else {
            return;
        };
        let msg = shoal_proto::AssignmentsMessage {
            update_tasks: tasks.values().map(|w| w.borrow().clone()).collect(),
            ..Default::default()
        };
        let r = shoal_runtime::files::write_atomic(path, &prost::Message::encode_to_vec(&msg));
        if let Err(e) = r {
            tracing::warn!(error = %e, path = %path.display(), "could not keep the assignments");
        }
    }

    /// Before any manager is reached: the tasks this node last had that should run, and
    /// whose containers do not (the host restarted), are started again as they were. An
    /// edge node that reboots while its uplink is down so keeps serving; once a manager
    /// is back, its assignments decide (tasks it moved elsewhere are stopped here).
    /// A task with secrets or configs waits for a manager: their data is never on this
    /// node's disk.
    async fn resume(&self) {
        let Some(path) = &self.assignments_file else {
            return;
        };
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        let Ok(msg) = <shoal_proto::AssignmentsMessage as prost::Message>::decode(&bytes[..])
        else {
            tracing::warn!(path = %path.display(), "the kept assignments are unreadable; ignoring them");
            return;
        };
        for t in msg.update_tasks {
            // (a standalone container's attachment has no container to start: its
            // namespace is still there, and its resolver comes with the managers)
            if crate::manager::tasks::desired(&t) != shoal_proto::TaskState::Running
                || !t.attachment_container.is_empty()
            {
                continue;
            }
            match self.exec.inspect(&t.id).await {
                Ok(c) if c.status == shoal_runtime::container::Status::Running => continue,
                Ok(_) => {
                    let _ = self.exec.remove(&t.id).await;
                }
                Err(_) => {}
            }
            if let Some((kind, r)) = files::references(&t).next() {
                // the managers send secrets and configs with the task, and a node never
                // keeps them on its disk: it waits for a manager
                tracing::warn!(task.id = %t.id, "not started again: its {kind:?} {} comes only from the managers, and this node never keeps one on its disk", r.source_name);
                continue;
            }
            let mut spec = crate::spec::container::container_spec(&t);
            if !t.networks.is_empty() {
                // its namespace survives a daemon restart, not a host's: without the
                // managers' view of its networks it cannot be connected again
                match self.net.as_ref().and_then(|n| n.existing(&t.id)) {
                    Some(p) => spec.netns = Some(p),
                    None => {
                        tracing::warn!(task.id = %t.id, "not started again: its networks need the managers");
                        continue;
                    }
                }
            }
            let started = async {
                // (the credentials come with the managers: an image missing here is
                // pulled with the node's own)
                self.exec.prepare(&t.id, &spec, None).await?;
                self.exec.start(&t.id).await
            };
            match started.await {
                Ok(_) => {
                    tracing::info!(task.id = %t.id, "started again the task this node last had")
                }
                Err(e) => {
                    tracing::warn!(task.id = %t.id, error = %e, "could not start again a task this node last had")
                }
            }
        }
    }

    /// What a session message says about the swarm: the managers, the role wanted.
    fn learn(&self, m: &SessionMessage) {
        if !m.managers.is_empty() {
            *self.managers.write().unwrap_or_else(|p| p.into_inner()) = m.managers.clone();
        }
        if !m.roots_pem.is_empty() {
            let t = Some((m.roots_pem.clone(), m.ca_digest.clone()));
            self.trust.send_if_modified(|cur| {
                let changed = *cur != t;
                *cur = t;
                changed
            });
        }
        self.desired_role.send_if_modified(|r| {
            let changed = *r != Some(m.desired_role);
            *r = Some(m.desired_role);
            changed
        });
    }

    /// A task no longer assigned here: stop its manager, then its container.
    fn forget(
        &self,
        tasks: &mut HashMap<String, watch::Sender<Task>>,
        reports: &mpsc::UnboundedSender<Report>,
        id: &str,
    ) {
        if tasks.remove(id).is_some() {
            let _ = reports.send(Report::Gone(id.to_string()));
            let exec = self.exec.clone();
            let net = self.net.clone();
            let files_dir = self.files_dir.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                let _ = exec.shutdown(&id, None).await;
                let _ = exec.remove(&id).await;
                if let Some(net) = net {
                    net.release(&id);
                }
                if let Some(dir) = files_dir {
                    files::release(&dir, &id);
                }
            });
        }
    }
}

/// Sends session `sid`'s heartbeats every `period` (the cluster's setting, which each
/// answer carries), until one fails or goes unanswered for three periods: that ends the
/// session.
async fn heartbeats(mut client: Client, sid: String, mut period: Duration) -> anyhow::Error {
    let mut beat = tokio::time::interval(period);
    loop {
        beat.tick().await;
        let req = HeartbeatRequest {
            session_id: sid.clone(),
        };
        let p = match tokio::time::timeout(period * 3, client.heartbeat(req)).await {
            Ok(Ok(r)) => Duration::from_millis(r.into_inner().period_ms.max(100) as u64),
            Ok(Err(e)) => return e.into(),
            Err(_) => return anyhow::anyhow!("heartbeat not answered within {:?}", period * 3),
        };
        if p != period {
            period = p;
            beat = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        }
    }
}

/// The session the reporter sends with, and its client: they change when the agent
/// reconnects (perhaps to another manager).
type SessionId = Arc<std::sync::Mutex<(String, Option<Client>)>>;

/// Says which node the agent is for on every request (mTLS certificates will, across hosts).
#[derive(Clone)]
pub struct NodeIdentity(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl NodeIdentity {
    pub fn new(node_id: &str) -> anyhow::Result<NodeIdentity> {
        Ok(NodeIdentity(node_id.parse()?))
    }
}

impl tonic::service::Interceptor for NodeIdentity {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("x-shoal-node-id", self.0.clone());
        Ok(req)
    }
}

pub type Client =
    DispatcherClient<tonic::service::interceptor::InterceptedService<Channel, NodeIdentity>>;

/// Sends statuses in batches, retrying until the dispatcher acknowledges them. In every
/// new session it tells again the last status of each of its tasks: managers that lost
/// what they had acknowledged (a swarm rebuilt with `--force-new-cluster` from a state
/// older than this node's reports) learn where its tasks really are; the dispatcher
/// ignores what it knows already.
async fn report_loop(
    sid: SessionId,
    mut rx: mpsc::UnboundedReceiver<Report>,
    shutdown: CancellationToken,
) {
    let mut pending: Vec<(String, TaskStatus)> = Vec::new();
    // the last status acknowledged for each of this node's tasks, and in which session
    let mut told: HashMap<String, TaskStatus> = HashMap::new();
    let mut told_in = String::new();
    let take =
        |r: Report, pending: &mut Vec<(String, TaskStatus)>, told: &mut HashMap<_, _>| match r {
            Report::Status(id, s) => pending.push((id, s)),
            Report::Gone(id) => {
                told.remove(&id);
                pending.retain(|(p, _)| *p != id);
            }
        };
    loop {
        let (session_id, client) = sid.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if session_id != told_in && !session_id.is_empty() {
            // a new session: what was told in the last one goes again, behind anything
            // newer
            for (id, s) in &told {
                if !pending.iter().any(|(p, _)| p == id) {
                    pending.push((id.clone(), s.clone()));
                }
            }
            told_in = session_id.clone();
        }
        if pending.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.recv() => match r {
                    Some(r) => take(r, &mut pending, &mut told),
                    None => return,
                }
            }
            continue;
        }
        while let Ok(r) = rx.try_recv() {
            take(r, &mut pending, &mut told);
        }
        let updates: Vec<TaskStatusUpdate> = pending
            .iter()
            .map(|(id, s)| TaskStatusUpdate {
                task_id: id.clone(),
                status: Some(s.clone()),
            })
            .collect();
        let req = tonic::Request::new(UpdateTaskStatusRequest {
            session_id,
            updates,
        });
        let sent = match client {
            Some(mut c) => c.update_task_status(req).await.map(|_| ()),
            None => Err(tonic::Status::unavailable("no session yet")),
        };
        match sent {
            Ok(_) => {
                for (id, s) in pending.drain(..) {
                    told.insert(id, s);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "status report not acknowledged; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}
