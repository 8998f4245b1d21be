//! Service-level reconciliation: the right tasks for every service. Replicated services
//! get one task per slot (1..=replicas), global services one per eligible node, jobs run
//! to their completions. A spec change replaces tasks one slot at a time, stop-first: the
//! old task is shut down, its replacement is made ready alongside and started once the
//! old one has stopped. Task-level repair (restarts) is the restart supervisor's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_proto::service_spec::Mode;
use shoal_proto::{Node, NodeAvailability, NodeState, Service, Task, TaskState};
use tokio_util::sync::CancellationToken;

use super::store::{Store, StoreError, Tx};
use super::tasks::{desired, mode, new_task, run_loop, state, Left, NODE_KEY};
use crate::spec::placement::node_matches_constraints;

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
                let globals: Vec<String> = store.view(|t| t.services.values().filter(|s| matches!(mode(s), Some(Mode::Global(_)) | Some(Mode::GlobalJob(_)))).map(|s| s.id.clone()).collect());
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
        Some(s) => match mode(&s).cloned() {
            Some(Mode::Replicated(r)) => replicated(tx, &s, tasks, r.replicas),
            Some(Mode::Global(_)) => global(tx, &s, tasks, false),
            Some(Mode::GlobalJob(_)) => {
                retire_old_iterations(tx, &s, &tasks)?;
                global(tx, &s, tasks, true)
            }
            Some(Mode::ReplicatedJob(j)) => {
                retire_old_iterations(tx, &s, &tasks)?;
                replicated_job(tx, &s, tasks, j.max_concurrent, j.total_completions)
            }
            None => Ok(()),
        },
    }
}

fn set_desired(tx: &mut Tx<'_>, t: &Task, d: TaskState) -> Result<(), StoreError> {
    if desired(t) as i32 >= d as i32 && d != TaskState::Running {
        return Ok(()); // desired states only move forward
    }
    let mut t = t.clone();
    t.desired_state = d as i32;
    if d as i32 >= TaskState::Shutdown as i32 && (state(&t) as i32) < TaskState::Assigned as i32 {
        // no node ever had it, so none will say it stopped: it stops here (a stop-first
        // update otherwise waited forever for a pending task to end)
        let st = t.status.get_or_insert_with(Default::default);
        st.state = TaskState::Shutdown as i32;
        st.timestamp_ms = super::store::now_ms();
        st.message = "shut down before it was assigned to a node".into();
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

/// A job's update starts a new iteration (as in Swarm): tasks of earlier iterations that
/// are still at work are shut down, and the new iteration runs to completion afresh.
fn retire_old_iterations(tx: &mut Tx<'_>, s: &Service, tasks: &[Task]) -> Result<(), StoreError> {
    for t in tasks {
        if tx.full() {
            break;
        }
        if t.job_iteration != s.job_iteration
            && !state(t).is_terminal()
            && (desired(t) as i32) < TaskState::Shutdown as i32
        {
            set_desired(tx, t, TaskState::Shutdown)?;
        }
    }
    Ok(())
}

fn on_drained_node(tx: &Tx<'_>, t: &Task) -> bool {
    !t.node_id.is_empty()
        && tx.get::<Node>(&t.node_id).is_some_and(|n| {
            n.spec.as_ref().map(|s| s.availability) == Some(NodeAvailability::Drain as i32)
        })
}

/// Tasks that hold a slot: those still meant to run (or to be made ready).
fn live(t: &Task) -> bool {
    desired(t) as i32 <= TaskState::Running as i32
}

fn replicated(
    tx: &mut Tx<'_>,
    s: &Service,
    tasks: Vec<Task>,
    replicas: u64,
) -> Result<(), StoreError> {
    let mut slots: BTreeMap<u64, Vec<Task>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| live(t)) {
        // a drained node keeps no tasks: they are shut down and their slots filled
        // elsewhere
        if on_drained_node(tx, t) && !tx.full() {
            set_desired(tx, t, TaskState::Shutdown)?;
            continue;
        }
        slots.entry(t.slot).or_default().push(t.clone());
    }
    // scale down: the highest slots go (a commit's worth at a time)
    while slots.len() as u64 > replicas && !tx.full() {
        let Some((_, ts)) = slots.pop_last() else {
            break;
        };
        for t in ts {
            set_desired(tx, &t, TaskState::Remove)?;
        }
    }
    // scale up: the lowest free slots (a commit's worth at a time)
    let mut next = 1;
    while (slots.len() as u64) < replicas && !tx.full() {
        while slots.contains_key(&next) {
            next += 1;
        }
        let t = new_task(s, next, "", TaskState::Running);
        tx.create(t.clone())?;
        slots.insert(next, vec![t]);
    }
    rolling_update(tx, s, &tasks, slots)
}

/// Replaces tasks made from an older spec, one slot at a time, stop-first.
fn rolling_update(
    tx: &mut Tx<'_>,
    s: &Service,
    all: &[Task],
    slots: BTreeMap<u64, Vec<Task>>,
) -> Result<(), StoreError> {
    // a replacement made ready while its predecessor stops: start it once that is done
    if let Some(t) = slots
        .values()
        .flatten()
        .find(|t| desired(t) == TaskState::Ready)
    {
        let predecessor_alive = all
            .iter()
            .any(|o| o.slot == t.slot && o.id != t.id && !state(o).is_terminal());
        if !predecessor_alive {
            set_desired(tx, t, TaskState::Running)?;
        }
        return Ok(());
    }
    // one slot at a time: the next only once every up-to-date task runs
    let busy = slots.values().flatten().any(|t| {
        t.spec_version == s.spec_version
            && state(t) != TaskState::Running
            && !state(t).is_terminal()
    });
    if busy {
        return Ok(());
    }
    if let Some((slot, ts)) = slots
        .iter()
        .find(|(_, ts)| ts.iter().any(|t| t.spec_version != s.spec_version))
    {
        for t in ts {
            set_desired(tx, t, TaskState::Shutdown)?;
        }
        let any_alive = ts.iter().any(|t| !state(t).is_terminal());
        tx.create(new_task(
            s,
            *slot,
            "",
            if any_alive {
                TaskState::Ready
            } else {
                TaskState::Running
            },
        ))?;
    }
    Ok(())
}

/// Nodes a global service runs on: ready, active, and matching its constraints.
pub fn eligible_nodes(tx: &Tx<'_>, s: &Service) -> Vec<Node> {
    let constraints: Vec<String> = s
        .spec
        .as_ref()
        .and_then(|x| x.task.as_ref())
        .and_then(|t| t.placement.as_ref())
        .map(|p| p.constraints.clone())
        .unwrap_or_default();
    tx.list::<Node>()
        .into_iter()
        .filter(|n| {
            n.status
                .as_ref()
                .is_some_and(|st| st.state == NodeState::Ready as i32)
        })
        .filter(|n| {
            n.spec.as_ref().map(|sp| sp.availability).unwrap_or(0)
                == NodeAvailability::Active as i32
        })
        .filter(|n| node_matches_constraints(n, &constraints).unwrap_or(false))
        .collect()
}

fn global(tx: &mut Tx<'_>, s: &Service, tasks: Vec<Task>, job: bool) -> Result<(), StoreError> {
    let nodes: BTreeSet<String> = eligible_nodes(tx, s).into_iter().map(|n| n.id).collect();
    let mut have: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for t in tasks.iter() {
        let counts = if job {
            t.job_iteration == s.job_iteration && desired(t) != TaskState::Remove
        } else {
            live(t)
        };
        if counts {
            have.entry(t.node_id.clone()).or_default().push(t.clone());
        }
    }
    for (node, ts) in &have {
        if !nodes.contains(node) && !tx.full() {
            for t in ts {
                set_desired(tx, t, TaskState::Shutdown)?;
            }
        }
    }
    let want = if job {
        TaskState::Complete
    } else {
        TaskState::Running
    };
    for n in &nodes {
        if !have.contains_key(n) && !tx.full() {
            tx.create(new_task(s, 0, n, want))?;
        }
    }
    if !job {
        // replace tasks from an older spec, one node at a time
        if let Some((node, ts)) = have.iter().find(|(n, ts)| {
            nodes.contains(*n) && ts.iter().any(|t| t.spec_version != s.spec_version)
        }) {
            let waiting = tasks.iter().any(|t| {
                t.spec_version == s.spec_version
                    && !state(t).is_terminal()
                    && state(t) != TaskState::Running
                    && live(t)
            });
            if !waiting {
                for t in ts {
                    set_desired(tx, t, TaskState::Shutdown)?;
                }
                tx.create(new_task(s, 0, node, TaskState::Running))?;
            }
        }
    }
    Ok(())
}

fn replicated_job(
    tx: &mut Tx<'_>,
    s: &Service,
    tasks: Vec<Task>,
    max_concurrent: u64,
    total: u64,
) -> Result<(), StoreError> {
    let total = total.max(1);
    let max_concurrent = if max_concurrent == 0 {
        total
    } else {
        max_concurrent
    };
    // tasks shut down (their node went down, say) no longer count
    let current: Vec<&Task> = tasks
        .iter()
        .filter(|t| {
            t.job_iteration == s.job_iteration && (desired(t) as i32) < TaskState::Shutdown as i32
        })
        .collect();
    let completed = current
        .iter()
        .filter(|t| state(t) == TaskState::Complete)
        .count() as u64;
    let running = current.iter().filter(|t| !state(t).is_terminal()).count() as u64;
    // failed tasks are the restart supervisor's to replace; here only what is missing
    let pending_restart = current
        .iter()
        .filter(|t| {
            matches!(state(t), TaskState::Failed | TaskState::Rejected)
                && desired(t) == TaskState::Complete
        })
        .count() as u64;
    let want = total
        .saturating_sub(completed)
        .min(max_concurrent)
        .saturating_sub(running + pending_restart);
    let used: BTreeSet<u64> = current.iter().map(|t| t.slot).collect();
    let mut slot = 1;
    for _ in 0..want {
        if tx.full() {
            break;
        }
        while used.contains(&slot) {
            slot += 1;
        }
        tx.create(new_task(s, slot, "", TaskState::Complete))?;
        slot += 1;
    }
    Ok(())
}
