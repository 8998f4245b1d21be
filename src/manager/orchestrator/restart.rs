//! Task-level repair: the restart supervisor replaces tasks that ended while they were
//! meant to run, by their restart policy (condition any / on-failure / none, delay, max
//! attempts within a window; Swarm's defaults: any, 5 s, unlimited). The replacement is
//! created at once, made ready, and started when the delay has passed.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_proto::restart_policy::Condition;
use shoal_proto::{Service, Task, TaskState};
use tokio_util::sync::CancellationToken;

use crate::manager::store::{now_ms, Store, StoreError};
use crate::manager::tasks::{desired, is_job, new_task, run_loop, state, Left, Timer};

/// A task's restart policy, with Swarm's defaults filled in.
type Policy = crate::spec::service::Restart;

fn policy_of(t: &Task) -> Policy {
    crate::spec::service::restart_policy(t.spec.as_ref().and_then(|s| s.restart.as_ref()))
}

/// Whether a dead task is replaced, by its policy and the restarts made before it
/// (which the task carries: the slot's history may have been trimmed).
#[derive(Debug, PartialEq)]
enum Verdict {
    Restart,
    Never,
    /// Its max attempts within the window are used up: it may be replaced once the
    /// oldest of them is older than the window, in this long.
    Later(Duration),
}

fn verdict(t: &Task, p: &Policy, job: bool, now: i64) -> Verdict {
    let (cond, max, window) = (p.condition, p.max_attempts, p.window);
    let failed = matches!(state(t), TaskState::Failed | TaskState::Rejected);
    let wanted = match cond {
        Condition::None => false,
        Condition::OnFailure => failed,
        Condition::Any => !job || failed,
    };
    if !wanted {
        return Verdict::Never;
    }
    if max == 0 {
        return Verdict::Restart;
    }
    if window.is_zero() {
        return if t.restarts < max {
            Verdict::Restart
        } else {
            Verdict::Never
        };
    }
    let window = window.as_millis() as i64;
    let mut within: Vec<i64> = t
        .restarted_at_ms
        .iter()
        .copied()
        .filter(|&at| at >= now - window)
        .collect();
    if (within.len() as u64) < max {
        return Verdict::Restart;
    }
    // the restart that has to leave the window before one more is allowed
    within.sort_unstable();
    let due = within[within.len() - max as usize] + window + 1;
    Verdict::Later(Duration::from_millis((due - now).max(1) as u64))
}

/// The restart count and times that `t`'s replacement carries, one restart more.
fn count_restart(t: &Task, p: &Policy, n: &mut Task, now: i64) {
    let (max, window) = (p.max_attempts, p.window);
    n.restarts = t.restarts.saturating_add(1);
    if max > 0 && !window.is_zero() {
        // within the window there are at most max - 1 earlier restarts, or this one would
        // not have been made (the limits keep max small when there is a window)
        let since = now - window.as_millis() as i64;
        n.restarted_at_ms = t
            .restarted_at_ms
            .iter()
            .copied()
            .filter(|&at| at >= since)
            .chain([now])
            .collect();
    }
}

pub struct RestartSupervisor {
    store: Store,
}

impl RestartSupervisor {
    pub fn new(store: Store) -> RestartSupervisor {
        RestartSupervisor { store }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let store = self.store.clone();
        let timer = Timer::default();
        run_loop(
            "restart",
            store.clone(),
            shutdown.clone(),
            Duration::ZERO,
            Some(timer.wake.clone()),
            |dirty| {
                pass(
                    store.clone(),
                    shutdown.clone(),
                    timer.clone(),
                    dirty.is_none(),
                )
            },
        )
        .await;
    }
}

/// One pass of the restart supervisor: dead tasks replaced (their replacements started
/// once their delay has passed, and tasks rejected before they ran replaced only then).
/// A pass that had more than one commit's worth leaves the rest to the next.
/// `full`: a full pass (not one for the services events marked).
async fn pass(store: Store, sd: CancellationToken, timer: Timer, full: bool) -> Left {
    let mut left = Left::Nothing;
    match restart_dead(&store).await {
        Ok(r) => {
            if let Some(wait) = r.check_again_in {
                timer.set(wait, &sd);
            }
            if r.more {
                left = Left::All;
            }
        }
        Err(e) => tracing::warn!(error = %e, "restarting tasks failed"),
    }
    // what is due is looked for on full passes only: the first (a new leader's), and
    // those the timer asks for, which every replacement made ready sets for its delay
    if !full {
        return left;
    }
    match start_due(&store, now_ms()).await {
        Ok(Some(wait)) => timer.set(wait, &sd),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "starting replacements failed; retrying in a second");
            timer.set(Duration::from_secs(1), &sd);
        }
    }
    left
}

/// What a restart pass did.
#[derive(Debug, Default)]
pub struct Restarted {
    /// Replacements made ready, to start after their delay.
    pub start_later: Vec<(String, Duration)>,
    /// Tasks rejected before they ran wait out their delay before they are replaced,
    /// and tasks that used up their attempts within a window wait for it to pass: the
    /// soonest is due in this long.
    pub check_again_in: Option<Duration>,
    /// More dead tasks than one commit holds: the rest are for the next pass.
    pub more: bool,
}

/// Replaces dead tasks, by their policy. A task that ended after it had run gets a
/// replacement at once, made ready (its image pulled) and started when the delay has
/// passed; one that was rejected before it ran (its image could not be pulled, its
/// network not be built) gets its replacement only when the delay has passed since it
/// ended, so that a task that cannot start is tried once per delay, not as fast as the
/// node can refuse it.
pub async fn restart_dead(store: &Store) -> Result<Restarted, StoreError> {
    let now = now_ms();
    store
        .update(|tx| {
            let services: BTreeMap<String, Service> = tx
                .list::<Service>()
                .into_iter()
                .map(|s| (s.id.clone(), s))
                .collect();
            let dead = tx.filter(|t: &Task| {
                state(t).is_terminal()
                    && matches!(desired(t), TaskState::Running | TaskState::Complete)
            });
            let mut r = Restarted::default();
            for t in dead.iter() {
                if tx.full() {
                    r.more = true;
                    break;
                }
                let Some(s) = services.get(&t.service_id) else {
                    continue;
                };
                let job = is_job(s);
                if job && state(t) == TaskState::Complete {
                    continue; // a job's task that finished is done
                }
                // it no longer counts as the slot's task
                let mut old = t.clone();
                crate::manager::lifecycle::desire(&mut old, TaskState::Shutdown);
                let policy = policy_of(t);
                match verdict(t, &policy, job, now) {
                    Verdict::Restart => {}
                    Verdict::Never => continue, // by policy it stays as it ended
                    Verdict::Later(wait) => {
                        r.check_again_in = Some(r.check_again_in.map_or(wait, |w| w.min(wait)));
                        continue;
                    }
                }
                let delay = policy.delay;
                if state(t) == TaskState::Rejected && !delay.is_zero() {
                    // the manager's clock: when the rejection was committed
                    let ended = t.meta.as_ref().map_or(now, |m| m.updated_at_ms);
                    let wait = (ended + delay.as_millis() as i64 - now).max(0) as u64;
                    if wait > 0 {
                        let wait = Duration::from_millis(wait);
                        r.check_again_in = Some(r.check_again_in.map_or(wait, |w| w.min(wait)));
                        continue; // it still holds its slot, so nothing replaces it meanwhile
                    }
                }
                tx.update(old)?;
                if t.spec_version != s.spec_version && !job {
                    continue; // the orchestrator makes the up-to-date replacement
                }
                let rejected = state(t) == TaskState::Rejected;
                let want = run_to(job);
                // a rejected task's delay has passed already
                let wait = !delay.is_zero() && !rejected;
                let mut n = new_task(
                    s,
                    t.slot,
                    &t.node_id,
                    if wait { TaskState::Ready } else { want },
                );
                if t.slot > 0 {
                    n.node_id.clear(); // replicated: the scheduler may pick another node
                }
                count_restart(t, &policy, &mut n, now);
                if wait {
                    n.start_after_ms = now.saturating_add(delay.as_millis() as i64);
                    r.check_again_in = Some(r.check_again_in.map_or(delay, |w| w.min(delay)));
                    r.start_later.push((n.id.clone(), delay));
                }
                tx.create(n)?;
            }
            Ok(r)
        })
        .await
}

/// The desired state a task runs to: a job's completes, a service's runs.
fn run_to(job: bool) -> TaskState {
    if job {
        TaskState::Complete
    } else {
        TaskState::Running
    }
}

/// Starts the replacements whose restart delay has passed (at `now`); returns how long
/// until the next one is due, if one waits. What is due is in the store
/// (`start_after_ms`), so a new leader's first pass starts what the old one would have.
pub async fn start_due(store: &Store, now: i64) -> Result<Option<Duration>, StoreError> {
    // read first (most passes find nothing due, and take no write lock)
    let (due, mut next) = store.view(|t| {
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        for x in t.tasks.values() {
            if desired(x) != TaskState::Ready || x.start_after_ms == 0 {
                continue;
            }
            if x.start_after_ms <= now {
                due.push(x.id.clone());
            } else {
                next = Some(next.map_or(x.start_after_ms, |n| n.min(x.start_after_ms)));
            }
        }
        (due, next)
    });
    if due.is_empty() {
        return Ok(next.map(|at| Duration::from_millis((at - now) as u64)));
    }
    let more = store
        .update(|tx| {
            for id in &due {
                if tx.full() {
                    return Ok(true); // the rest in the next pass, at once
                }
                let Some(mut t) = tx.get::<Task>(id) else {
                    continue;
                };
                let job = tx.get::<Service>(&t.service_id).is_some_and(|s| is_job(&s));
                if desired(&t) == TaskState::Ready
                    && crate::manager::lifecycle::desire(&mut t, run_to(job))
                {
                    tx.update(t)?;
                }
            }
            Ok(false)
        })
        .await?;
    if more {
        next = Some(now + 1);
    }
    Ok(next.map(|at| Duration::from_millis((at - now).max(1) as u64)))
}
