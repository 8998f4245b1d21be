//! The orchestrators: service-level reconciliation, the right tasks for every service,
//! as one loop over services. Replicated services get one task per slot (1..=replicas),
//! global services one per eligible node, jobs run to their completions. A spec change
//! is rolled out by the update supervisor (`update`), by the service's update config.
//!
//! Layout: this file has the loop and what every mode shares; `replicated`, `global` and
//! `job` reconcile one mode each; `update` rolls out spec changes and rollbacks (the
//! update supervisor); `restart` is the task-level repair (the restart supervisor), and
//! `reaper` trims dead tasks (the task reaper).

mod global;
mod job;
pub mod reaper;
mod replicated;
pub mod restart;
pub mod update;

use std::collections::BTreeSet;
use std::time::Duration;

use shoal_proto::service_spec::Mode;
use shoal_proto::{Node, NodeAvailability, Service, Task, TaskState};
use tokio_util::sync::CancellationToken;

use super::lifecycle::{self, Writer};
use super::store::{Store, StoreError, Tx};
use super::tasks::{desired, run_loop, state, Left, NODE_KEY};

/// The replicated, global and job orchestrators, as one loop over services.
pub struct Orchestrator {
    store: Store,
}

impl Orchestrator {
    pub fn new(store: Store) -> Orchestrator {
        Orchestrator { store }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let store = self.store.clone();
        run_loop("orchestrator", store.clone(), shutdown, Duration::ZERO, None, |dirty| {
            let store = store.clone();
            async move {
                let ids: Vec<String> = match dirty {
                    Some(d) => store.view(|t| {
                        let mut ids = BTreeSet::new();
                        for id in d {
                            match id.strip_prefix(NODE_KEY) {
                                // a node changed: every service with a task there
                                Some(node) => ids.extend(
                                    t.tasks_on_node(node).map(|x| x.service_id.clone()),
                                ),
                                None => {
                                    ids.insert(id);
                                }
                            }
                        }
                        ids.into_iter().collect()
                    }),
                    None => store.view(|t| t.services.keys().cloned().chain(t.tasks.values().map(|x| x.service_id.clone())).collect::<BTreeSet<_>>().into_iter().collect()),
                };
                // node changes matter to global services: reconcile all of those too
                let globals: Vec<String> = store.view(|t| t.services.values().filter(|s| matches!(s.mode(), Some(Mode::Global(_)) | Some(Mode::GlobalJob(_)))).map(|s| s.id.clone()).collect());
                let ids: BTreeSet<String> = ids.into_iter().chain(globals).collect();
                // as many as fit in one commit (the rest in the next pass, at once); if
                // that is refused, service by service, so that one service's trouble
                // holds up no other
                let together = store.update(|tx| {
                    let mut left = BTreeSet::new();
                    for id in &ids {
                        if tx.full() {
                            left.insert(id.clone());
                            continue;
                        }
                        reconcile_in(tx, id)?;
                        if tx.full() {
                            left.insert(id.clone()); // it may have stopped half-way
                        }
                    }
                    Ok(left)
                }).await;
                match together {
                    Ok(left) if left.is_empty() => Left::Nothing,
                    Ok(left) => Left::These(left),
                    Err(_) => {
                        for id in ids {
                            if let Err(e) = reconcile(&store, &id).await {
                                tracing::warn!(service.id = %id, error = %e, "reconcile failed; will retry on the next change");
                            }
                        }
                        Left::Nothing
                    }
                }
            }
        })
        .await;
    }
}

/// Node events do not name services; the dispatcher and scheduler change nodes, so the
/// orchestrator also reconciles global services when asked explicitly.
pub async fn reconcile(store: &Store, service_id: &str) -> Result<(), StoreError> {
    store
        .update_all(|tx| {
            reconcile_in(tx, service_id)?;
            Ok(tx.full())
        })
        .await
}

/// [`reconcile`] inside a transaction: the control API creates a service's tasks in the
/// commit that creates the service, and marks them for removal in the one that removes
/// it (one commit instead of two, and no window between them).
pub fn reconcile_in(tx: &mut Tx<'_>, service_id: &str) -> Result<(), StoreError> {
    if service_id.is_empty() {
        return Ok(()); // network attachments of standalone containers: no service
    }
    let service = tx.get::<Service>(service_id);
    let tasks: Vec<Task> = tx.tasks_of(service_id, false);
    if let Some(s) = &service {
        if let Err(why) = s
            .spec
            .as_ref()
            .map_or(Ok(()), crate::spec::limits::check_service)
        {
            // committed before the limits existed (or by another version): no new task
            // for it, and the managers stay up for it to be fixed (`service scale`,
            // `service update`, `service rm`)
            tracing::warn!(service.id = %s.id, error = %why, "the service asks more than a service may: no tasks are made for it until it is changed");
            return Ok(());
        }
    }
    match service {
        None => remove_all(tx, tasks),
        Some(s) => match s.mode().cloned() {
            Some(Mode::Replicated(r)) => replicated::replicated(tx, &s, tasks, r.replicas),
            Some(Mode::Global(_)) => global::global(tx, &s, tasks, false),
            Some(Mode::GlobalJob(_)) => {
                job::retire_old_iterations(tx, &s, &tasks)?;
                global::global(tx, &s, tasks, true)
            }
            Some(Mode::ReplicatedJob(j)) => {
                job::retire_old_iterations(tx, &s, &tasks)?;
                job::replicated_job(tx, &s, tasks, j.max_concurrent, j.total_completions)
            }
            None => Ok(()),
        },
    }
}

/// Moves a task's desired state forward (a move back is no change).
pub(super) fn set_desired(tx: &mut Tx<'_>, t: &Task, d: TaskState) -> Result<(), StoreError> {
    let mut t = t.clone();
    if !lifecycle::desire(&mut t, d) {
        return Ok(());
    }
    if d as i32 >= TaskState::Shutdown as i32 && (state(&t) as i32) < TaskState::Assigned as i32 {
        // no node ever had it, so none will say it stopped: it stops here (a stop-first
        // update otherwise waited forever for a pending task to end), keeping why it
        // was pending
        let err = t.status.as_ref().map(|s| s.err.clone()).unwrap_or_default();
        let msg = "shut down before it was assigned to a node";
        if lifecycle::advance(&mut t, Writer::Orchestrator, TaskState::Shutdown, msg).is_ok() {
            if let Some(st) = t.status.as_mut() {
                st.err = err;
            }
        }
    }
    tx.update(t)
}

/// The service is gone: every task is to be removed.
fn remove_all(tx: &mut Tx<'_>, tasks: Vec<Task>) -> Result<(), StoreError> {
    for t in tasks {
        if tx.full() {
            break; // the rest in the next commit
        }
        if desired(&t) != TaskState::Remove {
            set_desired(tx, &t, TaskState::Remove)?;
        }
    }
    Ok(())
}

pub(super) fn on_drained_node(tx: &Tx<'_>, t: &Task) -> bool {
    !t.node_id.is_empty()
        && tx.get::<Node>(&t.node_id).is_some_and(|n| {
            n.spec.as_ref().map(|s| s.availability) == Some(NodeAvailability::Drain as i32)
        })
}

/// Tasks that hold a slot: those still meant to run (or to be made ready).
pub(super) fn live(t: &Task) -> bool {
    desired(t) as i32 <= TaskState::Running as i32
}
