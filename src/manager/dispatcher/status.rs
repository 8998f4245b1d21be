//! Agents' status reports, written to the store in batches, each report taken only from
//! the node that owns its task and only as the task's life cycle allows.

use std::time::Duration;

use shoal_proto::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Pending;
use crate::manager::lifecycle::Writer;
use crate::manager::store::Store;
use crate::manager::tasks::state;

/// How long a batch gathers reports after its first: briefly while few come (each step
/// of a rolling update waits on these reports, twice per task), longer in a flood (ten
/// thousand tasks starting at once), where fewer, bigger transactions keep up better.
const QUIET_WINDOW: Duration = Duration::from_millis(10);
const BUSY_WINDOW: Duration = Duration::from_millis(100);
/// A batch of this many reports or more means a flood: the next one gathers longer.
const BUSY_REPORTS: usize = 256;

/// Writes status reports in batches: one store transaction per batch.
pub(super) async fn batch_writer(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    shutdown: CancellationToken,
) {
    let mut window = QUIET_WINDOW;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let mut batch = vec![first];
        let deadline = tokio::time::sleep(window);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                p = rx.recv() => match p { Some(p) => batch.push(p), None => break },
            }
        }
        let all: Vec<(String, TaskStatusUpdate)> = batch
            .iter()
            .flat_map(|(n, us, _)| us.iter().map(move |u| (n.clone(), u.clone())))
            .collect();
        let started = std::time::Instant::now();
        let n = all.len();
        window = if n >= BUSY_REPORTS {
            BUSY_WINDOW
        } else {
            QUIET_WINDOW
        };
        // a commit's worth at a time (ten thousand tasks starting at once report in the
        // same 100 ms)
        let mut next = 0;
        let now = crate::manager::store::now_ms();
        let res = store
            .update_all(|tx| {
                while let Some((node, u)) = all.get(next) {
                    if tx.full() {
                        return Ok(true);
                    }
                    next += 1;
                    let Some(mut t) = tx.get::<Task>(&u.task_id) else {
                        continue;
                    };
                    if &t.node_id != node {
                        continue; // only the owning node may report a task
                    }
                    let Some(new) = u.status.clone() else {
                        continue;
                    };
                    // only the owner's moves the life cycle allows (forward only)
                    let allowed = TaskState::try_from(new.state).is_ok_and(|to| {
                        crate::manager::lifecycle::check(Writer::Agent, state(&t), to).is_ok()
                    });
                    if !allowed {
                        continue;
                    }
                    if t.status.as_ref() == Some(&new) {
                        continue;
                    }
                    t.status = Some(new);
                    crate::manager::lifecycle::stamp(&mut t, now);
                    tx.update(t)?;
                }
                Ok(false)
            })
            .await;
        tracing::debug!(
            updates = n,
            took_ms = started.elapsed().as_millis() as u64,
            "status batch written"
        );
        for (_, _, done) in batch {
            let _ = done.send(res.clone());
        }
    }
}
