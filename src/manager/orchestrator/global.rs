//! Global services (and global jobs): one task per eligible node, the tasks of nodes that
//! no longer qualify shut down. (Tasks of an older spec are the update supervisor's to
//! replace.)

use std::collections::{BTreeMap, BTreeSet};

use shoal_proto::{Node, NodeAvailability, NodeState, Service, Task, TaskState};

use super::{live, set_desired};
use crate::manager::store::{StoreError, Tx};
use crate::manager::tasks::{desired, new_task};
use crate::spec::placement::node_matches_constraints;

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

pub(super) fn global(
    tx: &mut Tx<'_>,
    s: &Service,
    tasks: Vec<Task>,
    job: bool,
) -> Result<(), StoreError> {
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
    Ok(())
}
