//! Replicated services: one task per slot, scaled up from the lowest free slot and down
//! from the highest. (Tasks of an older spec are the update supervisor's to replace.)

use std::collections::BTreeMap;

use shoal_proto::{Service, Task, TaskState};

use super::{live, on_drained_node, set_desired};
use crate::manager::store::{StoreError, Tx};
use crate::manager::tasks::new_task;

pub(super) fn replicated(
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
    Ok(())
}
