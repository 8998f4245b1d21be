//! The update supervisor: parallelism and delay, stop-first and start-first, failures
//! counted within the monitor or by the deadline, pause, rollback (automatic and asked
//! for), and the final monitor. Time is passed in, so delays are not waited out.

use super::*;
use crate::manager::control::{update_service, Change};
use crate::manager::store::now_ms;
use crate::spec::update::TASK_DEADLINE;
use std::collections::BTreeSet;
use update_status::State;

fn ms(n: u64) -> Option<prost_types::Duration> {
    Some(crate::spec::units::to_proto(Duration::from_millis(n)))
}

fn with_update(mut s: Service, u: UpdateConfig) -> Service {
    s.spec.as_mut().unwrap().update = Some(u);
    s
}

async fn set_image(store: &Store, id: &str, image: &str) -> Service {
    let mut spec = store.view(|t| t.services[id].spec.clone().unwrap());
    spec.task
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .image = image.into();
    update_service(store, id, 0, Change::Spec(Box::new(spec)), &no_registry())
        .await
        .unwrap()
}

fn current(store: &Store, id: &str) -> Vec<Task> {
    let v = store.view(|t| t.services[id].spec_version);
    tasks_of(store, id)
        .into_iter()
        .filter(|t| t.spec_version == v && desired(t) as i32 <= TaskState::Running as i32)
        .collect()
}

fn update_state(store: &Store, id: &str) -> (State, String) {
    let u = store.view(|t| t.services[id].update_status.clone().unwrap_or_default());
    (State::try_from(u.state).unwrap(), u.message)
}

/// `s` on one node, its tasks running, then updated to busybox:2.
async fn running_then_updated(s: &Service) -> Store {
    let store = setup(vec![node("n1", &[])], s).await;
    round(&store, &s.id).await;
    agent_converges(&store).await;
    set_image(&store, &s.id, "busybox:2").await;
    store
}

/// Plays the agent and the loops until nothing moves (the delay aside).
async fn settle(store: &Store, id: &str) {
    for _ in 0..4 {
        agent_converges(store).await;
        round(store, id).await;
    }
}

#[tokio::test]
async fn parallelism_and_delay_pace_the_update_then_the_monitor_ends_it() {
    let s = with_update(
        service("web", replicated(6)),
        UpdateConfig {
            parallelism: 2,
            delay: ms(1_000),
            monitor: ms(2_000),
            ..Default::default()
        },
    );
    let store = running_then_updated(&s).await;
    round(&store, &s.id).await;
    assert_eq!(update_state(&store, &s.id).0, State::Updating);
    assert_eq!(current(&store, &s.id).len(), 2, "two slots at a time");
    settle(&store, &s.id).await;
    assert_eq!(
        current(&store, &s.id).len(),
        2,
        "the next two wait out the delay after the first two run"
    );
    let mut at = now_ms();
    for batch in [4, 6] {
        at += 1_100;
        update_at(&store, &s.id, at).await;
        assert_eq!(current(&store, &s.id).len(), batch);
        settle(&store, &s.id).await;
    }
    assert!(current(&store, &s.id)
        .iter()
        .all(|t| state(t) == TaskState::Running));
    assert_eq!(
        update_state(&store, &s.id).0,
        State::Updating,
        "the last tasks are still watched"
    );
    let wake = update_at(&store, &s.id, now_ms()).await;
    assert!(wake.is_some(), "it asks to be woken when the monitor ends");
    update_at(&store, &s.id, now_ms() + 2_100).await;
    assert_eq!(
        update_state(&store, &s.id),
        (State::Completed, "update completed".into())
    );
}

#[tokio::test]
async fn start_first_stops_the_old_task_once_the_new_one_runs() {
    let s = with_update(
        service("web", replicated(1)),
        UpdateConfig {
            parallelism: 1,
            order: update_config::Order::StartFirst as i32,
            ..Default::default()
        },
    );
    let store = running_then_updated(&s).await;
    round(&store, &s.id).await;
    let ts = tasks_of(&store, &s.id);
    assert_eq!(ts.len(), 2);
    assert!(
        ts.iter().all(|t| desired(t) == TaskState::Running),
        "both meant to run"
    );
    agent_converges(&store).await; // the new one runs
    round(&store, &s.id).await;
    let old = tasks_of(&store, &s.id)
        .into_iter()
        .find(|t| t.spec_version == 1)
        .unwrap();
    assert_eq!(desired(&old), TaskState::Shutdown);
}

/// A service of `n` replicas whose update to busybox:2 has made its first task, which
/// is made to fail. Returns the store and the failed task.
async fn first_new_task_fails(s: Service) -> (Store, Task) {
    let store = running_then_updated(&s).await;
    round(&store, &s.id).await;
    agent_converges(&store).await; // the old one stops
    round(&store, &s.id).await; // the new one starts
    let new = current(&store, &s.id);
    assert_eq!(new.len(), 1);
    set_state(&store, &new[0].id, TaskState::Failed).await;
    round(&store, &s.id).await;
    (store, new[0].clone())
}

#[tokio::test]
async fn a_failed_task_pauses_the_update_with_swarms_message() {
    let s = with_update(
        service("web", replicated(3)),
        UpdateConfig {
            parallelism: 1,
            ..Default::default()
        },
    );
    let (store, failed) = first_new_task_fails(s.clone()).await;
    let (st, msg) = update_state(&store, &s.id);
    assert_eq!(st, State::Paused);
    assert_eq!(
        msg,
        format!(
            "update paused due to failure or early termination of task {}",
            failed.id
        )
    );
    settle(&store, &s.id).await;
    let old = tasks_of(&store, &s.id)
        .into_iter()
        .filter(|t| t.spec_version == 1 && desired(t) == TaskState::Running)
        .count();
    assert_eq!(old, 2, "paused: the other slots keep their tasks");
    // an update with nothing changed resumes it, and a rollback still goes to busybox
    let spec = store.view(|t| t.services[&s.id].spec.clone().unwrap());
    update_service(
        &store,
        &s.id,
        0,
        Change::Spec(Box::new(spec)),
        &no_registry(),
    )
    .await
    .unwrap();
    assert_eq!(update_state(&store, &s.id).0, State::Unknown, "resumed");
    let r = update_service(
        &store,
        &s.id,
        0,
        Change::Rollback { to_revision: None },
        &no_registry(),
    )
    .await
    .unwrap();
    assert_eq!(crate::spec::docker::service_image(&r), "busybox");
}

#[tokio::test]
async fn a_failure_within_the_ratio_goes_on() {
    let s = with_update(
        service("web", replicated(4)),
        UpdateConfig {
            parallelism: 1,
            max_failure_ratio: 0.5,
            ..Default::default()
        },
    );
    let (store, failed) = first_new_task_fails(s.clone()).await;
    assert_eq!(update_state(&store, &s.id).0, State::Updating);
    let u = store.view(|t| t.services[&s.id].update_status.clone().unwrap());
    assert_eq!(
        u.failed_tasks,
        [failed.id],
        "counted, and kept in the store"
    );
    assert_eq!(u.slots, 4);
    assert_eq!(
        current(&store, &s.id).len(),
        2,
        "the failed one holds no place: the next slot started"
    );
}

#[tokio::test]
async fn a_failure_rolls_back_and_keeps_the_tasks_still_on_the_old_spec() {
    let s = with_update(
        service("web", replicated(3)),
        UpdateConfig {
            parallelism: 1,
            failure_action: update_config::FailureAction::Rollback as i32,
            ..Default::default()
        },
    );
    let (store, failed) = first_new_task_fails(s.clone()).await;
    let (st, msg) = update_state(&store, &s.id);
    assert_eq!(st, State::RollbackStarted);
    assert!(
        msg.starts_with("update rolled back due to failure or early termination of task"),
        "{msg}"
    );
    let svc = store.view(|t| t.services[&s.id].clone());
    assert_eq!(svc.spec_version, 1, "the old spec's version, restored");
    assert_eq!(crate::spec::docker::service_image(&svc), "busybox");
    let kept: Vec<String> = tasks_of(&store, &s.id)
        .into_iter()
        .filter(|t| {
            t.spec_version == 1 && t.slot != failed.slot && desired(t) == TaskState::Running
        })
        .map(|t| t.id)
        .collect();
    assert_eq!(kept.len(), 2);
    settle(&store, &s.id).await;
    for id in &kept {
        let t = store.view(|x| x.tasks[id].clone());
        assert_eq!(desired(&t), TaskState::Running, "never replaced");
    }
    update_at(&store, &s.id, now_ms() + 5_100).await;
    assert_eq!(
        update_state(&store, &s.id),
        (State::RollbackCompleted, "rollback completed".into())
    );
    assert_eq!(running(&tasks_of(&store, &s.id)), 3);
}

#[tokio::test]
async fn a_rollback_that_fails_pauses() {
    let s = with_update(service("web", replicated(2)), UpdateConfig::default());
    let store = running_then_updated(&s).await;
    settle(&store, &s.id).await;
    update_at(&store, &s.id, now_ms() + 60_000).await;
    settle(&store, &s.id).await;
    assert_eq!(update_state(&store, &s.id).0, State::Completed);
    update_service(
        &store,
        &s.id,
        0,
        Change::Rollback { to_revision: None },
        &no_registry(),
    )
    .await
    .unwrap();
    assert_eq!(
        update_state(&store, &s.id),
        (State::RollbackStarted, "manually requested rollback".into())
    );
    round(&store, &s.id).await;
    agent_converges(&store).await;
    round(&store, &s.id).await;
    let new = current(&store, &s.id)
        .into_iter()
        .find(|t| t.update_started_at_ms > 0)
        .unwrap();
    set_state(&store, &new.id, TaskState::Failed).await;
    round(&store, &s.id).await;
    let (st, msg) = update_state(&store, &s.id);
    assert_eq!(st, State::RollbackPaused);
    assert!(msg.starts_with("rollback paused due to failure"), "{msg}");
}

#[tokio::test]
async fn failures_count_within_the_monitor_only_and_by_the_deadline() {
    let s = with_update(
        service("web", replicated(2)),
        UpdateConfig {
            parallelism: 0,
            monitor: ms(1_000),
            ..Default::default()
        },
    );
    let store = running_then_updated(&s).await;
    settle(&store, &s.id).await;
    let new = current(&store, &s.id);
    assert_eq!(new.len(), 2, "parallelism 0: all at once");
    // one ran for longer than the monitor before it failed: not the update's failure
    let id = new[0].id.clone();
    store
        .update(move |tx| {
            let mut t = tx.get::<Task>(&id).unwrap();
            t.running_at_ms -= 10_000;
            tx.update(t)
        })
        .await
        .unwrap();
    set_state(&store, &new[0].id, TaskState::Failed).await;
    round(&store, &s.id).await;
    assert_eq!(update_state(&store, &s.id).0, State::Updating);

    // a task that never runs fails the update at the deadline
    let s = with_update(service("api", replicated(1)), UpdateConfig::default());
    let store = running_then_updated(&s).await;
    round(&store, &s.id).await; // made; never heard of again
    let wake = update_at(&store, &s.id, now_ms()).await.unwrap();
    assert!(wake >= now_ms() + TASK_DEADLINE.as_millis() as i64 - 5_000);
    update_at(&store, &s.id, wake + 1).await;
    assert_eq!(update_state(&store, &s.id).0, State::Paused);
}

#[tokio::test]
async fn a_start_first_task_that_dies_unreplaced_leaves_the_old_one_and_ends_the_update() {
    let mut s = with_update(
        service("web", replicated(1)),
        UpdateConfig {
            parallelism: 1,
            order: update_config::Order::StartFirst as i32,
            failure_action: update_config::FailureAction::Continue as i32,
            monitor: ms(0),
            ..Default::default()
        },
    );
    s.spec.as_mut().unwrap().task.as_mut().unwrap().restart = Some(RestartPolicy {
        condition: restart_policy::Condition::None as i32,
        ..Default::default()
    });
    let store = running_then_updated(&s).await;
    round(&store, &s.id).await;
    let new = current(&store, &s.id);
    assert_eq!(new.len(), 1);
    set_state(&store, &new[0].id, TaskState::Failed).await;
    restart_dead(&store).await.unwrap(); // by its policy, not replaced
    round(&store, &s.id).await;
    assert_eq!(update_state(&store, &s.id).0, State::Completed);
    let old = tasks_of(&store, &s.id)
        .into_iter()
        .find(|t| t.spec_version == 1)
        .unwrap();
    assert_eq!(desired(&old), TaskState::Running, "the old one runs on");
    round(&store, &s.id).await;
    assert_eq!(
        update_state(&store, &s.id).0,
        State::Completed,
        "no new update starts for it"
    );
}

#[tokio::test]
async fn a_global_service_is_updated_node_by_node() {
    let s = with_update(
        service("agent", Mode::Global(GlobalService {})),
        UpdateConfig {
            parallelism: 1,
            ..Default::default()
        },
    );
    let nodes = vec![node("n1", &[]), node("n2", &[]), node("n3", &[])];
    let store = setup(nodes, &s).await;
    round(&store, &s.id).await;
    agent_converges(&store).await;
    set_image(&store, &s.id, "busybox:2").await;
    round(&store, &s.id).await;
    let new = current(&store, &s.id);
    assert_eq!(new.len(), 1, "one node at a time");
    let on = new[0].node_id.clone();
    let old = tasks_of(&store, &s.id)
        .into_iter()
        .find(|t| t.spec_version == 1 && t.node_id == on)
        .unwrap();
    assert_eq!(
        desired(&old),
        TaskState::Shutdown,
        "on the same node, stop-first"
    );
    settle(&store, &s.id).await;
    let all: BTreeSet<String> = current(&store, &s.id)
        .into_iter()
        .map(|t| t.node_id)
        .collect();
    assert_eq!(all.len(), 3, "every node, in turn");
}
