//! Helpers every manager loop shares: making tasks, reading services, the run loop that
//! turns store events into reconcile passes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::store_object::Object;
use shoal_proto::{Annotations, Service, Task, TaskState};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::store::{new_id, Change, Event, Store};

pub use crate::spec::docker::service_name;

pub fn is_job(s: &Service) -> bool {
    crate::spec::service::is_job(s.mode())
}

pub use super::lifecycle::state;

pub fn desired(t: &Task) -> TaskState {
    TaskState::try_from(t.desired_state).unwrap_or(TaskState::New)
}

pub use super::lifecycle::status;

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

/// What a pass of a loop left for the next one: its work did not fit in one commit
/// (see [`super::store::Tx::full`]), so the loop goes on at once instead of waiting for
/// the next event.
#[derive(Debug, Default, PartialEq)]
pub enum Left {
    /// Done.
    #[default]
    Nothing,
    /// These services (or other keys of the loop's) still need a pass.
    These(BTreeSet<String>),
    /// Another full pass.
    All,
}

/// Runs a reconcile loop: a full pass first, then passes over what events marked dirty,
/// one per commit (a lagging watcher falls back to a full pass). `pass(None)` is a full
/// pass; `pass(Some(dirty))` reconciles those services. What a pass leaves ([`Left`]) is
/// done in the next pass, at once. `wake`, when notified, asks for a full pass (a loop's
/// own timer: a delay that has passed).
pub async fn run_loop<F, Fut>(
    name: &'static str,
    store: Store,
    shutdown: CancellationToken,
    debounce: Duration,
    wake: Option<std::sync::Arc<tokio::sync::Notify>>,
    mut pass: F,
) where
    F: FnMut(Option<BTreeSet<String>>) -> Fut,
    Fut: std::future::Future<Output = Left>,
{
    let mut rx = store.watch();
    let mut left = pass(None).await;
    let mut dirty = BTreeSet::new();
    loop {
        let mut full = false;
        match std::mem::take(&mut left) {
            Left::Nothing => {
                let woken = async {
                    match &wake {
                        Some(w) => w.notified().await,
                        None => std::future::pending().await,
                    }
                };
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = woken => None,
                    ev = rx.recv() => Some(ev),
                };
                match ev {
                    None => full = true, // woken
                    Some(Ok(e)) => {
                        services_of(&e, &mut dirty);
                        full |= e.restored;
                        // take in what else has arrived: one pass for a run of commits
                        if !debounce.is_zero() {
                            tokio::time::sleep(debounce).await;
                        }
                    }
                    Some(Err(RecvError::Lagged(n))) => {
                        tracing::warn!(
                            component = name,
                            missed = n,
                            "store events lagged; doing a full pass"
                        );
                        full = true;
                    }
                    Some(Err(RecvError::Closed)) => return,
                }
            }
            Left::These(ids) => dirty.extend(ids),
            Left::All => full = true,
        }
        if shutdown.is_cancelled() {
            return;
        }
        loop {
            match rx.try_recv() {
                Ok(e) => {
                    full |= e.restored;
                    services_of(&e, &mut dirty)
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                    full = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if full {
            dirty.clear();
            left = pass(None).await;
        } else if !dirty.is_empty() {
            left = pass(Some(std::mem::take(&mut dirty))).await;
        }
    }
}

/// A loop's own wake-up (see [`run_loop`]'s `wake`): one timer, for the soonest thing
/// due (the restart supervisor's delays, the update supervisor's delays and monitors;
/// passes come on every store event, so one timer per pass would pile up).
#[derive(Clone, Default)]
pub struct Timer {
    pub wake: Arc<tokio::sync::Notify>,
    at: Arc<Mutex<Option<tokio::time::Instant>>>,
}

impl Timer {
    /// Wakes the loop in `wait` (or sooner, if already set for sooner).
    pub fn set(&self, wait: Duration, sd: &CancellationToken) {
        let now = tokio::time::Instant::now();
        let at = now + wait;
        let mut cur = self.at.lock().unwrap_or_else(|p| p.into_inner());
        if cur.is_some_and(|c| c > now && c <= at) {
            return;
        }
        *cur = Some(at);
        let (me, sd) = (self.clone(), sd.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = sd.cancelled() => {}
                _ = tokio::time::sleep_until(at) => me.wake.notify_one(),
            }
        });
    }
}
