//! Jobs: a replicated job's tasks run to their completions, at most so many at a time;
//! an update starts a new iteration and retires the tasks of earlier ones.

use std::collections::BTreeSet;

use shoal_proto::{Service, Task, TaskState};

use super::set_desired;
use crate::manager::store::{StoreError, Tx};
use crate::manager::tasks::{desired, new_task, state};

/// A job's update starts a new iteration (as in Swarm): tasks of earlier iterations that
/// are still at work are shut down, and the new iteration runs to completion afresh.
pub(super) fn retire_old_iterations(
    tx: &mut Tx<'_>,
    s: &Service,
    tasks: &[Task],
) -> Result<(), StoreError> {
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

pub(super) fn replicated_job(
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
