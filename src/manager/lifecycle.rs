//! The task life cycle, written once: which state may follow which, and who may write it
//! (ARCHITECTURE.md's table). Every change of a task's observed state goes through
//! [`advance`] (the managers' own) or [`check`] (an agent's report, taken in by the
//! dispatcher), and every change of its desired state through [`desire`].
//!
//! | writer | may write |
//! |---|---|
//! | orchestrator | SHUTDOWN for a task no node ever had (it makes tasks NEW) |
//! | allocator | PENDING, from NEW (its addresses allocated) |
//! | scheduler | ASSIGNED, from PENDING (a node passed the filters) |
//! | agent (its own node's tasks) | ACCEPTED … REJECTED, from ASSIGNED on |
//! | managers | ORPHANED, for a task whose node was removed |
//!
//! States only move forward (the same state again is a new message, an error say).
//! Desired states only move forward too, from NEW to REMOVE.

use shoal_proto::{Task, TaskState, TaskStatus};

/// Who writes a task's observed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    Orchestrator,
    Allocator,
    Scheduler,
    Agent,
    Managers,
}

/// Whether `by` may move a task from `from` to `to`; if not, why.
pub fn check(by: Writer, from: TaskState, to: TaskState) -> Result<(), String> {
    use TaskState::*;
    let n = |s: TaskState| s as i32;
    if n(to) < n(from) {
        return Err(format!(
            "states only move forward: {} cannot follow {}",
            to.display(),
            from.display()
        ));
    }
    let ok = match by {
        Writer::Orchestrator => to == Shutdown && n(from) < n(Assigned),
        Writer::Allocator => (from, to) == (New, Pending),
        Writer::Scheduler => (from, to) == (Pending, Assigned),
        Writer::Agent => n(from) >= n(Assigned) && (n(Accepted)..=n(Rejected)).contains(&n(to)),
        Writer::Managers => to == Orphaned && !from.is_terminal(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{by:?} may not move a task from {} to {}",
            from.display(),
            to.display()
        ))
    }
}

/// A task's observed state.
pub fn state(t: &Task) -> TaskState {
    t.observed_state()
}

/// A status in `state`, now, with `message`: a new task's, or one [`advance`] writes.
pub fn status(state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        timestamp_ms: super::store::now_ms(),
        state: state as i32,
        message: message.into(),
        ..Default::default()
    }
}

/// Moves `t` to `to` with `message` (its error cleared) as `by`, if the life cycle lets
/// it: the one place the managers write a task's state.
pub fn advance(t: &mut Task, by: Writer, to: TaskState, message: &str) -> Result<(), String> {
    check(by, state(t), to)?;
    t.status = Some(status(to, message));
    stamp(t, super::store::now_ms());
    Ok(())
}

/// Notes, on the managers' clock, when `t` (whose status was just written) first ran
/// and when it ended: what an update's monitor counts from.
pub fn stamp(t: &mut Task, now: i64) {
    let s = state(t);
    if s == TaskState::Running && t.running_at_ms == 0 {
        t.running_at_ms = now;
    }
    if s.is_terminal() && t.ended_at_ms == 0 {
        t.ended_at_ms = now;
    }
}

/// Sets `t`'s desired state to `to` when that moves it forward; false when it would not
/// (it stays as it is).
pub fn desire(t: &mut Task, to: TaskState) -> bool {
    if (to as i32) <= t.desired_state {
        return false;
    }
    t.desired_state = to as i32;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn each_writer_may_write_its_own_states_forward_only() {
        let ok = |by, from, to| check(by, from, to).is_ok();
        assert!(ok(Writer::Allocator, New, Pending));
        assert!(!ok(Writer::Allocator, Pending, Assigned));
        assert!(ok(Writer::Scheduler, Pending, Assigned));
        assert!(!ok(Writer::Scheduler, New, Assigned));
        assert!(ok(Writer::Orchestrator, Pending, Shutdown));
        assert!(
            !ok(Writer::Orchestrator, Running, Shutdown),
            "the node says when it stopped"
        );
        for to in [
            Accepted, Preparing, Ready, Starting, Running, Complete, Shutdown, Failed, Rejected,
        ] {
            assert!(ok(Writer::Agent, Assigned, to), "{to:?}");
        }
        assert!(
            ok(Writer::Agent, Running, Running),
            "a new message, same state"
        );
        assert!(!ok(Writer::Agent, Running, Starting), "backwards");
        assert!(!ok(Writer::Agent, Pending, Running), "not its node's yet");
        assert!(!ok(Writer::Agent, Running, Orphaned));
        assert!(
            !ok(Writer::Agent, Orphaned, Failed),
            "the managers ended it"
        );
        assert!(ok(Writer::Managers, Running, Orphaned));
        assert!(!ok(Writer::Managers, Failed, Orphaned));
        let e = check(Writer::Agent, Complete, Running).unwrap_err();
        assert!(e.contains("only move forward"), "{e}");
    }

    #[test]
    fn advance_writes_only_what_is_allowed() {
        let mut t = Task::default();
        advance(&mut t, Writer::Allocator, Pending, "pending").unwrap();
        assert_eq!(state(&t), Pending);
        assert!(advance(&mut t, Writer::Agent, Running, "x").is_err());
        assert_eq!(state(&t), Pending, "a refused move changes nothing");
        t.desired_state = Running as i32;
        assert!(desire(&mut t, Shutdown));
        assert!(!desire(&mut t, Running), "desired states only move forward");
        assert_eq!(t.desired_state, Shutdown as i32);
    }
}
