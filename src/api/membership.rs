//! Managers leaving the Raft group (demotion, forced removal), with Swarm's quorum
//! rule: the managers that remain must still have a majority reachable, unless forced.

use openraft::ChangeMembers;
use shoal_proto::*;
use tonic::Status;

use crate::manager::node::Manager;
use crate::manager::raft::COMMIT_TIMEOUT;

/// Removes `n` (a manager) from the voters, then makes it a worker in the store. Refused
/// for the last manager, and when the managers left would not have a majority reachable
/// (unless `force`). Waits [`COMMIT_TIMEOUT`] for the change, which goes on after that:
/// it completes once a majority answers.
pub async fn remove_manager(m: &Manager, n: &Node, force: bool) -> Result<(), Status> {
    let Some(ms) = n.manager_status.as_ref() else {
        return Ok(());
    };
    let metrics = m.raft.metrics().borrow().clone();
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    if !voters.contains(&ms.raft_id) {
        return Ok(());
    }
    let left: Vec<u64> = voters
        .iter()
        .copied()
        .filter(|v| *v != ms.raft_id)
        .collect();
    if left.is_empty() {
        return Err(Status::failed_precondition(format!(
            "node {} is the last manager of the swarm: it cannot be demoted or removed",
            n.id
        )));
    }
    // reachable = its node answers heartbeats (the leader counts itself)
    let reachable = m.store.view(|t| {
        t.nodes
            .values()
            .filter(|x| {
                x.manager_status
                    .as_ref()
                    .is_some_and(|s| left.contains(&s.raft_id))
            })
            .filter(|x| {
                Some(x.manager_status.as_ref().map(|s| s.raft_id).unwrap_or(0))
                    == metrics.current_leader
                    || x.status
                        .as_ref()
                        .is_some_and(|s| s.state == NodeState::Ready as i32)
            })
            .count()
    });
    if reachable * 2 <= left.len() && !force {
        return Err(Status::failed_precondition(format!(
            "demoting or removing node {} would leave {} manager(s) with only {} reachable: the swarm would lose quorum (use --force to do it anyway)",
            n.id,
            left.len(),
            reachable
        )));
    }
    // Run to its end even when the caller stops waiting: the change is in the log once
    // proposed, and if it commits later (the managers return) the node must still leave
    // both Raft's voters and the store's managers, not stay half-way.
    let (raft, store, id, raft_id) = (m.raft.clone(), m.store.clone(), n.id.clone(), ms.raft_id);
    let change = tokio::spawn(async move {
        raft.change_membership(
            ChangeMembers::RemoveVoters([raft_id].into_iter().collect()),
            false,
        )
        .await
        .map_err(|e| Status::unavailable(format!("changing the Raft membership: {e}")))?;
        let node = id.clone();
        store
            .update(move |tx| {
                let Some(mut x) = tx.get::<Node>(&node) else {
                    return Ok(());
                };
                x.manager_status = None;
                x.role = NodeRole::Worker as i32;
                // (also when the caller stopped waiting, before it could say so)
                if let Some(spec) = x.spec.as_mut() {
                    spec.desired_role = NodeRole::Worker as i32;
                }
                tx.update(x)
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(node.id = %id, raft.id = raft_id, "a manager left the Raft group");
        Ok(())
    });
    match tokio::time::timeout(COMMIT_TIMEOUT, change).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(Status::internal(format!(
            "changing the Raft membership: {e}"
        ))),
        Err(_) => Err(Status::unavailable(format!(
            "node {} is leaving the Raft group, but the change was not committed within {} s: \
             a majority of the managers, counted both with and without it, must answer. It \
             completes by itself once they do; if they are gone for good, run `shoal swarm \
             init --force-new-cluster` on a manager that is left",
            n.id,
            COMMIT_TIMEOUT.as_secs()
        ))),
    }
}
