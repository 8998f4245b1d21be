//! The control API's logic on the store: find, create, update and remove services,
//! list tasks and nodes. Validation happens here, so that every client (CLI, remote
//! manager) gets the same refusals, each naming the field and why.

use std::collections::HashMap;

use shoal_proto::service_spec::Mode;
use shoal_proto::*;

use super::scheduler::parse_constraint;
use super::store::{new_id, Store, StoreError, StoreItem, Tables, TryFromObject};
use super::tasks::{desired, mode, state};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Invalid(String),
    #[error("{kind} {what} not found")]
    NotFound { kind: &'static str, what: String },
    #[error("{kind} {what} is ambiguous: it matches {count}")]
    Ambiguous {
        kind: &'static str,
        what: String,
        count: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The gRPC status for a control error (the control API's and the dispatcher's).
pub fn grpc_status(e: ControlError) -> tonic::Status {
    use tonic::Status;
    match e {
        ControlError::Invalid(m) => Status::invalid_argument(m),
        ControlError::NotFound { .. } => Status::not_found(e.to_string()),
        ControlError::Ambiguous { .. } => Status::invalid_argument(e.to_string()),
        ControlError::Store(s) => match s {
            StoreError::Proposal(m) => Status::unavailable(m),
            StoreError::NameInUse { .. } | StoreError::Exists { .. } => {
                Status::already_exists(s.to_string())
            }
            StoreError::NotFound { .. } => Status::not_found(s.to_string()),
            StoreError::TooLarge { .. } => Status::invalid_argument(s.to_string()),
            StoreError::NoSpace(_) => Status::resource_exhausted(s.to_string()),
            s => Status::failed_precondition(s.to_string()),
        },
    }
}

fn invalid(s: impl Into<String>) -> ControlError {
    ControlError::Invalid(s.into())
}

/// Finds an object by full ID, name, or unique ID prefix (in that order, as Docker does).
/// An empty or blank `what` is refused: as a prefix it would match every object.
pub fn find<T: StoreItem + TryFromObject>(
    table: &std::collections::BTreeMap<String, T>,
    what: &str,
) -> Result<T, ControlError> {
    if what.trim().is_empty() {
        return Err(invalid(format!(
            "{what:?} is not a {} ID or name: it is empty",
            T::KIND
        )));
    }
    if let Some(x) = table.get(what) {
        return Ok(x.clone());
    }
    let by_name: Vec<&T> = table.values().filter(|x| x.name() == what).collect();
    if by_name.len() == 1 {
        return Ok(by_name[0].clone());
    }
    let by_prefix: Vec<&T> = table
        .values()
        .filter(|x| x.id().starts_with(what))
        .collect();
    match (by_name.len(), by_prefix.len()) {
        (0, 1) => Ok(by_prefix[0].clone()),
        (0, 0) => Err(ControlError::NotFound {
            kind: T::KIND,
            what: what.into(),
        }),
        (n, m) => Err(ControlError::Ambiguous {
            kind: T::KIND,
            what: what.into(),
            count: n.max(m),
        }),
    }
}

pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks a service spec the way `docker service create` would.
pub fn validate_spec(spec: &ServiceSpec) -> Result<(), ControlError> {
    let name = spec
        .annotations
        .as_ref()
        .map(|a| a.name.as_str())
        .unwrap_or("");
    if !valid_name(name) {
        return Err(invalid(format!("--name: {name:?} is not a valid service name: use up to 63 of [a-zA-Z0-9-_], starting with a letter or digit")));
    }
    let task = spec
        .task
        .as_ref()
        .ok_or_else(|| invalid("the service has no task spec"))?;
    let c = task
        .container
        .as_ref()
        .ok_or_else(|| invalid("the service has no container spec"))?;
    if c.image.trim().is_empty() {
        return Err(invalid("image: an image is required"));
    }
    container_checks(task, c)?;
    if let Some(a) = &spec.annotations {
        check_labels("--label", &a.labels)?;
    }
    if let Some(u) = &spec.update {
        check_duration("--update-delay", &u.delay)?;
        check_duration("--update-monitor", &u.monitor)?;
        if !(0.0..=1.0).contains(&u.max_failure_ratio) {
            return Err(invalid(format!(
                "--update-max-failure-ratio {}: must be between 0 and 1",
                u.max_failure_ratio
            )));
        }
    }
    super::limits::check_service(spec).map_err(invalid)?;
    if let Some(p) = &task.placement {
        for k in &p.constraints {
            parse_constraint(k).map_err(|e| invalid(format!("--constraint: {e}")))?;
        }
        for pref in &p.preferences {
            super::scheduler::parse_preference(&format!("spread={}", pref.spread_descriptor))
                .map_err(invalid)?;
        }
    }
    if let Some(r) = &task.resources {
        for (what, res) in [("limit", &r.limits), ("reserve", &r.reservations)] {
            if let Some(res) = res {
                if res.memory_bytes < 0 || res.nano_cpus < 0 {
                    return Err(invalid(format!(
                        "--{what}-memory / --{what}-cpu must not be negative"
                    )));
                }
            }
        }
    }
    match &spec.mode {
        None => Err(invalid("--mode: a service needs a mode")),
        Some(Mode::ReplicatedJob(j)) if j.total_completions == 0 && j.max_concurrent == 0 => Ok(()),
        Some(_) => Ok(()),
    }
}

/// The container checks the node would make, made here first, so a task never fails
/// and retries forever on a value only a node refuses: the image reference, and
/// everything [`shoal_runtime::container::spec::check`] checks (the runtime's own
/// validation, of the container the agent would make of this task), plus what that
/// conversion cannot see (negative durations, a CPU reservation no host has).
fn container_checks(task: &TaskSpec, c: &ContainerSpec) -> Result<(), ControlError> {
    shoal_runtime::image::reference::ImageRef::parse(&c.image)
        .map_err(|e| invalid(format!("image: {e}")))?;
    let health = c.healthcheck.clone().unwrap_or_default();
    let restart = task.restart.unwrap_or_default();
    for (what, d) in [
        ("--stop-grace-period", &c.stop_grace_period),
        ("--health-interval", &health.interval),
        ("--health-timeout", &health.timeout),
        ("--health-start-period", &health.start_period),
        ("--restart-delay", &restart.delay),
        ("--restart-window", &restart.window),
    ] {
        check_duration(what, d)?;
    }
    if health.retries < 0 {
        return Err(invalid(format!(
            "--health-retries {}: must not be negative",
            health.retries
        )));
    }
    check_labels("--container-label", &c.labels)?;
    if let Some(r) = task
        .resources
        .as_ref()
        .and_then(|r| r.reservations.as_ref())
    {
        let cpus = r.nano_cpus as f64 / 1e9;
        if cpus > shoal_runtime::container::spec::MAX_CPUS {
            return Err(invalid(format!(
                "--reserve-cpu {cpus}: more CPUs than a host has (at most {})",
                shoal_runtime::container::spec::MAX_CPUS
            )));
        }
    }
    let t = Task {
        spec: Some(task.clone()),
        ..Default::default()
    };
    shoal_runtime::container::spec::check(&crate::agent::convert::container_spec(&t))
        .map_err(|e| invalid(e.to_string()))
}

/// A duration of a spec: not negative (the node would read it as 0).
pub fn check_duration(what: &str, d: &Option<prost_types::Duration>) -> Result<(), ControlError> {
    match d {
        Some(d) if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 => {
            Err(invalid(format!(
                "{what}: {}s{}ns is not a duration (negative)",
                d.seconds, d.nanos
            )))
        }
        _ => Ok(()),
    }
}

/// Labels of any object: up to [`super::limits::MAX_LABEL_KEY`] characters of key,
/// none empty.
pub fn check_labels<'a>(
    what: &str,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), ControlError> {
    super::limits::check_labels(labels).map_err(|e| invalid(format!("{what}: {e}")))
}

/// A transaction whose body may refuse with a [`ControlError`] (a user's mistake found
/// only against the store), which is returned as it is.
pub async fn update_checked<R>(
    store: &Store,
    f: impl FnOnce(&mut super::store::Tx<'_>) -> Result<R, ControlError>,
) -> Result<R, ControlError> {
    let mut refused = None;
    let res = store
        .update(|tx| {
            // an error aborts the transaction: nothing it recorded is committed
            f(tx).map_err(|e| match e {
                ControlError::Store(e) => e,
                e => {
                    refused = Some(e);
                    StoreError::Invalid("refused".into())
                }
            })
        })
        .await;
    res.map_err(|e| refused.take().unwrap_or(ControlError::Store(e)))
}

pub async fn create_service(store: &Store, mut spec: ServiceSpec) -> Result<Service, ControlError> {
    validate_spec(&spec)?;
    store.view(|t| super::network::resolve_service(t, "", &mut spec))?;
    let s = Service {
        id: new_id(),
        spec: Some(spec),
        spec_version: 1,
        ..Default::default()
    };
    let id = s.id.clone();
    store
        .update(|tx| {
            tx.create(s)?;
            super::orchestrator::reconcile_in(tx, &id)
        })
        .await?;
    store
        .view(|t| t.services.get(&id).cloned())
        .ok_or(ControlError::NotFound {
            kind: "service",
            what: id,
        })
}

pub async fn update_service(
    store: &Store,
    what: &str,
    version: u64,
    mut spec: ServiceSpec,
    rollback: bool,
) -> Result<Service, ControlError> {
    let cur = store.view(|t| find(&t.services, what))?;
    if version != 0 && cur.meta.map(|m| m.version) != Some(version) {
        return Err(ControlError::Store(StoreError::Conflict {
            kind: "service".into(),
            id: cur.id.clone(),
            expected: version,
            actual: cur.meta.map(|m| m.version).unwrap_or(0),
        }));
    }
    if rollback {
        spec = cur.previous_spec.clone().ok_or_else(|| {
            invalid(format!(
                "service {} has no previous spec to roll back to",
                what
            ))
        })?;
    }
    validate_spec(&spec)?;
    let name_of = |s: &ServiceSpec| s.annotations.as_ref().map(|a| a.name.clone());
    if let Some(old) = cur.spec.as_ref().and_then(name_of) {
        let new = name_of(&spec).unwrap_or_default();
        if new != old {
            return Err(invalid(format!(
                "--name: service {old} cannot be renamed to {new:?} (as in Swarm): create a new service instead"
            )));
        }
    }
    let cur_mode = mode(&cur).map(std::mem::discriminant);
    if cur_mode != spec.mode.as_ref().map(std::mem::discriminant) {
        return Err(invalid("--mode: a service's mode cannot be changed"));
    }
    store.view(|t| super::network::resolve_service(t, &cur.id, &mut spec))?;
    let mut next = cur.clone();
    let task_changed = cur.spec.as_ref().and_then(|s| s.task.clone()) != spec.task;
    next.previous_spec = cur.spec.clone();
    next.spec = Some(spec);
    if task_changed {
        next.spec_version += 1;
    }
    if matches!(
        mode(&cur),
        Some(Mode::ReplicatedJob(_)) | Some(Mode::GlobalJob(_))
    ) {
        // every update of a job runs it again, as `docker service update` does
        next.job_iteration += 1;
    }
    let id = next.id.clone();
    store.update(|tx| tx.update(next)).await?;
    Ok(store.view(|t| t.services[&id].clone()))
}

pub async fn remove_service(store: &Store, what: &str) -> Result<(), ControlError> {
    let s = store.view(|t| find(&t.services, what))?;
    store
        .update(|tx| {
            tx.remove::<Service>(&s.id)?;
            super::orchestrator::reconcile_in(tx, &s.id)
        })
        .await?;
    Ok(())
}

/// Running and desired task counts per service, as `service ls` shows "n/m".
pub fn replica_counts(t: &Tables) -> (HashMap<String, u64>, HashMap<String, u64>) {
    let mut running: HashMap<String, u64> = HashMap::new();
    let mut desired_n: HashMap<String, u64> = HashMap::new();
    let ready_nodes: Vec<&String> = t
        .nodes
        .values()
        .filter(|n| {
            n.status
                .as_ref()
                .is_some_and(|s| s.state == NodeState::Ready as i32)
        })
        .map(|n| &n.id)
        .collect();
    for s in t.services.values() {
        let want = match mode(s) {
            Some(Mode::Replicated(r)) => r.replicas,
            Some(Mode::ReplicatedJob(j)) => j.total_completions.max(1),
            Some(Mode::Global(_)) | Some(Mode::GlobalJob(_)) => t
                .tasks
                .values()
                .filter(|x| {
                    x.service_id == s.id
                        && desired(x) as i32 <= TaskState::Complete as i32
                        && desired(x) != TaskState::Shutdown
                })
                .count() as u64,
            None => 0,
        };
        desired_n.insert(s.id.clone(), want);
        running.insert(s.id.clone(), 0);
    }
    for x in t.tasks.values() {
        let counts = state(x) == TaskState::Running
            && desired(x) == TaskState::Running
            && ready_nodes.contains(&&x.node_id)
            || state(x) == TaskState::Complete && desired(x) == TaskState::Complete;
        if counts {
            *running.entry(x.service_id.clone()).or_default() += 1;
        }
    }
    (running, desired_n)
}

/// Tasks matching `docker service ps`-style filters (service=, node=, desired-state=, id=, name=).
pub fn list_tasks(t: &Tables, filters: &[String]) -> Result<Vec<Task>, ControlError> {
    let mut out: Vec<Task> = t.tasks.values().cloned().collect();
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| invalid(format!("--filter {f:?}: use key=value")))?;
        match k {
            "service" => {
                let s = find(&t.services, v)?;
                out.retain(|x| x.service_id == s.id);
            }
            "node" => {
                let n = find(&t.nodes, v)?;
                out.retain(|x| x.node_id == n.id);
            }
            "desired-state" => {
                let want: &[TaskState] = match v {
                    "running" => &[TaskState::Running, TaskState::Ready, TaskState::Complete],
                    "shutdown" => &[TaskState::Shutdown, TaskState::Remove],
                    "accepted" => &[TaskState::Accepted],
                    _ => {
                        return Err(invalid(format!(
                            "--filter desired-state={v}: use running, shutdown or accepted"
                        )))
                    }
                };
                out.retain(|x| want.contains(&desired(x)));
            }
            "id" => out.retain(|x| x.id.starts_with(v)),
            "name" => out.retain(|x| {
                x.annotations
                    .as_ref()
                    .is_some_and(|a| a.name.starts_with(v))
            }),
            _ => {
                return Err(invalid(format!(
                    "--filter {k:?} is not supported (service, node, desired-state, id, name)"
                )))
            }
        }
    }
    out.sort_by(|a, b| {
        a.service_id
            .cmp(&b.service_id)
            .then(a.slot.cmp(&b.slot))
            .then(
                b.status
                    .as_ref()
                    .map(|s| s.timestamp_ms)
                    .cmp(&a.status.as_ref().map(|s| s.timestamp_ms)),
            )
    });
    Ok(out)
}

/// The cluster object as callers see it: the CA's key never leaves the store.
pub fn without_secrets(mut c: Cluster) -> Cluster {
    c.root_ca_key.clear();
    c
}

fn positive(
    d: &Option<prost_types::Duration>,
    what: &str,
    min_ms: i64,
) -> Result<(), ControlError> {
    if let Some(d) = d {
        let ms = d.seconds * 1000 + i64::from(d.nanos) / 1_000_000;
        if ms < min_ms {
            return Err(invalid(format!("{what}: at least {min_ms} ms")));
        }
    }
    Ok(())
}

/// `swarm update`: the cluster's settings (not its CA or tokens).
pub async fn update_cluster(
    store: &Store,
    version: u64,
    spec: ClusterSpec,
) -> Result<Cluster, ControlError> {
    positive(
        &spec.dispatcher.as_ref().and_then(|d| d.heartbeat_period),
        "--dispatcher-heartbeat",
        100,
    )?;
    positive(
        &spec.ca_config.as_ref().and_then(|c| c.node_cert_expiry),
        "--cert-expiry",
        3_600_000,
    )?;
    if spec
        .orchestration
        .as_ref()
        .is_some_and(|o| o.task_history_retention_limit < 0)
    {
        return Err(invalid("--task-history-limit: must not be negative"));
    }
    let cur = store
        .view(|t| t.clusters.values().next().cloned())
        .ok_or_else(|| invalid("the swarm has no cluster object"))?;
    let actual = cur.meta.map(|m| m.version).unwrap_or(0);
    if version != 0 && version != actual {
        return Err(ControlError::Store(StoreError::Conflict {
            kind: "cluster".into(),
            id: cur.id.clone(),
            expected: version,
            actual,
        }));
    }
    // the spec is replaced whole: one that names no cluster is a client's mistake (an
    // empty request), not a wish to forget the swarm's name and settings
    let name = |s: &ClusterSpec| s.annotations.as_ref().map(|a| a.name.clone());
    let have = cur.spec.as_ref().and_then(name).unwrap_or_default();
    match name(&spec) {
        None => {
            return Err(invalid(
                "the cluster spec is empty: an update replaces the whole spec, so send the current one (from swarm inspect) with the changes",
            ))
        }
        Some(n) if n != have => {
            return Err(invalid(format!(
                "the swarm's name is {have:?} and cannot be changed to {n:?}"
            )))
        }
        Some(_) => {}
    }
    let mut next = cur.clone();
    next.spec = Some(spec);
    let id = next.id.clone();
    store.update(|tx| tx.update(next)).await?;
    Ok(store.view(|t| t.clusters[&id].clone()))
}

/// `node update`: availability, labels and the wanted role. (A role change is Raft
/// membership too: the caller does that part, see `api`.)
pub async fn update_node(
    store: &Store,
    what: &str,
    version: u64,
    spec: NodeSpec,
) -> Result<Node, ControlError> {
    let cur = store.view(|t| find(&t.nodes, what))?;
    let actual = cur.meta.map(|m| m.version).unwrap_or(0);
    if version != 0 && version != actual {
        return Err(ControlError::Store(StoreError::Conflict {
            kind: "node".into(),
            id: cur.id.clone(),
            expected: version,
            actual,
        }));
    }
    if let Some(a) = &spec.annotations {
        check_labels("--label-add", &a.labels)?;
    }
    let mut next = cur.clone();
    next.spec = Some(spec);
    let id = next.id.clone();
    store.update(|tx| tx.update(next)).await?;
    Ok(store.view(|t| t.nodes[&id].clone()))
}

/// `node rm`: refused for a node that is not down, or a manager, unless forced. The
/// node's certificate is refused from then on; its tasks are orphaned (and replaced).
pub async fn remove_node(store: &Store, what: &str, force: bool) -> Result<Node, ControlError> {
    let n = store.view(|t| find(&t.nodes, what))?;
    let ready = n
        .status
        .as_ref()
        .is_some_and(|s| s.state == NodeState::Ready as i32);
    if n.role == NodeRole::Manager as i32 && !force {
        return Err(invalid(format!(
            "node {} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal",
            n.id
        )));
    }
    if ready && !force {
        return Err(invalid(format!(
            "node {} is not down and can't be removed (use --force to remove it anyway)",
            n.id
        )));
    }
    let id = n.id.clone();
    // its tasks a commit's worth at a time, then the node: a removal cut short leaves the
    // node there to be removed again
    store
        .update_all(|tx| {
            for t in tx.tasks_of(&id, true) {
                if !state(&t).is_terminal() {
                    if tx.full() {
                        return Ok(true);
                    }
                    let mut t = t.clone();
                    let st = t.status.get_or_insert_with(TaskStatus::default);
                    st.state = TaskState::Orphaned as i32;
                    st.message = "node removed".into();
                    t.desired_state = TaskState::Remove as i32;
                    tx.update(t)?;
                }
            }
            Ok(false)
        })
        .await?;
    store
        .update(move |tx| {
            if let Some(mut c) = tx.list::<Cluster>().into_iter().next() {
                if !c.removed_nodes.contains(&id) {
                    c.removed_nodes.push(id.clone());
                    tx.update(c)?;
                }
            }
            tx.remove::<Node>(&id)
        })
        .await?;
    Ok(n)
}
