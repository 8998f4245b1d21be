//! The node monitor: a node not heard from in time is marked Down, and its tasks are
//! shut down so that they are replaced elsewhere.

use std::time::{Duration, Instant};

use shoal_proto::*;
use tokio_util::sync::CancellationToken;

use super::Dispatcher;
use crate::manager::tasks::state;

impl Dispatcher {
    /// Leader only: a node not heard from for two and a half heartbeat periods (its
    /// third heartbeat is half a period late) is marked Down and its tasks are shut
    /// down, so that the orchestrators replace them on other nodes. With the default
    /// period of 1 s, a crashed node is Down 1.5 to 2.5 s after its last heartbeat, and
    /// a busy node must be 1.5 s late to be taken for dead.
    /// (A node that comes back opens a new session and is Ready again; the agent then
    /// stops the tasks that were superseded.) After a leader change every node gets the
    /// full grace period from the start of this loop, and again after this manager
    /// itself was stalled ([`silence_from`]).
    pub async fn monitor_nodes(self, shutdown: CancellationToken) {
        let mut start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let waiting = Instant::now();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let period = self.heartbeat_period();
            let resumed = silence_from(start, waiting, Instant::now(), period);
            if resumed != start {
                tracing::warn!(
                    stalled = ?resumed.duration_since(waiting),
                    "this manager was stalled: every node gets its grace period again"
                );
                start = resumed;
            }
            if let Err(e) = crate::manager::ca::finish_rotation(&self.store).await {
                tracing::warn!(error = %e, "could not end the CA rotation; retrying");
            }
            let grace = period * 5 / 2;
            let seen = self
                .last_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let now = Instant::now();
            let down: Vec<String> = self.store.view(|t| {
                t.nodes
                    .values()
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .is_some_and(|s| s.state == NodeState::Ready as i32)
                    })
                    .filter(|n| {
                        let last = seen.get(&n.id).copied().unwrap_or(start).max(start);
                        n.id != self.local_node && now.duration_since(last) > grace
                    })
                    .map(|n| n.id.clone())
                    .collect()
            });
            if down.is_empty() {
                continue;
            }
            tracing::warn!(nodes = ?down, "no heartbeat: marking nodes down");
            // their sessions end: a node that was only slow gets "session invalid" at its
            // next heartbeat, opens a new session and is Ready again
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, x| !down.contains(&x.node_id));
            // the nodes first, then their tasks a commit's worth at a time
            let r = self
                .store
                .update_all(move |tx| {
                    for id in &down {
                        let Some(mut n) = tx.get::<Node>(id) else {
                            continue;
                        };
                        let st = n.status.get_or_insert_with(NodeStatus::default);
                        if st.state != NodeState::Down as i32 {
                            st.state = NodeState::Down as i32;
                            st.message = "heartbeat failure".into();
                            tx.update(n)?;
                        }
                        for t in tx.tasks_of(id, true) {
                            if tx.full() {
                                return Ok(true);
                            }
                            // (a standalone container's attachment follows its
                            // container, which is still there when the node returns:
                            // its address stays its own)
                            if &t.node_id == id
                                && t.attachment_container.is_empty()
                                && !state(&t).is_terminal()
                                && t.desired_state < TaskState::Shutdown as i32
                            {
                                let mut t = t.clone();
                                crate::manager::lifecycle::desire(&mut t, TaskState::Shutdown);
                                tx.update(t)?;
                            }
                        }
                    }
                    Ok(false)
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not mark nodes down; retrying");
            }
        }
    }
}

/// Since when the monitor counts nodes' silence: from `start`, or from `now` when its
/// wait for a 100 ms tick (begun at `waiting`) took more than half a heartbeat period.
/// Then this process or its host was stalled (a loaded or paused machine), the
/// heartbeats that came meanwhile may still be unread, and marking every node Down at
/// once for it would move all their tasks for nothing (seen on emulated hosts).
fn silence_from(start: Instant, waiting: Instant, now: Instant, period: Duration) -> Instant {
    if now.duration_since(waiting) > period / 2 {
        now
    } else {
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_monitor_gives_nodes_their_grace_again() {
        let start = Instant::now();
        let period = Duration::from_secs(1);
        let waiting = start + Duration::from_secs(10);
        // a tick that came on time (or a little late, as under load) changes nothing
        let on_time = waiting + Duration::from_millis(100);
        assert_eq!(silence_from(start, waiting, on_time, period), start);
        let late = waiting + Duration::from_millis(500);
        assert_eq!(silence_from(start, waiting, late, period), start);
        // a wait of more than half a period for a 100 ms tick: counted from now
        let stalled = waiting + Duration::from_millis(501);
        assert_eq!(silence_from(start, waiting, stalled, period), stalled);
        // shorter periods, shorter stalls
        let short = Duration::from_millis(200);
        assert_eq!(silence_from(start, waiting, late, short), late);
    }
}
