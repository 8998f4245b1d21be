//! Replicated services: one task per slot, scaled up from the lowest free slot and down
//! from the highest, and tasks of an older spec replaced one slot at a time, stop-first.

use std::collections::BTreeMap;

use shoal_proto::{Service, Task, TaskState};

use super::{live, on_drained_node, set_desired};
use crate::manager::store::{now_ms, StoreError, Tx};
use crate::manager::tasks::{desired, new_task, state};

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
    rolling_update(tx, s, &tasks, slots)
}

/// Replaces tasks made from an older spec, one slot at a time, stop-first.
fn rolling_update(
    tx: &mut Tx<'_>,
    s: &Service,
    all: &[Task],
    slots: BTreeMap<u64, Vec<Task>>,
) -> Result<(), StoreError> {
    // a replacement made ready while its predecessor stops: start it once that is done
    // (one waiting out its restart delay is the restart supervisor's to start)
    let now = now_ms();
    if let Some(t) = slots
        .values()
        .flatten()
        .find(|t| desired(t) == TaskState::Ready && t.start_after_ms <= now)
    {
        let predecessor_alive = all
            .iter()
            .any(|o| o.slot == t.slot && o.id != t.id && !state(o).is_terminal());
        if !predecessor_alive {
            set_desired(tx, t, TaskState::Running)?;
        }
        return Ok(());
    }
    // one slot at a time: the next only once every up-to-date task runs
    let busy = slots.values().flatten().any(|t| {
        t.spec_version == s.spec_version
            && state(t) != TaskState::Running
            && !state(t).is_terminal()
    });
    if busy {
        return Ok(());
    }
    if let Some((slot, ts)) = slots
        .iter()
        .find(|(_, ts)| ts.iter().any(|t| t.spec_version != s.spec_version))
    {
        for t in ts {
            set_desired(tx, t, TaskState::Shutdown)?;
        }
        let any_alive = ts.iter().any(|t| !state(t).is_terminal());
        tx.create(new_task(
            s,
            *slot,
            "",
            if any_alive {
                TaskState::Ready
            } else {
                TaskState::Running
            },
        ))?;
    }
    Ok(())
}
