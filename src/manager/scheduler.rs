//! The scheduler: places pending tasks on nodes through a pipeline of filters (ready,
//! availability, constraints, resources, max replicas per node), then spreads them:
//! fewest tasks of the same service first, then fewest tasks overall. A task that fits
//! nowhere stays pending and says why, as Swarm does ("no suitable node (…)").

use std::collections::HashMap;
use std::time::Duration;

use shoal_proto::{Node, NodeAvailability, NodeState, Task, TaskState};
use tokio_util::sync::CancellationToken;

use super::allocator::{self, allocate_services, Pools};
use super::lifecycle::{self, Writer};
use super::store::{Store, StoreError, Tx};
use super::tasks::{desired, run_loop, state, Left};
use crate::spec::placement::{label_of, node_matches_constraints};

/// Why a node was passed over, for the "no suitable node" message.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Reason {
    NotAvailable,
    Constraints,
    Memory,
    Cpu,
    MaxReplicas,
    HostPort,
}

impl Reason {
    fn explain(self, n: usize) -> String {
        let nodes = if n == 1 {
            "1 node".to_string()
        } else {
            format!("{n} nodes")
        };
        match self {
            Reason::NotAvailable => format!("{nodes} not available for new tasks"),
            Reason::Constraints => format!("scheduling constraints not satisfied on {nodes}"),
            Reason::Memory => format!("insufficient resources on {nodes}"),
            Reason::Cpu => format!("insufficient resources on {nodes}"),
            Reason::MaxReplicas => format!("max replicas per node limit exceed on {nodes}"),
            Reason::HostPort => format!("host-mode port already in use on {nodes}"),
        }
    }
}

/// What is already placed on each node.
#[derive(Default, Clone)]
struct NodeLoad {
    tasks: usize,
    per_service: HashMap<String, usize>,
    memory: i64,
    cpu: i64,
    /// Ports published in host mode by the node's tasks: one task per port and node.
    host_ports: std::collections::HashSet<HostPort>,
}

/// A port published in host mode: number and protocol.
type HostPort = (u32, i32);

impl NodeLoad {
    /// Counts `t` as placed here (`per_service`: in its service's count too), with the
    /// ports its service publishes in host mode.
    fn add(&mut self, t: &Task, per_service: bool, host_ports: &[HostPort]) {
        let (m, c) = reservations(t);
        self.tasks += 1;
        if per_service {
            *self.per_service.entry(t.service_id.clone()).or_default() += 1;
        }
        self.memory += m;
        self.cpu += c;
        self.host_ports.extend(host_ports.iter().copied());
    }
}

/// The ports each service publishes in host mode (most services have none, and are
/// not in the map).
fn host_ports_by_service(tx: &Tx<'_>) -> HashMap<String, Vec<HostPort>> {
    let mut m = HashMap::new();
    tx.for_each(|s: &shoal_proto::Service| {
        let ports: Vec<HostPort> = allocator::host_ports(s)
            .map(|p| (p.published_port, p.protocol))
            .collect();
        if !ports.is_empty() {
            m.insert(s.id.clone(), ports);
        }
    });
    m
}

/// Places `t` on `node`: counted in the node's load, written as ASSIGNED.
fn assign(
    tx: &mut Tx<'_>,
    load: &mut HashMap<String, NodeLoad>,
    mut t: Task,
    node: &str,
    host_ports: &[HostPort],
) -> Result<(), StoreError> {
    if let Err(e) = lifecycle::advance(
        &mut t,
        Writer::Scheduler,
        TaskState::Assigned,
        "scheduler assigned task to node",
    ) {
        tracing::error!(task.id = %t.id, error = %e, "not assigned");
        return Ok(());
    }
    load.entry(node.to_string())
        .or_default()
        .add(&t, true, host_ports);
    t.node_id = node.to_string();
    tx.update(t)
}

fn reservations(t: &Task) -> (i64, i64) {
    let r = t
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.reservations.as_ref());
    (
        r.map(|r| r.memory_bytes).unwrap_or(0),
        r.map(|r| r.nano_cpus).unwrap_or(0),
    )
}

/// Tasks that hold resources on their node.
fn holds_node(t: &Task) -> bool {
    !t.node_id.is_empty()
        && state(t) as i32 >= TaskState::Assigned as i32
        && !state(t).is_terminal()
}

fn check(n: &Node, load: &NodeLoad, t: &Task, host_ports: &[HostPort]) -> Result<(), Reason> {
    let ready = n
        .status
        .as_ref()
        .is_some_and(|s| s.state == NodeState::Ready as i32);
    let active =
        n.spec.as_ref().map(|s| s.availability).unwrap_or(0) == NodeAvailability::Active as i32;
    // a standalone container's network attachment goes where the container is, drained
    // or paused
    if !ready || (!active && t.attachment_container.is_empty()) {
        return Err(Reason::NotAvailable);
    }
    let placement = t.spec.as_ref().and_then(|s| s.placement.as_ref());
    let constraints = placement.map(|p| p.constraints.clone()).unwrap_or_default();
    if !node_matches_constraints(n, &constraints).unwrap_or(false) {
        return Err(Reason::Constraints);
    }
    let (mem, cpu) = reservations(t);
    let res = n.description.as_ref().and_then(|d| d.resources.as_ref());
    if mem > 0 && load.memory + mem > res.map(|r| r.memory_bytes).unwrap_or(0) {
        return Err(Reason::Memory);
    }
    if cpu > 0 && load.cpu + cpu > res.map(|r| r.nano_cpus).unwrap_or(0) {
        return Err(Reason::Cpu);
    }
    let max = placement.map(|p| p.max_replicas).unwrap_or(0);
    if max > 0 && load.per_service.get(&t.service_id).copied().unwrap_or(0) as u64 >= max {
        return Err(Reason::MaxReplicas);
    }
    if host_ports.iter().any(|p| load.host_ports.contains(p)) {
        return Err(Reason::HostPort);
    }
    Ok(())
}

/// How good a node is for a task, smallest first: tasks of the service in the node's
/// group for each placement preference, tasks of the service on the node, tasks on the
/// node, and the node ID to break ties.
type PlacementKey<'a> = (Vec<usize>, usize, usize, &'a str);

/// The labels of a task's `spread=` placement preferences, in order.
fn spread_labels(t: &Task) -> Vec<String> {
    t.spec
        .as_ref()
        .and_then(|s| s.placement.as_ref())
        .map(|p| {
            p.preferences
                .iter()
                .map(|x| x.spread_descriptor.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Moves new tasks to pending (network addresses come here once overlays exist) and
/// places every pending task it can, in one transaction: a task that can be placed at
/// once goes from new to assigned in one commit.
/// Returns how many it placed, and whether a commit's worth was reached with more to
/// do (the rest is for the next pass).
pub async fn allocate_and_schedule(store: &Store) -> Result<(usize, bool), StoreError> {
    store
        .update(|tx| {
            // one set of pools for the commit: built at most once
            let mut pools = Pools::default();
            allocator::allocate_nodes(tx, &mut pools)?;
            let more = allocate_new(tx, &mut pools)?;
            let (placed, unplaced) = schedule_pending(tx)?;
            Ok((placed, more || unplaced))
        })
        .await
}

/// Whether `t` may change in this transaction: there is room, or it has changed in it
/// already (a task allocated and placed in one commit is one change).
fn room_for(tx: &Tx<'_>, t: &Task) -> bool {
    !tx.full() || tx.has_change::<Task>(&t.id)
}

/// Places every pending task it can (a commit's worth: whether some were left for the
/// next pass is the second value).
fn schedule_pending(tx: &mut Tx<'_>) -> Result<(usize, bool), StoreError> {
    let mut pending: Vec<Task> = tx.filter(|t: &Task| {
        state(t) == TaskState::Pending
            && !matches!(desired(t), TaskState::Shutdown | TaskState::Remove)
    });
    if pending.is_empty() {
        return Ok((0, false)); // most passes: a status changed, nothing to place
    }
    let mut more = false;
    // tasks per service are counted only for the services being placed
    let placing: std::collections::HashSet<&str> =
        pending.iter().map(|t| t.service_id.as_str()).collect();
    let nodes = tx.list::<Node>();
    let host_ports = host_ports_by_service(tx);
    let ports_of =
        |t: &Task| -> &[HostPort] { host_ports.get(&t.service_id).map_or(&[], |v| &v[..]) };
    let mut load: HashMap<String, NodeLoad> = nodes
        .iter()
        .map(|n| (n.id.clone(), NodeLoad::default()))
        .collect();
    tx.for_each(|t: &Task| {
        if !holds_node(t) {
            return;
        }
        if let Some(l) = load.get_mut(&t.node_id) {
            l.add(t, placing.contains(t.service_id.as_str()), ports_of(t));
        }
    });
    drop(placing);
    let no_load = NodeLoad::default();
    let mut placed = 0;
    pending.sort_by(|a, b| a.service_id.cmp(&b.service_id).then(a.slot.cmp(&b.slot)));
    // The common case, fast: a service's tasks with no reservations, no limit per
    // node, no preferences, no host-mode ports and no fixed node can go to the same
    // nodes, so those are found once and the least loaded taken from a heap, instead
    // of every node checked for every task.
    let mut slow = Vec::new();
    let mut i = 0;
    while i < pending.len() {
        let sid = pending[i].service_id.clone();
        let j = pending[i..]
            .iter()
            .position(|t| t.service_id != sid)
            .map_or(pending.len(), |k| i + k);
        let group = &pending[i..j];
        let placement = |t: &Task| t.spec.as_ref().and_then(|s| s.placement.clone());
        let simple = ports_of(&group[0]).is_empty()
            && group.iter().all(|t| {
                t.node_id.is_empty()
                    && reservations(t) == (0, 0)
                    && placement(t).is_none_or(|p| p.max_replicas == 0 && p.preferences.is_empty())
                    && placement(t) == placement(&group[0])
            });
        let eligible: Vec<&Node> = if simple {
            nodes
                .iter()
                .filter(|n| check(n, &no_load, &group[0], &[]).is_ok())
                .collect()
        } else {
            Vec::new()
        };
        if eligible.is_empty() {
            slow.extend(group.iter().cloned());
            i = j;
            continue;
        }
        let count = |id: &str| {
            load.get(id).map_or((0, 0), |l| {
                (l.per_service.get(&sid).copied().unwrap_or(0), l.tasks)
            })
        };
        let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(usize, usize, &str)>> =
            eligible
                .iter()
                .map(|n| {
                    let (s, t) = count(&n.id);
                    std::cmp::Reverse((s, t, n.id.as_str()))
                })
                .collect();
        for t in group {
            if !room_for(tx, t) {
                more = true;
                break;
            }
            let Some(std::cmp::Reverse((ps, total, node))) = heap.pop() else {
                break;
            };
            heap.push(std::cmp::Reverse((ps + 1, total + 1, node)));
            assign(tx, &mut load, t.clone(), node, &[])?;
            placed += 1;
        }
        i = j;
    }
    for mut t in slow {
        if !room_for(tx, &t) {
            more = true;
            break;
        }
        let mut why: HashMap<Reason, usize> = HashMap::new();
        let candidates: Vec<&Node> = nodes
            .iter()
            .filter(|n| t.node_id.is_empty() || n.id == t.node_id)
            .collect();
        let prefs = spread_labels(&t);
        let mut best: Option<(&Node, PlacementKey)> = None;
        for n in candidates {
            let l = load.get(&n.id).unwrap_or(&no_load);
            match check(n, l, &t, ports_of(&t)) {
                Ok(()) => {
                    // placement preferences first: the label value with the
                    // fewest tasks of the service, then the node with the
                    // fewest tasks of the service, then the fewest tasks
                    let groups = prefs
                        .iter()
                        .map(|p| {
                            let v = label_of(n, p);
                            nodes
                                .iter()
                                .filter(|o| label_of(o, p) == v)
                                .map(|o| {
                                    load.get(&o.id)
                                        .and_then(|x| x.per_service.get(&t.service_id))
                                        .copied()
                                        .unwrap_or(0)
                                })
                                .sum()
                        })
                        .collect();
                    let key = (
                        groups,
                        l.per_service.get(&t.service_id).copied().unwrap_or(0),
                        l.tasks,
                        n.id.as_str(),
                    );
                    if best.as_ref().is_none_or(|(_, k)| key < *k) {
                        best = Some((n, key));
                    }
                }
                Err(r) => *why.entry(r).or_default() += 1,
            }
        }
        match best {
            Some((n, _)) => {
                let node = n.id.clone();
                let ports = ports_of(&t).to_vec();
                assign(tx, &mut load, t, &node, &ports)?;
                placed += 1;
            }
            None => {
                let mut reasons: Vec<(Reason, usize)> = why.into_iter().collect();
                reasons.sort();
                let text = if reasons.is_empty() {
                    "no nodes in the cluster".to_string()
                } else {
                    {
                        let mut parts: Vec<String> = Vec::new();
                        for (r, n) in &reasons {
                            let p = r.explain(*n);
                            if !parts.contains(&p) {
                                parts.push(p);
                            }
                        }
                        parts.join("; ")
                    }
                };
                let msg = format!("no suitable node ({text})");
                if t.status.as_ref().map(|s| s.err.as_str()) != Some(msg.as_str()) {
                    let st = t.status.get_or_insert_with(Default::default);
                    st.err = msg.clone();
                    st.message = "pending task scheduling".into();
                    tx.update(t)?;
                }
            }
        }
    }
    Ok((placed, more))
}

/// Moves new tasks to pending once they have their network addresses (services get
/// their VIPs and published ports first). A task whose addresses cannot be had stays new,
/// with the reason in its status for `service ps` and `inspect`. A commit's worth at a
/// time: returns whether some were left for the next pass.
fn allocate_new(tx: &mut Tx<'_>, pools: &mut Pools) -> Result<bool, StoreError> {
    let new = tx.filter(|t: &Task| {
        state(t) == TaskState::New && !matches!(desired(t), TaskState::Shutdown | TaskState::Remove)
    });
    if new.is_empty() {
        return Ok(false);
    }
    allocate_services(tx, pools)?;
    let ingress = allocator::ingress_id(tx);
    for mut t in new {
        if !room_for(tx, &t) {
            return Ok(true);
        }
        match allocator::attach_task(tx, pools, ingress.as_deref(), &mut t) {
            Ok(()) => match lifecycle::advance(
                &mut t,
                Writer::Allocator,
                TaskState::Pending,
                "pending task scheduling",
            ) {
                Ok(()) => tx.update(t)?,
                Err(e) => tracing::error!(task.id = %t.id, error = %e, "not allocated"),
            },
            Err(why) => {
                let err = format!("allocation failed: {why}");
                if t.status.as_ref().map(|s| s.err.as_str()) != Some(err.as_str()) {
                    let st = t.status.get_or_insert_with(Default::default);
                    st.err = err;
                    st.message = "waiting for network addresses".into();
                    tx.update(t)?;
                }
            }
        }
    }
    Ok(false)
}

/// The allocator and the scheduler, debounced as swarmkit does (50 ms after a change).
pub struct Scheduler {
    store: Store,
}

impl Scheduler {
    pub fn new(store: Store) -> Scheduler {
        Scheduler { store }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let store = self.store.clone();
        run_loop(
            "scheduler",
            store.clone(),
            shutdown,
            Duration::from_millis(50),
            None,
            |_| {
                let store = store.clone();
                async move {
                    match allocate_and_schedule(&store).await {
                        Ok((_, true)) => Left::All,
                        Ok(_) => Left::Nothing,
                        Err(e) => {
                            tracing::warn!(error = %e, "allocating and scheduling tasks failed");
                            Left::Nothing
                        }
                    }
                }
            },
        )
        .await;
    }
}
