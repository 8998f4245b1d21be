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

use super::store::{new_id, Change, Store, StoreError};
use super::tasks::state;

pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(1000);

type Pending = (
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

    /// Leader only: a node not heard from for two and a half heartbeat periods (its
    /// third heartbeat is half a period late) is marked Down and its tasks are shut
    /// down, so that the orchestrators replace them on other nodes. With the default
    /// period of 1 s, a crashed node is Down 1.5 to 2.5 s after its last heartbeat, and
    /// a busy node must be 1.5 s late to be taken for dead.
    /// (A node that comes back opens a new session and is Ready again; the agent then
    /// stops the tasks that were superseded.) After a leader change every node gets the
    /// full grace period from the start of this loop, and again after this manager
    /// itself was stalled ([`silence_from`]).
    pub async fn monitor_nodes(self, shutdown: CancellationToken) {
        let mut start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let waiting = Instant::now();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let period = self.heartbeat_period();
            let resumed = silence_from(start, waiting, Instant::now(), period);
            if resumed != start {
                tracing::warn!(
                    stalled = ?resumed.duration_since(waiting),
                    "this manager was stalled: every node gets its grace period again"
                );
                start = resumed;
            }
            if let Err(e) = super::ca::finish_rotation(&self.store).await {
                tracing::warn!(error = %e, "could not end the CA rotation; retrying");
            }
            let grace = period * 5 / 2;
            let seen = self
                .last_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let now = Instant::now();
            let down: Vec<String> = self.store.view(|t| {
                t.nodes
                    .values()
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .is_some_and(|s| s.state == NodeState::Ready as i32)
                    })
                    .filter(|n| {
                        let last = seen.get(&n.id).copied().unwrap_or(start).max(start);
                        n.id != self.local_node && now.duration_since(last) > grace
                    })
                    .map(|n| n.id.clone())
                    .collect()
            });
            if down.is_empty() {
                continue;
            }
            tracing::warn!(nodes = ?down, "no heartbeat: marking nodes down");
            // their sessions end: a node that was only slow gets "session invalid" at its
            // next heartbeat, opens a new session and is Ready again
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, x| !down.contains(&x.node_id));
            // the nodes first, then their tasks a commit's worth at a time
            let r = self
                .store
                .update_all(move |tx| {
                    for id in &down {
                        let Some(mut n) = tx.get::<Node>(id) else {
                            continue;
                        };
                        let st = n.status.get_or_insert_with(NodeStatus::default);
                        if st.state != NodeState::Down as i32 {
                            st.state = NodeState::Down as i32;
                            st.message = "heartbeat failure".into();
                            tx.update(n)?;
                        }
                        for t in tx.tasks_of(id, true) {
                            if tx.full() {
                                return Ok(true);
                            }
                            // (a standalone container's attachment follows its
                            // container, which is still there when the node returns:
                            // its address stays its own)
                            if &t.node_id == id
                                && t.attachment_container.is_empty()
                                && !state(&t).is_terminal()
                                && t.desired_state < TaskState::Shutdown as i32
                            {
                                let mut t = t.clone();
                                t.desired_state = TaskState::Shutdown as i32;
                                tx.update(t)?;
                            }
                        }
                    }
                    Ok(false)
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not mark nodes down; retrying");
            }
        }
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
        && *service_id == old.service_id
        && *networks == old.networks
        && *endpoint == old.endpoint
        && *annotations == old.annotations
        && *spec == old.spec
}

/// Every task assigned to `node`.
fn tasks_for(store: &Store, node: &str) -> Vec<Task> {
    store.view(|t| tasks_for_in(t, node))
}

fn tasks_for_in(t: &super::store::Tables, node: &str) -> Vec<Task> {
    t.tasks_on_node(node)
        .filter(|x| is_for(x, node))
        .cloned()
        .collect()
}

/// What tasks on a network resolve: each attached service's name and aliases (its VIP,
/// or with dnsrr its running tasks' addresses), `tasks.<service>` (its running tasks'
/// addresses) and each running task's name. Tasks that are not running are left out.
fn discovery(t: &super::store::Tables, network: &str) -> (Vec<DnsName>, Vec<Vip>) {
    use shoal_proto::endpoint_spec::ResolutionMode;
    let bare = |a: &str| super::ipam::host_part(a).to_string();
    let mut names: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut vips = Vec::new();
    for s in t.services.values() {
        let Some(spec) = &s.spec else { continue };
        let Some(att) = spec
            .task
            .as_ref()
            .and_then(|x| x.networks.iter().find(|a| a.target == network))
        else {
            continue;
        };
        let name = spec
            .annotations
            .as_ref()
            .map(|a| a.name.to_lowercase())
            .unwrap_or_default();
        let mut running = Vec::new();
        for x in t.tasks_of_service(&s.id) {
            if state(x) != TaskState::Running {
                continue;
            }
            for a in x.networks.iter().filter(|a| a.network_id == network) {
                if let Some(addr) = a.addresses.first() {
                    running.push(bare(addr));
                    if let Some(an) = x.annotations.as_ref().filter(|an| !an.name.is_empty()) {
                        names
                            .entry(an.name.to_lowercase())
                            .or_default()
                            .push(bare(addr));
                    }
                }
            }
        }
        let dnsrr = spec.endpoint.as_ref().map(|e| e.mode) == Some(ResolutionMode::Dnsrr as i32);
        let vip = s
            .endpoint
            .as_ref()
            .and_then(|e| e.virtual_ips.iter().find(|v| v.network_id == network))
            .map(|v| bare(&v.addr));
        let service_addrs = match (dnsrr, vip) {
            (false, Some(v)) => {
                vips.push(Vip {
                    addr: v.clone(),
                    backends: running.clone(),
                });
                vec![v]
            }
            _ => running.clone(),
        };
        names.insert(format!("tasks.{name}"), running);
        for n in std::iter::once(name).chain(att.aliases.iter().map(|a| a.to_lowercase())) {
            names
                .entry(n)
                .or_default()
                .extend(service_addrs.iter().cloned());
        }
    }
    // standalone containers' attachments (no service): their names and aliases
    for x in t.tasks_of_service("") {
        if state(x) != TaskState::Running || x.attachment_container.is_empty() {
            continue;
        }
        for a in x.networks.iter().filter(|a| a.network_id == network) {
            let Some(addr) = a.addresses.first() else {
                continue;
            };
            for n in std::iter::once(&x.attachment_container).chain(&a.aliases) {
                names.entry(n.to_lowercase()).or_default().push(bare(addr));
            }
        }
    }
    let names = names
        .into_iter()
        .map(|(name, addrs)| DnsName { name, addrs })
        .collect();
    (names, vips)
}

/// The ports published in ingress mode, each with its service's running tasks' addresses
/// on the ingress network.
fn mesh_ports(t: &super::store::Tables, ingress: &str) -> Vec<PublishedPort> {
    use shoal_proto::port_config::PublishMode;
    let mut out = Vec::new();
    for s in t.services.values() {
        let Some(e) = &s.endpoint else { continue };
        let backends: Vec<String> = t
            .tasks_of_service(&s.id)
            .filter(|x| state(x) == TaskState::Running)
            .flat_map(|x| x.networks.iter().filter(|a| a.network_id == ingress))
            .filter_map(|a| a.addresses.first())
            .map(|a| super::ipam::host_part(a).to_string())
            .collect();
        for p in &e.ports {
            if p.publish_mode != PublishMode::Ingress as i32 || p.published_port == 0 {
                continue;
            }
            out.push(PublishedPort {
                published: p.published_port,
                protocol: crate::spec::parse::protocol_name(p.protocol).into(),
                target: p.target_port,
                backends: backends.clone(),
            });
        }
    }
    out
}

/// The ports published in host mode by `node`'s running tasks, each to its task's
/// address on the ingress network: they answer on this node only.
fn host_ports(t: &super::store::Tables, ingress: &str, node: &str) -> Vec<PublishedPort> {
    let mut out = Vec::new();
    for x in t.tasks_on_node(node) {
        if state(x) != TaskState::Running {
            continue;
        }
        let Some(addr) = x
            .networks
            .iter()
            .find(|a| a.network_id == ingress)
            .and_then(|a| a.addresses.first())
        else {
            continue;
        };
        let Some(s) = t.services.get(&x.service_id) else {
            continue;
        };
        for p in super::allocator::host_ports(s) {
            out.push(PublishedPort {
                published: p.published_port,
                protocol: crate::spec::parse::protocol_name(p.protocol).into(),
                target: p.target_port,
                backends: vec![super::ipam::host_part(addr).to_string()],
            });
        }
    }
    out
}

/// The IP part of a node's address (`ip` or `ip:port`).
fn node_ip(t: &super::store::Tables, node: &str) -> Option<std::net::IpAddr> {
    super::network::node_addr_ip(t.nodes.get(node)?)
}

/// The overlays `node`'s live tasks are on, each with every live task of the network on
/// another node (address and that node's VTEP).
pub fn network_views(t: &super::store::Tables, node: &str) -> Vec<NetworkView> {
    let live = |x: &Task| !state(x).is_terminal() && x.desired_state <= TaskState::Running as i32;
    let mut mine: std::collections::BTreeSet<&str> = t
        .tasks_on_node(node)
        .filter(|x| live(x))
        .flat_map(|x| x.networks.iter().map(|a| a.network_id.as_str()))
        .collect();
    // the routing mesh: every node has ingress while a port is published on it
    let ingress = t
        .networks
        .values()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress));
    let ports = ingress.map(|i| mesh_ports(t, &i.id)).unwrap_or_default();
    if let (Some(i), false) = (ingress, ports.is_empty()) {
        mine.insert(i.id.as_str());
    }
    if mine.is_empty() {
        return vec![];
    }
    let local = node_ip(t, node).map(|i| i.to_string()).unwrap_or_default();
    let mut views: std::collections::BTreeMap<&str, NetworkView> =
        std::collections::BTreeMap::new();
    for id in &mine {
        let Some(n) = t.networks.get(*id) else {
            continue;
        };
        let ipam = n.ipam.first().cloned().unwrap_or_default();
        views.insert(
            id,
            NetworkView {
                network_id: n.id.clone(),
                vni: n.vni,
                subnet: ipam.subnet,
                gateway: ipam.gateway,
                internal: n.spec.as_ref().is_some_and(|s| s.internal),
                local_vtep: local.clone(),
                peers: vec![],
                names: vec![],
                vips: vec![],
                ingress: false,
                ports: vec![],
                local_addr: String::new(),
            },
        );
    }
    for v in views.values_mut() {
        (v.names, v.vips) = discovery(t, &v.network_id);
        if ingress.is_some_and(|i| i.id == v.network_id) {
            v.ingress = true;
            v.ports = ports.clone();
            v.ports.extend(host_ports(t, &v.network_id, node));
            // each node's own ingress address, its own and the others' (as peers: the
            // tasks' answers go back to the node that forwarded the request)
            for n in t.nodes.values() {
                for a in n
                    .attachments
                    .iter()
                    .filter(|a| a.network_id == v.network_id)
                {
                    let Some(addr) = a.addresses.first() else {
                        continue;
                    };
                    if n.id == node {
                        v.local_addr = addr.clone();
                    } else if let Some(vtep) = node_ip(t, &n.id) {
                        v.peers.push(NetworkPeer {
                            addr: super::ipam::host_part(addr).to_string(),
                            vtep: vtep.to_string(),
                        });
                    }
                }
            }
        }
    }
    for x in t.tasks.values() {
        if x.node_id == node || x.node_id.is_empty() || !live(x) {
            continue;
        }
        for a in &x.networks {
            let Some(v) = views.get_mut(a.network_id.as_str()) else {
                continue;
            };
            let Some(vtep) = node_ip(t, &x.node_id) else {
                continue;
            };
            for addr in &a.addresses {
                v.peers.push(NetworkPeer {
                    addr: super::ipam::host_part(addr).to_string(),
                    vtep: vtep.to_string(),
                });
            }
        }
    }
    views.into_values().collect()
}

/// What a session tells its node about the swarm, as the store has it now.
fn swarm_view(t: &super::store::Tables, mut m: SessionMessage) -> SessionMessage {
    m.managers = super::ca::manager_addrs(t);
    m.desired_role = t
        .nodes
        .get(&m.node_id)
        .and_then(|n| n.spec.as_ref())
        .map(|s| s.desired_role)
        .unwrap_or(0);
    if let Some(c) = t.clusters.values().next() {
        m.roots_pem = super::ca::trusted_roots(c);
        m.ca_digest = super::ca::root_ca(c)
            .map(|r| r.digest())
            .unwrap_or_default();
    }
    m
}

/// Writes status reports in batches: one store transaction per 100 ms.
async fn batch_writer(store: Store, mut rx: mpsc::Receiver<Pending>, shutdown: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let mut batch = vec![first];
        let deadline = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                p = rx.recv() => match p { Some(p) => batch.push(p), None => break },
            }
        }
        let all: Vec<(String, TaskStatusUpdate)> = batch
            .iter()
            .flat_map(|(n, us, _)| us.iter().map(move |u| (n.clone(), u.clone())))
            .collect();
        let started = std::time::Instant::now();
        let n = all.len();
        // a commit's worth at a time (ten thousand tasks starting at once report in the
        // same 100 ms)
        let mut next = 0;
        let res = store
            .update_all(|tx| {
                while let Some((node, u)) = all.get(next) {
                    if tx.full() {
                        return Ok(true);
                    }
                    next += 1;
                    let Some(mut t) = tx.get::<Task>(&u.task_id) else {
                        continue;
                    };
                    if &t.node_id != node {
                        continue; // only the owning node may report a task
                    }
                    let Some(new) = u.status.clone() else {
                        continue;
                    };
                    if new.state < state(&t) as i32 {
                        continue; // states only move forward
                    }
                    if t.status.as_ref() == Some(&new) {
                        continue;
                    }
                    t.status = Some(new);
                    tx.update(t)?;
                }
                Ok(false)
            })
            .await;
        tracing::debug!(
            updates = n,
            took_ms = started.elapsed().as_millis() as u64,
            "status batch written"
        );
        for (_, _, done) in batch {
            let _ = done.send(res.clone());
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A node's complete set of tasks as messages of about 1 MiB of tasks each (a node's
/// tasks, each up to a service's spec, may not fit one message); the networks, if given,
/// go with the first.
fn complete_set(tasks: Vec<Task>, networks: Option<Vec<NetworkView>>) -> Vec<AssignmentsMessage> {
    const PART_BYTES: usize = 1 << 20;
    let mut parts = vec![AssignmentsMessage {
        r#type: AssignType::Complete as i32,
        networks_set: networks.is_some(),
        networks: networks.unwrap_or_default(),
        ..Default::default()
    }];
    let mut bytes = 0;
    for t in tasks {
        let n = prost::Message::encoded_len(&t);
        let last = parts.len() - 1;
        if !parts[last].update_tasks.is_empty() && bytes + n > PART_BYTES {
            parts[last].more = true;
            parts.push(AssignmentsMessage {
                r#type: AssignType::Complete as i32,
                ..Default::default()
            });
            bytes = 0;
        }
        bytes += n;
        let last = parts.len() - 1;
        parts[last].update_tasks.push(t);
    }
    parts
}

fn is_for(t: &Task, node: &str) -> bool {
    t.node_id == node && state(t) as i32 >= TaskState::Assigned as i32
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
        let (first, mut views) = self
            .store
            .view(|t| (tasks_for_in(t, &node), network_views(t, &node)));
        let (tx, rx) = mpsc::channel(64);
        for m in complete_set(first, Some(views.clone())) {
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
                        let all = tasks_for(&store, &node);
                        msg = AssignmentsMessage {
                            r#type: AssignType::Incremental as i32,
                            ..Default::default()
                        };
                        for m in complete_set(all, None) {
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
        let id = super::network::attach_container(&self.store, &node, r.container_id, r.networks)
            .await
            .map_err(super::error::grpc_status)?;
        Ok(Response::new(AttachNetworkResponse { attachment_id: id }))
    }

    async fn detach_network(
        &self,
        req: Request<DetachNetworkRequest>,
    ) -> Result<Response<DetachNetworkResponse>, Status> {
        let node = node_of(&req)?;
        self.term()?;
        let id = req.into_inner().attachment_id;
        super::network::detach_container(&self.store, &node, &id)
            .await
            .map_err(super::error::grpc_status)?;
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

/// Since when the monitor counts nodes' silence: from `start`, or from `now` when its
/// wait for a 100 ms tick (begun at `waiting`) took more than half a heartbeat period.
/// Then this process or its host was stalled (a loaded or paused machine), the
/// heartbeats that came meanwhile may still be unread, and marking every node Down at
/// once for it would move all their tasks for nothing (seen on emulated hosts).
fn silence_from(start: Instant, waiting: Instant, now: Instant, period: Duration) -> Instant {
    if now.duration_since(waiting) > period / 2 {
        now
    } else {
        start
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

    #[test]
    fn a_stalled_monitor_gives_nodes_their_grace_again() {
        let start = Instant::now();
        let period = Duration::from_secs(1);
        let waiting = start + Duration::from_secs(10);
        // a tick that came on time (or a little late, as under load) changes nothing
        let on_time = waiting + Duration::from_millis(100);
        assert_eq!(silence_from(start, waiting, on_time, period), start);
        let late = waiting + Duration::from_millis(500);
        assert_eq!(silence_from(start, waiting, late, period), start);
        // a wait of more than half a period for a 100 ms tick: counted from now
        let stalled = waiting + Duration::from_millis(501);
        assert_eq!(silence_from(start, waiting, stalled, period), stalled);
        // shorter periods, shorter stalls
        let short = Duration::from_millis(200);
        assert_eq!(silence_from(start, waiting, late, short), late);
    }
}
