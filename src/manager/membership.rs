//! Raft membership policy: a manager joining the Raft group (as a learner, then a
//! voter), and leaving it (demotion, forced removal) with Swarm's quorum rule: the
//! managers that remain must still have a majority reachable, unless forced. The API
//! converts and forwards; what may happen is decided here.

use openraft::ChangeMembers;
use shoal_proto::*;

use super::error::{check_version, find, ControlError};
use super::node::Manager;
use super::raft::COMMIT_TIMEOUT;

/// `node update`: the spec, and for a demotion the Raft group first (refused if the
/// rest could not keep quorum, unless `force`).
pub async fn update_node(
    m: &Manager,
    what: &str,
    version: u64,
    spec: NodeSpec,
    force: bool,
) -> Result<Node, ControlError> {
    let cur = m.store.view(|t| find(&t.nodes, what))?;
    check_version("node", &cur.id, cur.meta, version)?;
    let was = cur.spec.as_ref().map(|s| s.desired_role).unwrap_or(0);
    if was == NodeRole::Manager as i32 && spec.desired_role == NodeRole::Worker as i32 {
        remove_manager(m, &cur, force).await?;
    }
    super::control::update_node(&m.store, &cur.id, 0, spec).await
}

/// `node rm`: a manager leaves the Raft group first (only with `force`).
pub async fn remove_node(m: &Manager, what: &str, force: bool) -> Result<(), ControlError> {
    let n = m.store.view(|t| find(&t.nodes, what))?;
    if force && n.manager_status.is_some() {
        remove_manager(m, &n, true).await?;
    }
    super::control::remove_node(&m.store, &n.id, force).await?;
    Ok(())
}

/// A manager admitted by the CA joins the Raft group: as a learner until it has caught
/// up, then as a voter; then its node object says it is a manager. Only a node with a
/// manager certificate adding itself (`caller`) that was admitted as a manager.
pub async fn add_manager(
    m: &Manager,
    caller: &str,
    r: &RaftJoinRequest,
) -> Result<(), ControlError> {
    if caller != r.node_id {
        return Err(ControlError::Denied(
            "a node can only add itself, with a manager certificate".into(),
        ));
    }
    let known = m.store.view(|t| {
        t.nodes
            .get(&r.node_id)
            .map(|n| n.spec.as_ref().map(|s| s.desired_role) == Some(NodeRole::Manager as i32))
    });
    if known != Some(true) {
        return Err(ControlError::Denied(format!(
            "node {} was not admitted as a manager",
            r.node_id
        )));
    }
    let fail = |e: String| ControlError::Unavailable(format!("adding the manager to Raft: {e}"));
    m.raft
        .add_learner(r.raft_id, openraft::BasicNode::new(&r.addr), true)
        .await
        .map_err(|e| fail(e.to_string()))?;
    m.raft
        .change_membership(
            ChangeMembers::AddVoterIds([r.raft_id].into_iter().collect()),
            false,
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (id, raft_id, addr) = (r.node_id.clone(), r.raft_id, r.addr.clone());
    m.store
        .update(move |tx| {
            let Some(mut n) = tx.get::<Node>(&id) else {
                return Ok(());
            };
            n.role = NodeRole::Manager as i32;
            n.manager_status = Some(ManagerStatus {
                raft_id,
                addr,
                leader: false,
                reachability: Reachability::Reachable as i32,
            });
            tx.update(n)
        })
        .await
        .map_err(|e| fail(e.to_string()))?;
    tracing::info!(node.id = %r.node_id, raft.id = r.raft_id, addr = %r.addr, "a manager joined");
    Ok(())
}

/// Removes `n` (a manager) from the voters, then makes it a worker in the store. Refused
/// for the last manager, and when the managers left would not have a majority reachable
/// (unless `force`). Waits [`COMMIT_TIMEOUT`] for the change, which goes on after that:
/// it completes once a majority answers.
pub async fn remove_manager(m: &Manager, n: &Node, force: bool) -> Result<(), ControlError> {
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
        return Err(ControlError::Refused(format!(
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
        return Err(ControlError::Refused(format!(
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
        .map_err(|e| ControlError::Unavailable(format!("changing the Raft membership: {e}")))?;
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
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        tracing::info!(node.id = %id, raft.id = raft_id, "a manager left the Raft group");
        Ok(())
    });
    match tokio::time::timeout(COMMIT_TIMEOUT, change).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(ControlError::Unavailable(format!(
            "changing the Raft membership: {e}"
        ))),
        Err(_) => Err(ControlError::Unavailable(format!(
            "node {} is leaving the Raft group, but the change was not committed within {} s: \
             a majority of the managers, counted both with and without it, must answer. It \
             completes by itself once they do; if they are gone for good, run `shoal swarm \
             init --force-new-cluster` on a manager that is left",
            n.id,
            COMMIT_TIMEOUT.as_secs()
        ))),
    }
}
