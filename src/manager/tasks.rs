//! Helpers every manager loop shares: making tasks, reading services, the run loop that
//! turns store events into reconcile passes.

use std::collections::BTreeSet;
use std::time::Duration;

use shoal_proto::service_spec::Mode;
use shoal_proto::store_object::Object;
use shoal_proto::{Annotations, Service, Task, TaskState, TaskStatus};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::store::{new_id, now_ms, Change, Event, Store};

pub fn service_name(s: &Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|x| x.annotations.as_ref())
        .map(|a| a.name.as_str())
        .unwrap_or("")
}

pub fn mode(s: &Service) -> Option<&Mode> {
    s.spec.as_ref().and_then(|x| x.mode.as_ref())
}

pub fn is_job(s: &Service) -> bool {
    matches!(
        mode(s),
        Some(Mode::ReplicatedJob(_)) | Some(Mode::GlobalJob(_))
    )
}

pub fn state(t: &Task) -> TaskState {
    t.status
        .as_ref()
        .and_then(|s| TaskState::try_from(s.state).ok())
        .unwrap_or(TaskState::New)
}

pub fn desired(t: &Task) -> TaskState {
    TaskState::try_from(t.desired_state).unwrap_or(TaskState::New)
}

pub fn status(state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        timestamp_ms: now_ms(),
        state: state as i32,
        message: message.into(),
        ..Default::default()
    }
}

/// A new task for `slot` of `service` (or for `node_id`, for global services).
pub fn new_task(service: &Service, slot: u64, node_id: &str, desired_state: TaskState) -> Task {
    let id = new_id();
    let base = service_name(service);
    let name = if slot > 0 {
        format!("{base}.{slot}.{id}")
    } else {
        format!("{base}.{node_id}.{id}")
    };
    Task {
        id,
        spec: service.spec.as_ref().and_then(|s| s.task.clone()),
        service_id: service.id.clone(),
        slot,
        node_id: node_id.into(),
        annotations: Some(Annotations {
            name,
            ..Default::default()
        }),
        status: Some(status(TaskState::New, "created")),
        desired_state: desired_state as i32,
        spec_version: service.spec_version,
        job_iteration: service.job_iteration,
        ..Default::default()
    }
}

/// The service IDs an event concerns.
/// Marks a node in a dirty set (see [`services_of`]).
pub const NODE_KEY: &str = "node:";

pub fn services_of(e: &Event, out: &mut BTreeSet<String>) {
    for Change { object, old, .. } in &e.changes {
        for o in std::iter::once(object.as_ref()).chain(old.as_deref()) {
            match o {
                Object::Service(s) => {
                    out.insert(s.id.clone());
                }
                Object::Task(t) => {
                    out.insert(t.service_id.clone());
                }
                // a node changed: the services with tasks there are looked up by the
                // orchestrator (other loops do full passes)
                Object::Node(n) => {
                    out.insert(format!("{NODE_KEY}{}", n.id));
                }
                _ => {}
            }
        }
    }
}

/// Runs a reconcile loop: a full pass first, then passes over what events marked dirty,
/// one per commit (a lagging watcher falls back to a full pass). `pass(None)` is a full
/// pass; `pass(Some(dirty))` reconciles those services.
pub async fn run_loop<F, Fut>(
    name: &'static str,
    store: Store,
    shutdown: CancellationToken,
    debounce: Duration,
    mut pass: F,
) where
    F: FnMut(Option<BTreeSet<String>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut rx = store.watch();
    pass(None).await;
    let mut dirty = BTreeSet::new();
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = rx.recv() => ev,
        };
        match ev {
            Ok(e) => {
                services_of(&e, &mut dirty);
                // take in what else has arrived: one pass for a run of commits
                if !debounce.is_zero() {
                    tokio::time::sleep(debounce).await;
                }
                let mut lagged = e.restored;
                loop {
                    match rx.try_recv() {
                        Ok(e) => {
                            lagged |= e.restored;
                            services_of(&e, &mut dirty)
                        }
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                            lagged = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if lagged {
                    dirty.clear();
                    pass(None).await;
                } else if !dirty.is_empty() {
                    pass(Some(std::mem::take(&mut dirty))).await;
                }
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    component = name,
                    missed = n,
                    "store events lagged; doing a full pass"
                );
                dirty.clear();
                pass(None).await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}
