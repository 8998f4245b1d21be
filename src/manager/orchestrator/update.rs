//! The update supervisor: replaces the tasks of a service (replicated or global) that
//! were made from an older spec, by its update config (its rollback config in a
//! rollback), with Swarm's semantics (swarmkit's `orchestrator/update/updater.go`):
//!
//! - `parallelism` slots (nodes, for a global service) at a time, 0 for all at once;
//!   a slot holds its place until its new task has run for `delay`;
//! - stop-first: the old task stops, then the new one starts; start-first: the new one
//!   starts, and the old one stops once the new one is RUNNING (healthy, when it has a
//!   health check: the agent says RUNNING only then);
//! - a task the update made counts as a failure when it ends (fails, completes, is
//!   rejected or orphaned) before it runs or within `monitor` of running, or when it
//!   has not run [`TASK_DEADLINE`] after it was made (Swarm waits for ever); when the
//!   failures exceed `max_failure_ratio` of the slots, `failure_action` pauses the
//!   update, goes on, or rolls it back (a rollback that fails pauses);
//! - after the last slot, one more `monitor` before the update is completed.
//!
//! Everything it goes by is in the store: the update's state and counts in the
//! service's `UpdateStatus`, the tasks it made marked with its start, when each ran and
//! ended on the task. A new leader therefore goes on where the old one stopped, with
//! the same counts and the final monitor (Swarm loses both).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_proto::service_spec::Mode;
use shoal_proto::update_config::{FailureAction, Order};
use shoal_proto::update_status::State;
use shoal_proto::{Cluster, Node, NodeState, Service, Task, TaskState, UpdateStatus};
use tokio_util::sync::CancellationToken;

use super::{live, set_desired};
use crate::manager::revisions;
use crate::manager::store::{now_ms, Store, StoreError, Tables, Tx};
use crate::manager::tasks::{desired, is_job, new_task, run_loop, state, Left, Timer, NODE_KEY};
use crate::spec::update::{update_config, Update, TASK_DEADLINE};

pub struct UpdateSupervisor {
    store: Store,
}

impl UpdateSupervisor {
    pub fn new(store: Store) -> UpdateSupervisor {
        UpdateSupervisor { store }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let store = self.store.clone();
        let timer = Timer::default();
        run_loop(
            "update",
            store.clone(),
            shutdown.clone(),
            Duration::ZERO,
            Some(timer.wake.clone()),
            |dirty| pass(store.clone(), shutdown.clone(), timer.clone(), dirty),
        )
        .await;
    }
}

/// One pass: the services events marked (every one on a full pass), in one commit as
/// far as it holds them. Sets the timer for the soonest delay or monitor that ends.
async fn pass(
    store: Store,
    sd: CancellationToken,
    timer: Timer,
    dirty: Option<BTreeSet<String>>,
) -> Left {
    let ids: Vec<String> = match dirty {
        // a node changed (went down: a stop-first replacement waiting for its old task
        // there may start): the services with tasks on it
        Some(d) => store.view(|t| {
            let mut ids = BTreeSet::new();
            for k in d.into_iter().filter(|k| !k.is_empty()) {
                match k.strip_prefix(NODE_KEY) {
                    Some(node) => ids.extend(t.tasks_on_node(node).map(|x| x.service_id.clone())),
                    None => {
                        ids.insert(k);
                    }
                }
            }
            ids.into_iter().filter(|k| !k.is_empty()).collect()
        }),
        None => store.view(|t| t.services.keys().cloned().collect()),
    };
    // a read first: most passes (every status batch of every service dirties it) find
    // nothing to do, and a write transaction copies each service's tasks
    let ids: Vec<String> = store.view(|t| ids.into_iter().filter(|id| has_work(t, id)).collect());
    if ids.is_empty() {
        return Left::Nothing;
    }
    let now = now_ms();
    let done = store
        .update(|tx| {
            let mut left = BTreeSet::new();
            let mut wake: Option<i64> = None;
            for id in &ids {
                if tx.full() {
                    left.insert(id.clone());
                    continue;
                }
                if let Some(at) = update_in(tx, id, now)? {
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
            }
            Ok((left, wake))
        })
        .await;
    match done {
        Ok((left, wake)) => {
            if let Some(at) = wake {
                timer.set(Duration::from_millis((at - now).max(1) as u64), &sd);
            }
            if left.is_empty() {
                Left::Nothing
            } else {
                Left::These(left)
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "update pass failed; retrying in a second");
            timer.set(Duration::from_secs(1), &sd);
            Left::Nothing
        }
    }
}

/// Whether the service's tasks are replaced by updates: replicated and global services
/// (a job runs again, all at once).
fn rolls(s: &Service) -> bool {
    !is_job(s) && matches!(s.mode(), Some(Mode::Replicated(_) | Mode::Global(_)))
}

/// Whether [`update_in`] would do anything for service `id`: an update or rollback under
/// way, a task on an older spec, or a stop-first replacement waiting to start.
fn has_work(t: &Tables, id: &str) -> bool {
    let Some(s) = t.services.get(id) else {
        return false;
    };
    if !rolls(s) {
        return false;
    }
    if s.update_state().is_some_and(State::is_rolling) {
        return true;
    }
    t.tasks_of_service(id).any(|x| {
        (desired(x) == TaskState::Ready && x.start_after_ms == 0)
            || (live(x) && x.spec_version != s.spec_version)
    })
}

/// A slot: a replicated service's slot number, or a global service's node.
type Slot = (u64, String);

fn slot_of(t: &Task) -> Slot {
    if t.slot > 0 {
        (t.slot, String::new())
    } else {
        (0, t.node_id.clone())
    }
}

/// The nodes that are down (read once per pass, not once per task).
fn down_nodes(tx: &Tx<'_>) -> BTreeSet<String> {
    let mut down = BTreeSet::new();
    tx.for_each(|n: &Node| {
        if n.status
            .as_ref()
            .is_some_and(|s| s.state == NodeState::Down as i32)
        {
            down.insert(n.id.clone());
        }
    });
    down
}

/// Whether `t` may still be running: it has not ended, and its node has not gone down
/// (a down node never says it stopped, and its task is replaced all the same).
fn may_run(down: &BTreeSet<String>, t: &Task) -> bool {
    !state(t).is_terminal()
        && (state(t) as i32) >= TaskState::Assigned as i32
        && !down.contains(&t.node_id)
}

/// The update of one service, as far as it can go now. Returns when it should be looked
/// at again (ms), for a delay, a monitor or a deadline that ends.
pub fn update_in(tx: &mut Tx<'_>, id: &str, now: i64) -> Result<Option<i64>, StoreError> {
    let Some(mut s) = tx.get::<Service>(id) else {
        return Ok(None);
    };
    if !rolls(&s) {
        return Ok(None);
    }
    let tasks: Vec<Task> = tx.tasks_of(id, false);
    start_ready(tx, &tasks)?;
    let mut st = s.update_status.clone().unwrap_or_default();
    let cur = s.update_state().unwrap_or(State::Unknown);
    if cur.is_paused() {
        return Ok(None);
    }
    let mut slots: BTreeMap<Slot, Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| live(t)) {
        slots.entry(slot_of(t)).or_default().push(t);
    }
    let old = |t: &Task| t.spec_version != s.spec_version;
    let dirty = slots
        .values()
        // slots still to replace: an old task, and no new one yet (a new one that died
        // and was not replaced leaves the old one be, as Swarm does)
        .filter(|ts| ts.iter().any(|t| old(t)) && ts.iter().all(|t| old(t)))
        .count() as u64;
    let mut changed = false;
    if !cur.is_rolling() {
        if dirty == 0 {
            return Ok(None);
        }
        st = UpdateStatus {
            state: State::Updating as i32,
            started_at_ms: now.max(st.started_at_ms + 1),
            message: "update in progress".into(),
            slots: dirty,
            ..Default::default()
        };
        changed = true;
    }
    let rolling_back = State::try_from(st.state) == Ok(State::RollbackStarted);
    if st.slots == 0 && dirty > 0 {
        // a rollback's first pass: the slots it sets out to replace
        st.slots = dirty;
        changed = true;
    }
    // (the config only: the spec is not copied on every pass)
    let cfg = update_config(s.spec.as_ref().and_then(|x| {
        if rolling_back {
            x.rollback.as_ref()
        } else {
            x.update.as_ref()
        }
    }));
    let uid = st.started_at_ms;
    let mine = |t: &Task| t.update_started_at_ms == uid && !old(t);
    let mut wake = Wake::default();
    // a task's deadline runs from when it was made, or from when the task it waited for
    // (stop-first) stopped
    let mut ended: BTreeMap<Slot, i64> = BTreeMap::new();
    for t in &tasks {
        let e = ended.entry(slot_of(t)).or_default();
        *e = (*e).max(t.ended_at_ms);
    }
    let since = |t: &Task| {
        let created = t.meta.as_ref().map_or(now, |m| m.created_at_ms);
        created.max(ended.get(&slot_of(t)).copied().unwrap_or(0))
    };

    // failures: the tasks this update made, each counted once
    let watch = cfg.failure_action != FailureAction::Continue;
    let mut newly_failed = None;
    for t in tasks.iter().filter(|t| mine(t)) {
        if st.failed_tasks.contains(&t.id) {
            continue;
        }
        match failed(t, since(t), &cfg, now) {
            Ok(true) if watch => {
                st.failed_tasks.push(t.id.clone());
                newly_failed = Some(t.id.clone());
                changed = true;
            }
            Ok(_) => {}
            Err(at) => wake.at(at),
        }
    }
    let ratio = st.failed_tasks.len() as f32 / st.slots.max(1) as f32;
    if watch && !st.failed_tasks.is_empty() && ratio > cfg.max_failure_ratio {
        let task = newly_failed.unwrap_or_else(|| st.failed_tasks[0].clone());
        let why = format!("due to failure or early termination of task {task}");
        if rolling_back || cfg.failure_action == FailureAction::Pause {
            let (state, what) = if rolling_back {
                (State::RollbackPaused, "rollback")
            } else {
                (State::Paused, "update")
            };
            st.state = state as i32;
            st.message = format!("{what} paused {why}");
            s.update_status = Some(st);
            tx.update(s)?;
            return Ok(None);
        }
        let limit = revisions::limit(tx.list::<Cluster>().first());
        let msg = format!("update rolled back {why}");
        let mut back = s.clone();
        match revisions::rollback(tx, &mut back, None, &msg, limit, now)? {
            Ok(()) => tx.update(back)?,
            Err(e) => {
                st.state = State::Paused as i32;
                st.message = format!("update paused {why}; it cannot be rolled back: {e}");
                s.update_status = Some(st);
                tx.update(s)?;
            }
        }
        return Ok(None);
    }

    // the slots under way: a start-first slot's old task stops once the new one runs;
    // a slot holds its place until its new task has run for the delay
    let delay = cfg.delay.as_millis() as i64;
    let deadline = TASK_DEADLINE.as_millis() as i64;
    let mut busy = 0usize;
    let mut left = 0usize;
    let mut todo: Vec<Vec<&Task>> = Vec::new();
    // a new task still on its way: not ended, not counted failed, not past its deadline
    let on_its_way = |t: &Task| {
        !state(t).is_terminal()
            && !st.failed_tasks.contains(&t.id)
            && (t.running_at_ms > 0 || now < since(t) + deadline)
    };
    for ts in slots.values() {
        let (olds, news): (Vec<&Task>, Vec<&Task>) = ts.iter().partition(|t| old(t));
        if !olds.is_empty() {
            if news.is_empty() {
                todo.push(olds);
                continue;
            }
            let running = news.iter().any(|t| state(t) == TaskState::Running);
            if running || cfg.order == Order::StopFirst {
                for o in &olds {
                    set_desired(tx, o, TaskState::Shutdown)?;
                }
            } else if news.iter().any(|t| on_its_way(t)) {
                left += 1; // start-first: the old one stops once the new one runs
            }
        }
        for t in news.iter().filter(|t| mine(t) && on_its_way(t)) {
            if t.running_at_ms == 0 {
                busy += 1;
            } else if now < t.running_at_ms + delay {
                busy += 1;
                wake.at(t.running_at_ms + delay);
            }
        }
    }
    let room = if cfg.parallelism == 0 {
        usize::MAX
    } else {
        (cfg.parallelism as usize).saturating_sub(busy)
    };
    let mut started = 0;
    let down = if todo.is_empty() {
        BTreeSet::new()
    } else {
        down_nodes(tx)
    };
    for olds in todo.iter() {
        if started >= room || tx.full() {
            left += 1;
            continue;
        }
        let first = olds[0];
        let node = if first.slot > 0 {
            ""
        } else {
            first.node_id.as_str()
        };
        let mut n = new_task(&s, first.slot, node, TaskState::Running);
        n.update_started_at_ms = uid;
        if cfg.order == Order::StopFirst {
            let running = olds.iter().any(|o| may_run(&down, o));
            for o in olds {
                set_desired(tx, o, TaskState::Shutdown)?;
            }
            if running {
                n.desired_state = TaskState::Ready as i32; // started once the old one stops
            }
        }
        tx.create(n)?;
        started += 1;
    }

    // the last slot done: one more monitor, then completed
    if left == 0 && busy == 0 && started == 0 {
        let monitor = cfg.monitor.as_millis() as i64;
        let end = tasks
            .iter()
            .filter(|t| mine(t) && t.running_at_ms > 0 && !st.failed_tasks.contains(&t.id))
            .map(|t| t.running_at_ms + monitor)
            .max();
        match end {
            Some(end) if now < end => wake.at(end),
            _ => {
                let (state, msg) = if rolling_back {
                    (State::RollbackCompleted, "rollback completed")
                } else {
                    (State::Completed, "update completed")
                };
                st.state = state as i32;
                st.message = msg.into();
                st.completed_at_ms = now;
                changed = true;
            }
        }
    }
    if changed {
        s.update_status = Some(st);
        tx.update(s)?;
    }
    Ok(wake.0)
}

/// Whether a task the update made has failed it: it ended before it ran or within the
/// monitor of running, or has not run by the deadline. `Err(at)`: not yet, but look
/// again at `at` (its deadline or the end of its monitor).
fn failed(t: &Task, since: i64, cfg: &Update, now: i64) -> Result<bool, i64> {
    let monitor = cfg.monitor.as_millis() as i64;
    let told_to_stop = desired(t) as i32 > TaskState::Running as i32;
    match state(t) {
        // (a task told to stop whose node was then removed did not fail; one that failed
        // is told to stop by the restart supervisor afterwards, and did)
        TaskState::Orphaned if told_to_stop => Ok(false),
        TaskState::Complete | TaskState::Failed | TaskState::Rejected | TaskState::Orphaned => {
            let ended = if t.ended_at_ms > 0 {
                t.ended_at_ms
            } else {
                now
            };
            Ok(t.running_at_ms == 0 || ended - t.running_at_ms <= monitor)
        }
        s if s.is_terminal() => Ok(false), // shut down, not failed
        _ if told_to_stop => Ok(false),
        _ if t.running_at_ms == 0 => {
            let due = since + TASK_DEADLINE.as_millis() as i64;
            if now >= due {
                Ok(true)
            } else {
                Err(due)
            }
        }
        _ => Ok(false),
    }
}

/// Starts the replacements a stop-first update made ready, once the tasks they replace
/// have stopped. (Those waiting out a restart delay are the restart supervisor's.)
fn start_ready(tx: &mut Tx<'_>, tasks: &[Task]) -> Result<(), StoreError> {
    let ready: Vec<&Task> = tasks
        .iter()
        .filter(|t| desired(t) == TaskState::Ready && t.start_after_ms == 0)
        .collect();
    if ready.is_empty() {
        return Ok(());
    }
    let down = &down_nodes(tx);
    // the slots' tasks that may still run (the ready ones among them)
    let mut running: BTreeMap<Slot, usize> = BTreeMap::new();
    for t in tasks.iter().filter(|t| may_run(down, t)) {
        *running.entry(slot_of(t)).or_default() += 1;
    }
    for t in ready {
        let itself = usize::from(may_run(down, t));
        if running.get(&slot_of(t)).copied().unwrap_or(0) <= itself {
            set_desired(tx, t, TaskState::Running)?;
        }
    }
    Ok(())
}

/// The soonest time to look again.
#[derive(Default)]
struct Wake(Option<i64>);

impl Wake {
    fn at(&mut self, at: i64) {
        self.0 = Some(self.0.map_or(at, |w| w.min(at)));
    }
}
