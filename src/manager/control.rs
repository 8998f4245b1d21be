//! The control API's logic on the store: create, update and remove services, list tasks,
//! update the cluster's settings and nodes. Every spec goes through the one validation
//! (`crate::spec::validate`) here, so that every client (the CLI, a remote manager, the
//! next front ends) gets the same refusals, each naming its field.

use std::collections::HashMap;

use shoal_proto::service_spec::Mode;
use shoal_proto::*;

use super::error::{check_version, find, invalid, update_checked, ControlError};
use super::images::ImageOptions;
use super::lifecycle::{self, Writer};
use super::revisions;
use super::store::{new_id, now_ms, Store, Tables};
use super::tasks::{desired, is_job, state};
use crate::spec::{validate, Field, SpecError};

/// Credentials a client sent with a create or an update, checked before anything is
/// asked of a registry or kept.
fn check_auth(images: &ImageOptions) -> Result<(), ControlError> {
    match &images.auth {
        Some(c) => crate::spec::image::check_credential(c).map_err(invalid),
        None => Ok(()),
    }
}

/// The service as an answer: its registry credentials never leave the managers.
pub fn answer(mut s: Service) -> Service {
    s.registry_auth = None;
    s
}

pub async fn create_service(
    store: &Store,
    mut spec: ServiceSpec,
    images: &ImageOptions,
) -> Result<Service, ControlError> {
    validate::service(&spec)?;
    check_auth(images)?;
    store.view(|t| super::network::resolve_service(t, "", &mut spec))?;
    store.view(|t| super::files::resolve(t, &mut spec))?;
    let warnings = super::images::pin(&mut spec, None, images).await;
    let s = Service {
        id: new_id(),
        spec: Some(spec),
        spec_version: 1,
        registry_auth: images.auth.clone(),
        ..Default::default()
    };
    let id = s.id.clone();
    let now = now_ms();
    update_checked(store, |tx| {
        let mut s = s;
        if let Some(spec) = &mut s.spec {
            super::files::check_in(tx, spec)?;
        }
        revisions::start(tx, &mut s, now)?;
        tx.create(s)?;
        Ok(super::orchestrator::reconcile_in(tx, &id)?)
    })
    .await?;
    let s = store
        .view(|t| t.services.get(&id).cloned())
        .ok_or(ControlError::NotFound {
            kind: "service",
            what: id,
        })?;
    Ok(Service {
        warnings,
        ..answer(s)
    })
}

/// What `service update` asks: a new spec, or a rollback (to the previous spec, or to
/// a revision).
pub enum Change {
    Spec(Box<ServiceSpec>),
    Rollback { to_revision: Option<u64> },
}

pub async fn update_service(
    store: &Store,
    what: &str,
    version: u64,
    change: Change,
    images: &ImageOptions,
) -> Result<Service, ControlError> {
    check_auth(images)?;
    let cur = store.view(|t| find(&t.services, what))?;
    check_version("service", &cur.id, cur.meta, version)?;
    let limit = store.view(|t| revisions::limit(t.clusters.values().next()));
    let now = now_ms();
    let to_revision = match &change {
        Change::Rollback { to_revision } => *to_revision,
        Change::Spec(_) => None,
    };
    let mut warnings = vec![];
    let spec = match change {
        Change::Rollback { .. } => None,
        Change::Spec(spec) => {
            let mut spec = *spec;
            validate::service(&spec)?;
            if let Some(old) = &cur.spec {
                validate::service_update(old, &spec)?;
            }
            store.view(|t| super::network::resolve_service(t, &cur.id, &mut spec))?;
            store.view(|t| super::files::resolve(t, &mut spec))?;
            warnings = super::images::pin(&mut spec, cur.spec.as_ref(), images).await;
            Some(spec)
        }
    };
    let id = cur.id.clone();
    // read again in the transaction: the update supervisor writes the service too (its
    // status, a pause, a rollback), and what it wrote must not be overwritten
    update_checked(store, |tx| {
        let mut next = tx
            .get::<Service>(&id)
            .ok_or_else(|| ControlError::NotFound {
                kind: "service",
                what: what.to_string(),
            })?;
        check_version("service", &id, next.meta, version)?;
        match spec {
            None => {
                revisions::rollback(
                    tx,
                    &mut next,
                    to_revision,
                    "manually requested rollback",
                    limit,
                    now,
                )?
                .map_err(ControlError::Refused)?;
                // what it restores was checked when it was given; the limits may have
                // changed since (a refusal commits nothing)
                validate::service(next.spec.as_ref().unwrap_or(&ServiceSpec::default()))?;
            }
            Some(mut spec) => {
                super::files::check_in(tx, &mut spec)?;
                revisions::update(tx, &mut next, spec, limit, now)?
            }
        }
        if is_job(&next) {
            // every update of a job runs it again, as `docker service update` does
            next.job_iteration += 1;
        }
        if images.auth.is_some() {
            next.registry_auth.clone_from(&images.auth);
        } else if let Some(c) = &next.registry_auth {
            // the image moved to another registry: what was sent for the old one goes
            let image = crate::spec::docker::service_image(&next);
            if crate::spec::image::auth_for(Some(c), image).is_none() {
                next.registry_auth = None;
            }
        }
        tx.update(next)?;
        Ok(())
    })
    .await?;
    store.view(|t| {
        let mut s = find(&t.services, &id)?;
        revisions::fill(t, &mut s);
        Ok(Service {
            warnings,
            ..answer(s)
        })
    })
}

pub async fn remove_service(store: &Store, what: &str) -> Result<(), ControlError> {
    let s = store.view(|t| find(&t.services, what))?;
    store
        .update(|tx| {
            tx.remove::<Service>(&s.id)?;
            revisions::remove_all(tx, &s.id)?;
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
        let want = match s.mode() {
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
    let bad = |f: &str, why: &str| {
        ControlError::from(SpecError::new(Field::new("filters"), why).value(f))
    };
    for f in filters {
        let (k, v) = f.split_once('=').ok_or_else(|| bad(f, "use key=value"))?;
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
                    _ => return Err(bad(f, "desired-state is running, shutdown or accepted")),
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
                return Err(bad(
                    f,
                    "filters are service, node, desired-state, id and name",
                ))
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

/// `swarm update`: the cluster's settings (not its CA or tokens).
pub async fn update_cluster(
    store: &Store,
    version: u64,
    spec: ClusterSpec,
    rotate_dek: bool,
) -> Result<Cluster, ControlError> {
    validate::cluster(&spec)?;
    let cur = store
        .view(|t| t.clusters.values().next().cloned())
        .ok_or_else(|| invalid("the swarm has no cluster object"))?;
    check_version("cluster", &cur.id, cur.meta, version)?;
    // the spec is replaced whole (one that names no cluster is refused by the
    // validation): its name must be the swarm's
    let name = |s: &ClusterSpec| s.annotations.as_ref().map(|a| a.name.clone());
    let have = cur.spec.as_ref().and_then(name).unwrap_or_default();
    if let Some(n) = name(&spec).filter(|n| *n != have) {
        return Err(SpecError::new(
            Field::new("annotations.name"),
            format!("the swarm's name is {have:?} and cannot be changed to {n:?}"),
        )
        .into());
    }
    let mut next = cur.clone();
    next.spec = Some(spec);
    if rotate_dek {
        next.dek_rotation += 1;
    }
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
    check_version("node", &cur.id, cur.meta, version)?;
    validate::node(&spec)?;
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
                    lifecycle::desire(&mut t, TaskState::Remove);
                    match lifecycle::advance(
                        &mut t,
                        Writer::Managers,
                        TaskState::Orphaned,
                        "node removed",
                    ) {
                        Ok(()) => tx.update(t)?,
                        Err(e) => tracing::error!(task.id = %t.id, error = %e, "not orphaned"),
                    }
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
