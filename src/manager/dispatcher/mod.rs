//! The dispatcher: the agents' side of the managers. Sessions (a node registers and is
//! marked ready; heartbeats keep it so), assignments (a full set of the node's tasks,
//! then changes as they commit), and status reports, written to the store in batches
//! every 100 ms, accepted only from the node that owns the task and only forwards.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use shoal_proto::assignments_message::Type as AssignType;
use shoal_proto::dispatcher_server::Dispatcher as DispatcherApi;
use shoal_proto::store_action::Kind as ActionKind;
use shoal_proto::store_object::Object;
use shoal_proto::*;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

mod nodes;
mod status;
mod views;

use crate::manager::store::{new_id, Change, Store, StoreError};
use crate::manager::tasks::state;
use status::batch_writer;
use views::{is_for, needs, network_views, swarm_view, tasks_for_in, Needs};

pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(1000);

pub(super) type Pending = (
    String,
    Vec<TaskStatusUpdate>,
    oneshot::Sender<Result<(), StoreError>>,
);

struct Session {
    node_id: String,
    last_beat: Instant,
}

/// What the router hands one node's streams.
#[derive(Clone)]
enum Routed {
    /// A change to a task that is or was this node's.
    Task {
        kind: shoal_proto::store_action::Kind,
        object: Arc<Object>,
        old: Option<Arc<Object>>,
    },
    /// The end of a batch that touched this node's tasks.
    Commit,
    /// Events were missed: start over from the store.
    Resync,
    /// Something a session tells its node may have changed.
    Poke,
    /// The overlays' peers may have changed.
    Networks,
}

/// One watcher of the store for the whole dispatcher, routing each event to the streams
/// of the nodes it concerns: with a thousand nodes, a change wakes one or two streams,
/// not a thousand.
#[derive(Default)]
struct Routes {
    assignments: HashMap<String, Vec<mpsc::UnboundedSender<Routed>>>,
    sessions: HashMap<String, Vec<mpsc::UnboundedSender<Routed>>>,
}

impl Routes {
    fn send(map: &mut HashMap<String, Vec<mpsc::UnboundedSender<Routed>>>, node: &str, r: &Routed) {
        if let Some(v) = map.get_mut(node) {
            v.retain(|s| s.send(r.clone()).is_ok());
            if v.is_empty() {
                map.remove(node);
            }
        }
    }

    fn send_all(map: &mut HashMap<String, Vec<mpsc::UnboundedSender<Routed>>>, r: &Routed) {
        map.retain(|_, v| {
            v.retain(|s| s.send(r.clone()).is_ok());
            !v.is_empty()
        });
    }
}

async fn route(store: Store, routes: Arc<Mutex<Routes>>, shutdown: CancellationToken) {
    let mut events = store.watch();
    let mut touched: std::collections::BTreeSet<String> = Default::default();
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => ev,
        };
        let mut r = routes.lock().unwrap_or_else(|p| p.into_inner());
        let resync = |r: &mut Routes| {
            Routes::send_all(&mut r.assignments, &Routed::Resync);
            Routes::send_all(&mut r.sessions, &Routed::Poke);
        };
        match ev {
            Ok(e) if e.restored => resync(&mut r),
            Ok(e) => {
                for Change { kind, object, old } in &e.changes {
                    match &**object {
                        Object::Task(t)
                            if *kind == ActionKind::Update && status_only(t, old.as_deref()) => {}
                        Object::Task(t) => {
                            let was = match old.as_deref() {
                                Some(Object::Task(o)) => o.node_id.as_str(),
                                _ => "",
                            };
                            let routed = Routed::Task {
                                kind: *kind,
                                object: object.clone(),
                                old: old.clone(),
                            };
                            let mut targets = vec![t.node_id.as_str()];
                            if was != t.node_id {
                                targets.push(was);
                            }
                            for n in targets.into_iter().filter(|n| !n.is_empty()) {
                                if !touched.contains(n) {
                                    touched.insert(n.to_string());
                                }
                                Routes::send(&mut r.assignments, n, &routed);
                            }
                        }
                        Object::Cluster(_) => Routes::send_all(&mut r.sessions, &Routed::Poke),
                        Object::Node(n) => {
                            if concerns_all(object, old.as_deref()) {
                                Routes::send_all(&mut r.sessions, &Routed::Poke);
                            } else {
                                Routes::send(&mut r.sessions, &n.id, &Routed::Poke);
                            }
                        }
                        _ => {}
                    }
                }
                // a task of an overlay came, went or moved: every node on that overlay
                // needs its peers again (each stream sends only if its view changed)
                let networked = e.changes.iter().any(|c| {
                    [Some(&c.object), c.old.as_ref()]
                        .into_iter()
                        .flatten()
                        .any(|o| matches!(&**o, Object::Task(t) if !t.networks.is_empty()))
                });
                if networked {
                    Routes::send_all(&mut r.assignments, &Routed::Networks);
                }
                for n in std::mem::take(&mut touched) {
                    Routes::send(&mut r.assignments, &n, &Routed::Commit);
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => resync(&mut r),
            Err(_) => return,
        }
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    routes: Arc<Mutex<Routes>>,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    /// When each node was last heard from (a session opened, a heartbeat, a status
    /// report).
    last_seen: Arc<Mutex<HashMap<String, Instant>>>,
    /// This manager's own node: never taken for dead by this manager (its agent runs in
    /// this very process; late heartbeats only say the process is busy).
    local_node: String,
    /// Cancelled when this manager stops leading: sessions and assignment streams end,
    /// and agents go to the new leader.
    term: Arc<Mutex<Option<CancellationToken>>>,
    updates: mpsc::Sender<Pending>,
    heartbeat: Duration,
}

/// The calling node: from its certificate on the cluster port; over the local Unix
/// socket (root only) the local agent names itself in a header.
fn node_of<T>(r: &Request<T>) -> Result<String, Status> {
    if let Some(peer) = r.extensions().get::<crate::tls::transport::Peer>() {
        return peer
            .identity
            .as_ref()
            .map(|i| i.node_id.clone())
            .ok_or_else(|| Status::unauthenticated("a node certificate is required"));
    }
    r.metadata()
        .get("x-shoal-node-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::unauthenticated("no node identity"))
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Proposal(m) => Status::unavailable(m),
        e @ StoreError::NoSpace(_) => Status::resource_exhausted(e.to_string()),
        e => Status::failed_precondition(e.to_string()),
    }
}

impl Dispatcher {
    /// The dispatcher, with its status batcher running until `shutdown`.
    pub fn new(store: Store, shutdown: CancellationToken, local_node: &str) -> Dispatcher {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(batch_writer(store.clone(), rx, shutdown.clone()));
        let routes: Arc<Mutex<Routes>> = Arc::default();
        tokio::spawn(route(store.clone(), routes.clone(), shutdown));
        Dispatcher {
            routes,
            store,
            sessions: Arc::default(),
            last_seen: Arc::default(),
            local_node: local_node.to_string(),
            term: Arc::default(),
            updates: tx,
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }

    fn session_node(&self, sid: &str, node: &str) -> Result<(), Status> {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match s.get_mut(sid) {
            Some(x) if x.node_id == node => {
                x.last_beat = Instant::now();
                self.seen(node);
                Ok(())
            }
            _ => Err(Status::not_found("session invalid: start a new one")),
        }
    }

    /// Called as this manager starts (Some) or stops (None) leading.
    pub fn set_term(&self, t: Option<CancellationToken>) {
        let mut cur = self.term.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = cur.take() {
            old.cancel();
        }
        *cur = t;
    }

    fn term(&self) -> Result<CancellationToken, Status> {
        self.term
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Status::unavailable("this manager is not the leader"))
    }

    fn seen(&self, node: &str) {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), Instant::now());
    }

    /// The heartbeat period: the cluster's setting, or the default (1 s).
    pub fn heartbeat_period(&self) -> Duration {
        self.store
            .view(|t| {
                t.clusters
                    .values()
                    .next()
                    .and_then(|c| c.spec.as_ref())
                    .and_then(|s| s.dispatcher.as_ref())
                    .and_then(|d| d.heartbeat_period.as_ref())
                    .filter(|d| d.seconds > 0 || d.nanos > 0)
                    .map(|d| Duration::new(d.seconds as u64, d.nanos as u32))
            })
            .unwrap_or(self.heartbeat)
    }
}

/// Whether a node's change alters what every session tells its node: a manager's
/// address came, went or moved.
fn concerns_all(object: &Object, old: Option<&Object>) -> bool {
    match (object, old) {
        (Object::Node(n), Some(Object::Node(o))) => {
            n.manager_status.as_ref().map(|m| &m.addr) != o.manager_status.as_ref().map(|m| &m.addr)
        }
        (Object::Node(n), None) => n.manager_status.is_some(),
        _ => false,
    }
}

/// Whether a task's change is only its node's own status report: its node knows
/// already, and sending it back would double the stream traffic of every task that
/// starts (swarmkit skips these too). Every field but `meta` and `status` is compared,
/// field by field rather than on copies (this runs for every task change), and the
/// destructuring makes a field added to `Task` fail to compile until it is listed here.
fn status_only(new: &Task, old: Option<&Object>) -> bool {
    let Some(Object::Task(old)) = old else {
        return false;
    };
    let Task {
        id,
        meta: _,
        spec,
        service_id,
        slot,
        node_id,
        annotations,
        status: _,
        desired_state,
        spec_version,
        networks,
        endpoint,
        job_iteration,
        attachment_container,
        restarts,
        restarted_at_ms,
        start_after_ms,
        running_at_ms: _,
        ended_at_ms: _,
        update_started_at_ms,
    } = new;
    state(old) as i32 > TaskState::Assigned as i32
        && *id == old.id
        && *node_id == old.node_id
        && *desired_state == old.desired_state
        && *spec_version == old.spec_version
        && *slot == old.slot
        && *job_iteration == old.job_iteration
        && *attachment_container == old.attachment_container
        && *restarts == old.restarts
        && *restarted_at_ms == old.restarted_at_ms
        && *start_after_ms == old.start_after_ms
        && *update_started_at_ms == old.update_started_at_ms
        && *service_id == old.service_id
        && *networks == old.networks
        && *endpoint == old.endpoint
        && *annotations == old.annotations
        && *spec == old.spec
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A node's complete set of tasks as messages of about 1 MiB each (a node's tasks, each
/// up to a service's spec, and their secrets and configs, up to 1000 KiB each, may not
/// fit one message): the networks, if given, and the credentials go with the first, the
/// secrets and configs before the tasks.
fn complete_set(
    tasks: Vec<Task>,
    networks: Option<Vec<NetworkView>>,
    needs: Needs,
) -> Vec<AssignmentsMessage> {
    enum Item {
        Secret(Secret),
        Config(Config),
        Task(Box<Task>),
    }
    const PART_BYTES: usize = 1 << 20;
    let mut parts = vec![AssignmentsMessage {
        r#type: AssignType::Complete as i32,
        networks_set: networks.is_some(),
        networks: networks.unwrap_or_default(),
        pull_auths: needs.auths,
        ..Default::default()
    }];
    let items = (needs.secrets.into_iter().map(Item::Secret))
        .chain(needs.configs.into_iter().map(Item::Config))
        .chain(tasks.into_iter().map(|t| Item::Task(Box::new(t))));
    let (mut bytes, mut in_part) = (0, 0);
    for item in items {
        let n = match &item {
            Item::Secret(x) => prost::Message::encoded_len(x),
            Item::Config(x) => prost::Message::encoded_len(x),
            Item::Task(x) => prost::Message::encoded_len(x),
        };
        if in_part > 0 && bytes + n > PART_BYTES {
            let last = parts.len() - 1;
            parts[last].more = true;
            parts.push(AssignmentsMessage {
                r#type: AssignType::Complete as i32,
                ..Default::default()
            });
            (bytes, in_part) = (0, 0);
        }
        (bytes, in_part) = (bytes + n, in_part + 1);
        let last = parts.len() - 1;
        match item {
            Item::Secret(x) => parts[last].update_secrets.push(x),
            Item::Config(x) => parts[last].update_configs.push(x),
            Item::Task(x) => parts[last].update_tasks.push(*x),
        }
    }
    parts
}

#[tonic::async_trait]
impl DispatcherApi for Dispatcher {
    type SessionStream = BoxStream<SessionMessage>;
    type AssignmentsStream = BoxStream<AssignmentsMessage>;

    async fn session(
        &self,
        req: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let node_id = node_of(&req)?;
        let term = self.term()?;
        let r = req.into_inner();
        // a session that says nothing of the node (no hostname) keeps what the last one
        // said; one that says something wrong is refused, naming it
        let desc = r.description.filter(|d| !d.hostname.is_empty());
        if let Some(d) = &desc {
            crate::spec::limits::check_node_description(d)
                .map_err(|e| Status::invalid_argument(format!("the node's description: {e}")))?;
        }
        let id = node_id.clone();
        // heard from now: before the node reads Ready, so the node monitor never sees it
        // Ready and unheard-of
        self.seen(&node_id);
        self.store
            .update(move |tx| {
                let mut n = tx.get::<Node>(&id).unwrap_or_else(|| Node {
                    id: id.clone(),
                    ..Default::default()
                });
                let exists = n.meta.is_some();
                if desc.is_some() || n.description.is_none() {
                    n.description = desc.or_else(|| Some(NodeDescription::default()));
                }
                n.cert_root_digest = r.cert_root_digest;
                n.status = Some(NodeStatus {
                    state: NodeState::Ready as i32,
                    message: String::new(),
                    addr: n
                        .status
                        .as_ref()
                        .map(|s| s.addr.clone())
                        .unwrap_or_default(),
                });
                n.spec.get_or_insert_with(NodeSpec::default);
                if exists {
                    tx.update(n)
                } else {
                    tx.create(n)
                }
            })
            .await
            .map_err(store_status)?;
        let sid = new_id();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                sid.clone(),
                Session {
                    node_id: node_id.clone(),
                    last_beat: Instant::now(),
                },
            );
        self.seen(&node_id);
        let (tx, rx) = mpsc::channel(4);
        let base = SessionMessage {
            session_id: sid.clone(),
            node_id: node_id.clone(),
            heartbeat_period_ms: self.heartbeat_period().as_millis() as i64,
            ..Default::default()
        };
        // register before reading: what changes after the read is routed here
        let (poke_tx, mut pokes) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sessions
            .entry(node_id.clone())
            .or_default()
            .push(poke_tx);
        let msg = self.store.view(|t| swarm_view(t, base.clone()));
        let _ = tx.send(Ok(msg.clone())).await;
        // the session lives as long as its stream is open (the node stays Ready until its
        // heartbeats are missed, so a quick reconnect does not flap it); it tells the
        // node again when its wanted role, the managers or the roots change
        let sessions = self.sessions.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut last = msg.clone();
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = term.cancelled() => break,
                    p = pokes.recv() => {
                        if p.is_none() {
                            break;
                        }
                        let now = store.view(|t| swarm_view(t, msg.clone()));
                        if now != last {
                            last = now.clone();
                            if tx.send(Ok(now)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            drop(tx);
            sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&sid);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let node = node_of(&req)?;
        self.session_node(&req.get_ref().session_id, &node)
            .map_err(|_| Status::not_found("session invalid"))?;
        // a node marked Down while its heartbeats were late is Ready again
        let down = self.store.view(|t| {
            t.nodes
                .get(&node)
                .and_then(|n| n.status.as_ref())
                .is_some_and(|s| s.state == NodeState::Down as i32)
        });
        if down {
            let id = node.clone();
            self.store
                .update(move |tx| {
                    let Some(mut n) = tx.get::<Node>(&id) else {
                        return Ok(());
                    };
                    let st = n.status.get_or_insert_with(NodeStatus::default);
                    st.state = NodeState::Ready as i32;
                    st.message.clear();
                    tx.update(n)
                })
                .await
                .map_err(store_status)?;
        }
        Ok(Response::new(HeartbeatResponse {
            period_ms: self.heartbeat_period().as_millis() as i64,
        }))
    }

    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let node = node_of(&req)?;
        self.seen(&node);
        let r = req.into_inner();
        let (done, wait) = oneshot::channel();
        self.updates
            .send((node, r.updates, done))
            .await
            .map_err(|_| Status::unavailable("dispatcher stopping"))?;
        match wait.await {
            Ok(Ok(())) => Ok(Response::new(UpdateTaskStatusResponse {})),
            Ok(Err(e)) => Err(store_status(e)),
            Err(_) => Err(Status::unavailable("dispatcher stopping")),
        }
    }

    async fn assignments(
        &self,
        req: Request<AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let node = node_of(&req)?;
        self.session_node(&req.get_ref().session_id, &node)?;
        let term = self.term()?;
        // register before reading: what changes after the read is routed here
        let (route_tx, mut routed) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assignments
            .entry(node.clone())
            .or_default()
            .push(route_tx);
        let (first, mut views, n) = self.store.view(|t| {
            let tasks = tasks_for_in(t, &node);
            let n = needs(t, &tasks);
            (tasks, network_views(t, &node), n)
        });
        let (tx, rx) = mpsc::channel(64);
        for m in complete_set(first, Some(views.clone()), n) {
            let _ = tx.send(Ok(m)).await;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut msg = AssignmentsMessage {
                r#type: AssignType::Incremental as i32,
                ..Default::default()
            };
            loop {
                let r = tokio::select! {
                    _ = tx.closed() => return,
                    _ = term.cancelled() => return,
                    r = routed.recv() => r,
                };
                match r {
                    Some(Routed::Task { object, kind, old }) => {
                        let Object::Task(t) = &*object else { continue };
                        let was_ours =
                            matches!(old.as_deref(), Some(Object::Task(o)) if is_for(o, &node));
                        if kind == shoal_proto::store_action::Kind::Remove {
                            if t.node_id == node {
                                msg.remove_tasks.push(t.id.clone());
                            }
                        } else if is_for(t, &node) {
                            msg.update_tasks.retain(|x| x.id != t.id);
                            msg.update_tasks.push(t.clone());
                        } else if was_ours {
                            msg.remove_tasks.push(t.id.clone());
                        }
                    }
                    Some(Routed::Commit) => {
                        if !msg.update_tasks.is_empty() {
                            let n = store.view(|t| needs(t, &msg.update_tasks));
                            (msg.pull_auths, msg.update_secrets, msg.update_configs) =
                                (n.auths, n.secrets, n.configs);
                        }
                        if !msg.update_tasks.is_empty() || !msg.remove_tasks.is_empty() {
                            let m = std::mem::replace(
                                &mut msg,
                                AssignmentsMessage {
                                    r#type: AssignType::Incremental as i32,
                                    ..Default::default()
                                },
                            );
                            if tx.send(Ok(m)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Routed::Resync) => {
                        // start over with a full set
                        let (all, n) = store.view(|t| {
                            let tasks = tasks_for_in(t, &node);
                            let n = needs(t, &tasks);
                            (tasks, n)
                        });
                        msg = AssignmentsMessage {
                            r#type: AssignType::Incremental as i32,
                            ..Default::default()
                        };
                        for m in complete_set(all, None, n) {
                            if tx.send(Ok(m)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Routed::Poke) => {}
                    Some(Routed::Networks) => {
                        let now = store.view(|t| network_views(t, &node));
                        if now != views {
                            views = now.clone();
                            let m = AssignmentsMessage {
                                r#type: AssignType::Incremental as i32,
                                networks_set: true,
                                networks: now,
                                ..Default::default()
                            };
                            if tx.send(Ok(m)).await.is_err() {
                                return;
                            }
                        }
                    }
                    None => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn attach_network(
        &self,
        req: Request<AttachNetworkRequest>,
    ) -> Result<Response<AttachNetworkResponse>, Status> {
        let node = node_of(&req)?;
        self.term()?;
        let r = req.into_inner();
        let id = crate::manager::network::attach_container(
            &self.store,
            &node,
            r.container_id,
            r.networks,
        )
        .await
        .map_err(crate::manager::error::grpc_status)?;
        Ok(Response::new(AttachNetworkResponse { attachment_id: id }))
    }

    async fn detach_network(
        &self,
        req: Request<DetachNetworkRequest>,
    ) -> Result<Response<DetachNetworkResponse>, Status> {
        let node = node_of(&req)?;
        self.term()?;
        let id = req.into_inner().attachment_id;
        crate::manager::network::detach_container(&self.store, &node, &id)
            .await
            .map_err(crate::manager::error::grpc_status)?;
        Ok(Response::new(DetachNetworkResponse {}))
    }

    async fn publish_logs(
        &self,
        _req: Request<tonic::Streaming<PublishLogsMessage>>,
    ) -> Result<Response<PublishLogsResponse>, Status> {
        Err(Status::unimplemented(
            "log publishing from remote nodes comes with multi-node clusters",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_of(node: &str, d: Option<NodeDescription>) -> Request<SessionRequest> {
        let mut r = Request::new(SessionRequest {
            description: d,
            ..Default::default()
        });
        r.metadata_mut()
            .insert("x-shoal-node-id", node.parse().unwrap());
        r
    }

    #[tokio::test]
    async fn credentials_go_only_with_tasks_whose_image_is_of_their_registry() {
        let store = Store::in_memory();
        let svc = Service {
            id: "s".into(),
            registry_auth: Some(RegistryCredential {
                registry: "127.0.0.1:5056".into(),
                username: "u".into(),
                password: "p".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        store.update(|tx| tx.create(svc)).await.unwrap();
        let task = |id: &str, image: &str| Task {
            id: id.into(),
            service_id: "s".into(),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mine = [task("a", "127.0.0.1:5056/app:1")];
        let other = [task("b", "127.0.0.1:5055/app:1")];
        let sent = store.view(|t| needs(t, &mine).auths);
        assert_eq!(sent["s"].password, "p");
        assert!(store.view(|t| needs(t, &other).auths).is_empty());
    }

    /// A node gets a secret's data only with a task that may still run and uses it, at
    /// the version the task names; a config as well; a complete set puts them before the
    /// tasks, in parts that stay near 1 MiB.
    #[tokio::test]
    async fn secrets_go_only_with_the_tasks_that_use_them() {
        let store = Store::in_memory();
        let secret = Secret {
            id: "sec".into(),
            version: 2,
            spec: Some(SecretSpec {
                data: b"new".to_vec(),
                ..Default::default()
            }),
            old_versions: vec![FileVersion {
                version: 1,
                data: b"old".to_vec(),
            }],
            ..Default::default()
        };
        let config = Config {
            id: "cfg".into(),
            spec: Some(ConfigSpec {
                data: vec![b'c'; 900 << 10],
                ..Default::default()
            }),
            ..Default::default()
        };
        store
            .update(|tx| {
                tx.create(secret)?;
                tx.create(config)
            })
            .await
            .unwrap();
        let task = |id: &str, secret_version: Option<u64>, config: bool, desired: TaskState| Task {
            id: id.into(),
            desired_state: desired as i32,
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    secrets: secret_version
                        .map(|v| FileReference {
                            source_id: "sec".into(),
                            version: v,
                            ..Default::default()
                        })
                        .into_iter()
                        .collect(),
                    configs: config
                        .then(|| FileReference {
                            source_id: "cfg".into(),
                            ..Default::default()
                        })
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let data = |n: &Needs| -> Vec<(String, u64, Vec<u8>)> {
            n.secrets
                .iter()
                .map(|s| (s.id.clone(), s.version, s.spec.clone().unwrap().data))
                .collect()
        };
        // none of the tasks uses it, or only one told to stop
        let none = [
            task("a", None, false, TaskState::Running),
            task("b", Some(2), false, TaskState::Shutdown),
        ];
        let n = store.view(|t| needs(t, &none));
        assert!(n.secrets.is_empty() && n.configs.is_empty());
        // each version the tasks name, once
        let two = [
            task("c", Some(2), true, TaskState::Running),
            task("d", Some(1), false, TaskState::Running),
            task("e", Some(2), false, TaskState::Running),
        ];
        let n = store.view(|t| needs(t, &two));
        assert_eq!(
            data(&n),
            [
                ("sec".to_string(), 2, b"new".to_vec()),
                ("sec".to_string(), 1, b"old".to_vec())
            ]
        );
        assert_eq!(n.configs.len(), 1);
        // a version no longer kept is not sent (the node refuses the task, naming it)
        let gone = [task("f", Some(7), false, TaskState::Running)];
        assert!(store.view(|t| needs(t, &gone)).secrets.is_empty());
        // a complete set: the files first, and a new part before a second big config
        let parts = complete_set(two.to_vec(), None, store.view(|t| needs(t, &two)));
        assert_eq!(parts[0].update_secrets.len(), 2);
        assert_eq!(parts[0].update_configs.len(), 1);
        let tasks: usize = parts.iter().map(|p| p.update_tasks.len()).sum();
        assert_eq!(tasks, 3);
        assert!(parts.iter().rev().skip(1).all(|p| p.more));
    }

    #[tokio::test]
    async fn sessions_keep_the_last_good_description_and_refuse_bad_ones() {
        let store = Store::in_memory();
        let stop = CancellationToken::new();
        let d = Dispatcher::new(store.clone(), stop.clone(), "n1");
        d.set_term(Some(stop.child_token()));
        let good = NodeDescription {
            hostname: "edge-1".into(),
            resources: Some(Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
            }),
            ..Default::default()
        };
        let desc = |s: &Store| s.view(|t| t.nodes.get("n1").and_then(|n| n.description.clone()));
        d.session(session_of("n1", Some(good.clone())))
            .await
            .unwrap();
        assert_eq!(desc(&store), Some(good.clone()));
        // a second session that says nothing (none, or an empty one) keeps it
        for empty in [None, Some(NodeDescription::default())] {
            d.session(session_of("n1", empty)).await.unwrap();
            assert_eq!(
                desc(&store),
                Some(good.clone()),
                "the hostname and resources stay"
            );
        }
        // a wrong one is refused, named, and changes nothing
        let long = NodeDescription {
            hostname: "h".repeat(100_000),
            ..Default::default()
        };
        let e = d.session(session_of("n1", Some(long))).await.err().unwrap();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("hostname: 100000 characters"),
            "{}",
            e.message()
        );
        assert_eq!(desc(&store), Some(good));
        stop.cancel();
    }
}
