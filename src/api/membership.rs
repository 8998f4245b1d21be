//! Managers leaving the Raft group (demotion, forced removal), with Swarm's quorum
//! rule: the managers that remain must still have a majority reachable, unless forced.

use openraft::ChangeMembers;
use shoal_proto::*;
use tonic::Status;

use crate::manager::node::Manager;

/// Removes `n` (a manager) from the voters. Refused for the last manager, and when the
/// managers left would not have a majority reachable (unless `force`).
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
    m.raft
        .change_membership(
            ChangeMembers::RemoveVoters([ms.raft_id].into_iter().collect()),
            false,
        )
        .await
        .map_err(|e| Status::unavailable(format!("changing the Raft membership: {e}")))?;
    let id = n.id.clone();
    m.store
        .update(move |tx| {
            let Some(mut x) = tx.get::<Node>(&id) else {
                return Ok(());
            };
            x.manager_status = None;
            x.role = NodeRole::Worker as i32;
            tx.update(x)
        })
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(())
}
