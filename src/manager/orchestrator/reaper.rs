//! The task reaper: trims the history of dead tasks (5 per slot by default, the
//! cluster's `task_history_retention_limit`), and removes tasks meant to be removed
//! (their service is gone, or scaled down) once they have stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_proto::{Cluster, Task, TaskState};
use tokio_util::sync::CancellationToken;

use crate::manager::store::{Store, StoreError};
use crate::manager::tasks::{desired, run_loop, state, Left};

/// Dead tasks kept per slot when the cluster says nothing.
pub const DEFAULT_HISTORY: usize = 5;

pub struct TaskReaper {
    store: Store,
}

impl TaskReaper {
    pub fn new(store: Store) -> TaskReaper {
        TaskReaper { store }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let store = self.store.clone();
        run_loop(
            "reaper",
            store.clone(),
            shutdown,
            Duration::ZERO,
            None,
            |_| {
                let store = store.clone();
                async move {
                    match reap(&store).await {
                        Ok((_, true)) => Left::All,
                        Ok(_) => Left::Nothing,
                        Err(e) => {
                            tracing::warn!(error = %e, "reaping tasks failed");
                            Left::Nothing
                        }
                    }
                }
            },
        )
        .await;
    }
}

/// Deletes dead tasks beyond the history limit of each slot, and tasks meant to be
/// removed once they have stopped: how many, and whether more are left for the next
/// commit.
pub async fn reap(store: &Store) -> Result<(usize, bool), StoreError> {
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
            let mut removed = 0;
            for id in &gone {
                if tx.full() {
                    return Ok((removed, true));
                }
                tx.remove::<Task>(id)?;
                removed += 1;
            }
            Ok((removed, false))
        })
        .await
}
