//! Task-level repair: the restart supervisor replaces tasks that ended while they were
//! meant to run, by their restart policy (condition any / on-failure / none, delay, max
//! attempts within a window; Swarm's defaults: any, 5 s, unlimited). The replacement is
//! created at once, made ready, and started when the delay has passed. The task reaper
//! trims the history of dead tasks (5 per slot by default) and removes tasks whose
//! service is gone once they have stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_proto::restart_policy::Condition;
use shoal_proto::{Cluster, Service, Task, TaskState};
use tokio_util::sync::CancellationToken;

use super::store::{now_ms, Store, StoreError};
use super::tasks::{desired, is_job, new_task, run_loop, state};

pub const DEFAULT_DELAY: Duration = Duration::from_secs(5);
pub const DEFAULT_HISTORY: usize = 5;

fn policy(t: &Task) -> (Condition, Duration, u64, Duration) {
    let p = t.spec.as_ref().and_then(|s| s.restart.as_ref());
    let d = |x: Option<&prost_types::Duration>| {
        x.map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
    };
    (
        p.and_then(|p| Condition::try_from(p.condition).ok())
            .unwrap_or(Condition::Any),
        p.and_then(|p| d(p.delay.as_ref())).unwrap_or(DEFAULT_DELAY),
        p.map(|p| p.max_attempts).unwrap_or(0),
        p.and_then(|p| d(p.window.as_ref())).unwrap_or_default(),
    )
}

/// Whether a dead task should be replaced, by its policy and its slot's history.
fn should_restart(t: &Task, history: &[&Task], job: bool) -> bool {
    let (cond, _, max, window) = policy(t);
    let failed = matches!(state(t), TaskState::Failed | TaskState::Rejected);
    let wanted = match cond {
        Condition::None => false,
        Condition::OnFailure => failed,
        Condition::Any => !job || failed,
    };
    if !wanted {
        return false;
    }
    if max == 0 {
        return true;
    }
    let since = if window.is_zero() {
        0
    } else {
        now_ms() - window.as_millis() as i64
    };
    let restarts = history
        .iter()
        .filter(|h| {
            h.id != t.id
                && h.status.as_ref().map(|s| s.timestamp_ms).unwrap_or(0) >= since
                && state(h).is_terminal()
        })
        .count() as u64;
    restarts < max
}

pub struct RestartSupervisor {
    store: Store,
}

impl RestartSupervisor {
    pub fn new(store: Store) -> RestartSupervisor {
        RestartSupervisor { store }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let store = self.store.clone();
        let sd = shutdown.clone();
        run_loop("restart", store.clone(), shutdown, Duration::ZERO, |_| {
            let (store, sd) = (store.clone(), sd.clone());
            async move {
                match restart_dead(&store).await {
                    Ok(delayed) => {
                        for (id, delay) in delayed {
                            let (store, sd) = (store.clone(), sd.clone());
                            tokio::spawn(async move {
                                tokio::select! {
                                    _ = sd.cancelled() => {}
                                    _ = tokio::time::sleep(delay) => { let _ = start_ready(&store, &id).await; }
                                }
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "restarting tasks failed"),
                }
                if let Err(e) = reap(&store).await {
                    tracing::warn!(error = %e, "reaping tasks failed");
                }
            }
        })
        .await;
    }
}

/// Replaces dead tasks; returns the replacements to start after their delay.
pub async fn restart_dead(store: &Store) -> Result<Vec<(String, Duration)>, StoreError> {
    store
        .update(|tx| {
            let services: BTreeMap<String, Service> = tx
                .list::<Service>()
                .into_iter()
                .map(|s| (s.id.clone(), s))
                .collect();
            let dead = tx.filter(|t: &Task| {
                state(t).is_terminal()
                    && matches!(desired(t), TaskState::Running | TaskState::Complete)
            });
            let mut later = Vec::new();
            for t in dead.iter() {
                let Some(s) = services.get(&t.service_id) else {
                    continue;
                };
                let job = is_job(s);
                if job && state(t) == TaskState::Complete {
                    continue; // a job's task that finished is done
                }
                // it no longer counts as the slot's task
                let mut old = t.clone();
                old.desired_state = TaskState::Shutdown as i32;
                // the slot's history (global services: the node's)
                let mut slot = tx.tasks_of(&t.service_id, false);
                slot.retain(|h| h.slot == t.slot && (t.slot > 0 || h.node_id == t.node_id));
                let history: Vec<&Task> = slot.iter().collect();
                if !should_restart(t, &history, job) {
                    continue; // by policy it stays as it ended
                }
                tx.update(old)?;
                if t.spec_version != s.spec_version && !job {
                    continue; // the orchestrator makes the up-to-date replacement
                }
                let (_, delay, _, _) = policy(t);
                let want = if job {
                    TaskState::Complete
                } else {
                    TaskState::Running
                };
                let mut n = new_task(
                    s,
                    t.slot,
                    &t.node_id,
                    if delay.is_zero() {
                        want
                    } else {
                        TaskState::Ready
                    },
                );
                if t.slot > 0 {
                    n.node_id.clear(); // replicated: the scheduler may pick another node
                }
                if !delay.is_zero() {
                    later.push((n.id.clone(), delay));
                }
                tx.create(n)?;
            }
            Ok(later)
        })
        .await
}

/// Starts a replacement once its restart delay has passed.
pub async fn start_ready(store: &Store, id: &str) -> Result<(), StoreError> {
    store
        .update(|tx| {
            let Some(mut t) = tx.get::<Task>(id) else {
                return Ok(());
            };
            if desired(&t) != TaskState::Ready {
                return Ok(());
            }
            let job = tx.get::<Service>(&t.service_id).is_some_and(|s| is_job(&s));
            t.desired_state = if job {
                TaskState::Complete
            } else {
                TaskState::Running
            } as i32;
            tx.update(t)
        })
        .await
}

/// Deletes dead tasks beyond the history limit of each slot, and tasks meant to be
/// removed once they have stopped.
pub async fn reap(store: &Store) -> Result<usize, StoreError> {
    store
        .update(|tx| {
            let limit = tx
                .list::<Cluster>()
                .first()
                .and_then(|c| c.spec.as_ref())
                .and_then(|s| s.orchestration.as_ref())
                .map(|o| o.task_history_retention_limit)
                .filter(|n| *n > 0)
                .map(|n| n as usize)
                .unwrap_or(DEFAULT_HISTORY);
            // only tasks that are done can go
            let tasks = tx.filter(|t: &Task| {
                state(t).is_terminal() || (state(t) as i32) < TaskState::Assigned as i32
            });
            let mut gone = BTreeSet::new();
            for t in &tasks {
                let stopped =
                    state(t).is_terminal() || (state(t) as i32) < TaskState::Assigned as i32;
                if desired(t) == TaskState::Remove && stopped {
                    gone.insert(t.id.clone());
                }
            }
            let mut slots: BTreeMap<(String, u64, String), Vec<&Task>> = BTreeMap::new();
            for t in tasks.iter().filter(|t| {
                state(t).is_terminal()
                    && !gone.contains(&t.id)
                    && (desired(t) as i32) >= TaskState::Shutdown as i32
            }) {
                let node = if t.slot == 0 {
                    t.node_id.clone()
                } else {
                    String::new()
                };
                slots
                    .entry((t.service_id.clone(), t.slot, node))
                    .or_default()
                    .push(t);
            }
            for (_, mut dead) in slots {
                dead.sort_by_key(|t| t.status.as_ref().map(|s| s.timestamp_ms).unwrap_or(0));
                let extra = dead.len().saturating_sub(limit);
                for t in dead.into_iter().take(extra) {
                    gone.insert(t.id.clone());
                }
            }
            for id in &gone {
                tx.remove::<Task>(id)?;
            }
            Ok(gone.len())
        })
        .await
}
