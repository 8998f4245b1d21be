//! The orchestrators and the restart supervisor: replicas, rolling updates, restarts, global
//! services and jobs, and commits bounded however big a service.

use super::*;

#[tokio::test]
async fn replicated_scales_up_and_down() {
    let s = service("web", replicated(3));
    let store = setup(vec![node("n1", &[])], &s).await;
    round(&store, &s.id).await;
    let ts = tasks_of(&store, &s.id);
    let mut slots: Vec<u64> = ts.iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, [1, 2, 3]);
    assert!(ts
        .iter()
        .all(|t| state(t) == TaskState::Assigned && !t.node_id.is_empty()));
    assert!(ts.iter().all(|t| t
        .annotations
        .as_ref()
        .unwrap()
        .name
        .starts_with(&format!("web.{}.", t.slot))));
    agent_converges(&store).await;
    assert_eq!(running(&tasks_of(&store, &s.id)), 3);

    let mut s2 = store.view(|t| t.services[&s.id].clone());
    if let Some(Mode::Replicated(r)) = s2.spec.as_mut().unwrap().mode.as_mut() {
        r.replicas = 1;
    }
    store.update(|tx| tx.update(s2)).await.unwrap();
    round(&store, &s.id).await;
    let ts = tasks_of(&store, &s.id);
    assert_eq!(
        ts.iter()
            .filter(|t| desired(t) == TaskState::Remove)
            .map(|t| t.slot)
            .max(),
        Some(3)
    );
    assert_eq!(
        ts.iter()
            .filter(|t| desired(t) == TaskState::Running)
            .map(|t| t.slot)
            .collect::<Vec<_>>(),
        [1]
    );
    agent_converges(&store).await;
    assert_eq!(
        reap(&store).await.unwrap(),
        (2, false),
        "removed tasks go once stopped"
    );
    assert_eq!(tasks_of(&store, &s.id).len(), 1);
}

#[tokio::test]
async fn update_replaces_one_slot_at_a_time_stop_first() {
    let s = service("web", replicated(2));
    let store = setup(vec![node("n1", &[])], &s).await;
    round(&store, &s.id).await;
    agent_converges(&store).await;
    let mut s2 = store.view(|t| t.services[&s.id].clone());
    s2.spec
        .as_mut()
        .unwrap()
        .task
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .image = "busybox:2".into();
    s2.spec_version = 2;
    store.update(|tx| tx.update(s2)).await.unwrap();
    round(&store, &s.id).await;
    let ts = tasks_of(&store, &s.id);
    let new: Vec<&Task> = ts.iter().filter(|t| t.spec_version == 2).collect();
    assert_eq!(new.len(), 1, "one slot at a time");
    assert_eq!(
        desired(new[0]),
        TaskState::Ready,
        "stop-first: prepared, not started, while the old one stops"
    );
    let old = ts
        .iter()
        .find(|t| t.slot == new[0].slot && t.spec_version == 1)
        .unwrap();
    assert_eq!(desired(old), TaskState::Shutdown);
    assert_eq!(running(&ts), 1, "the other slot keeps running");
    agent_converges(&store).await; // the old one stops
    round(&store, &s.id).await;
    let t = store.view(|x| x.tasks[&new[0].id].clone());
    assert_eq!(
        desired(&t),
        TaskState::Running,
        "started once its predecessor stopped"
    );
    agent_converges(&store).await;
    round(&store, &s.id).await;
    agent_converges(&store).await;
    round(&store, &s.id).await;
    agent_converges(&store).await;
    round(&store, &s.id).await;
    let ts = tasks_of(&store, &s.id);
    let live: Vec<&Task> = ts
        .iter()
        .filter(|t| desired(t) == TaskState::Running)
        .collect();
    assert_eq!(live.len(), 2);
    assert!(
        live.iter()
            .all(|t| t.spec_version == 2 && state(t) == TaskState::Running),
        "every task replaced"
    );
}

#[tokio::test]
async fn restart_policy_any_on_failure_none_and_max_attempts() {
    let mut s = service("web", replicated(1));
    s.spec.as_mut().unwrap().task.as_mut().unwrap().restart = Some(RestartPolicy {
        condition: restart_policy::Condition::Any as i32,
        delay: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        max_attempts: 7,
        window: None,
    });
    let store = setup(vec![node("n1", &[])], &s).await;
    round(&store, &s.id).await;
    agent_converges(&store).await;
    // more attempts than the task history keeps (5): the count is not the history's
    for attempt in 1..=8 {
        let t = tasks_of(&store, &s.id)
            .into_iter()
            .find(|t| desired(t) == TaskState::Running && state(t) == TaskState::Running)
            .expect("a running task");
        set_state(&store, &t.id, TaskState::Failed).await;
        let later = restart_dead(&store).await.unwrap().start_later;
        reap(&store).await.unwrap();
        if attempt == 8 {
            assert!(later.is_empty(), "max attempts reached: no eighth restart");
            assert_eq!(
                desired(&store.view(|x| x.tasks[&t.id].clone())),
                TaskState::Running,
                "left as it ended"
            );
            break;
        }
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].1, Duration::from_secs(5));
        let repl = store.view(|x| x.tasks[&later[0].0].clone());
        assert_eq!((desired(&repl), repl.slot), (TaskState::Ready, t.slot));
        // its delay has passed
        start_due(&store, repl.start_after_ms).await.unwrap();
        round(&store, &s.id).await;
        agent_converges(&store).await;
    }
    assert!(
        tasks_of(&store, &s.id).len() <= 6,
        "the history was trimmed meanwhile"
    );

    // with a window, only the restarts within it count
    let mut w = service("windowed", replicated(1));
    w.spec.as_mut().unwrap().task.as_mut().unwrap().restart = Some(RestartPolicy {
        condition: restart_policy::Condition::Any as i32,
        delay: Some(prost_types::Duration::default()),
        max_attempts: 2,
        window: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
    });
    let store = setup(vec![node("n1", &[])], &w).await;
    round(&store, &w.id).await;
    agent_converges(&store).await;
    let fail_live = async |store: &Store| {
        let t = tasks_of(store, &w.id)
            .into_iter()
            .find(|t| desired(t) == TaskState::Running && state(t) == TaskState::Running)
            .expect("a running task");
        set_state(store, &t.id, TaskState::Failed).await;
        restart_dead(store).await.unwrap();
        round(store, &w.id).await;
        agent_converges(store).await;
        t.id
    };
    fail_live(&store).await;
    fail_live(&store).await;
    let third = fail_live(&store).await;
    assert_eq!(
        desired(&store.view(|x| x.tasks[&third].clone())),
        TaskState::Running,
        "two restarts within the hour: no third"
    );
    let again = restart_dead(&store).await.unwrap().check_again_in;
    assert!(
        again.is_some_and(|d| d > Duration::from_secs(3590) && d <= Duration::from_secs(3601)),
        "looked at again once the first restart leaves the window: {again:?}"
    );
    // once those two are older than the window, it is restarted
    let id = third.clone();
    store
        .update(move |tx| {
            let mut t = tx.get::<Task>(&id).unwrap();
            assert_eq!((t.restarts, t.restarted_at_ms.len()), (2, 2));
            for at in &mut t.restarted_at_ms {
                *at -= 2 * 3600 * 1000;
            }
            tx.update(t)
        })
        .await
        .unwrap();
    restart_dead(&store).await.unwrap();
    assert_eq!(
        desired(&store.view(|x| x.tasks[&third].clone())),
        TaskState::Shutdown,
        "replaced once the window passed"
    );

    // condition none: a failed task stays down, and the orchestrator does not replace it
    let mut n = service("once", replicated(1));
    n.spec.as_mut().unwrap().task.as_mut().unwrap().restart = Some(RestartPolicy {
        condition: restart_policy::Condition::None as i32,
        ..Default::default()
    });
    let store = setup(vec![node("n1", &[])], &n).await;
    round(&store, &n.id).await;
    agent_converges(&store).await;
    let t = tasks_of(&store, &n.id)[0].clone();
    set_state(&store, &t.id, TaskState::Failed).await;
    assert!(restart_dead(&store).await.unwrap().start_later.is_empty());
    round(&store, &n.id).await;
    assert_eq!(tasks_of(&store, &n.id).len(), 1, "stays down");

    // on-failure: an exit 0 is not restarted
    let mut f = service("jobby", replicated(1));
    f.spec.as_mut().unwrap().task.as_mut().unwrap().restart = Some(RestartPolicy {
        condition: restart_policy::Condition::OnFailure as i32,
        ..Default::default()
    });
    let store = setup(vec![node("n1", &[])], &f).await;
    round(&store, &f.id).await;
    agent_converges(&store).await;
    let t = tasks_of(&store, &f.id)[0].clone();
    set_state(&store, &t.id, TaskState::Complete).await;
    assert!(restart_dead(&store).await.unwrap().start_later.is_empty());
    assert_eq!(tasks_of(&store, &f.id).len(), 1);
}

#[tokio::test]
async fn global_runs_one_per_eligible_node_and_leaves_drained_ones() {
    let s = service("agent", Mode::Global(GlobalService {}));
    let (a, b) = (node("a", &[]), node("b", &[]));
    let b_id = b.id.clone();
    let store = setup(vec![a, b], &s).await;
    round(&store, &s.id).await;
    let ts = tasks_of(&store, &s.id);
    assert_eq!(ts.len(), 2);
    assert_ne!(ts[0].node_id, ts[1].node_id);
    agent_converges(&store).await;
    let mut nb = store.view(|t| t.nodes[&b_id].clone());
    nb.spec.as_mut().unwrap().availability = NodeAvailability::Drain as i32;
    store.update(|tx| tx.update(nb)).await.unwrap();
    round(&store, &s.id).await;
    let on_b = tasks_of(&store, &s.id)
        .into_iter()
        .find(|t| t.node_id == b_id)
        .unwrap();
    assert_eq!(
        desired(&on_b),
        TaskState::Shutdown,
        "drained node's task is shut down"
    );
}

#[tokio::test]
async fn replicated_job_runs_to_its_completions() {
    let s = service(
        "batch",
        Mode::ReplicatedJob(ReplicatedJob {
            max_concurrent: 2,
            total_completions: 3,
        }),
    );
    let store = setup(vec![node("a", &[])], &s).await;
    round(&store, &s.id).await;
    assert_eq!(tasks_of(&store, &s.id).len(), 2, "at most two at once");
    assert!(tasks_of(&store, &s.id)
        .iter()
        .all(|t| desired(t) == TaskState::Complete));
    agent_converges(&store).await; // assigned -> complete
    round(&store, &s.id).await;
    assert_eq!(tasks_of(&store, &s.id).len(), 3, "the third one");
    agent_converges(&store).await;
    round(&store, &s.id).await;
    let ts = tasks_of(&store, &s.id);
    assert_eq!(ts.len(), 3);
    assert!(ts.iter().all(|t| state(t) == TaskState::Complete));
}

#[tokio::test]
async fn removing_a_service_removes_its_tasks() {
    let s = service("web", replicated(2));
    let store = setup(vec![node("a", &[])], &s).await;
    round(&store, &s.id).await;
    agent_converges(&store).await;
    let id = s.id.clone();
    store.update(|tx| tx.remove::<Service>(&id)).await.unwrap();
    round(&store, &s.id).await;
    assert!(tasks_of(&store, &s.id)
        .iter()
        .all(|t| desired(t) == TaskState::Remove));
    agent_converges(&store).await;
    reap(&store).await.unwrap();
    assert!(tasks_of(&store, &s.id).is_empty());
}

#[tokio::test]
async fn updating_a_job_runs_it_again() {
    let s = service(
        "batch",
        Mode::ReplicatedJob(ReplicatedJob {
            max_concurrent: 2,
            total_completions: 2,
        }),
    );
    let store = setup(vec![node("a", &[])], &s).await;
    round(&store, &s.id).await;
    let first: Vec<String> = tasks_of(&store, &s.id).into_iter().map(|t| t.id).collect();
    assert_eq!(first.len(), 2);
    // updated while the first run is still at work: that run is stopped, a new one starts
    let mut spec = s.spec.clone().unwrap();
    spec.task.as_mut().unwrap().force_update += 1;
    crate::manager::control::update_service(
        &store,
        &s.id,
        0,
        crate::manager::control::Change::Spec(Box::new(spec.clone())),
        &no_registry(),
    )
    .await
    .unwrap();
    round(&store, &s.id).await;
    let ts = tasks_of(&store, &s.id);
    assert_eq!(ts.len(), 4, "two of the old run, two of the new");
    for t in &ts {
        if first.contains(&t.id) {
            assert_eq!(desired(t), TaskState::Shutdown, "old iteration is stopped");
        } else {
            assert_eq!((t.job_iteration, desired(t)), (1, TaskState::Complete));
        }
    }
    agent_converges(&store).await;
    round(&store, &s.id).await;
    // a job that has completed runs again on the next update
    spec.task.as_mut().unwrap().force_update += 1;
    crate::manager::control::update_service(
        &store,
        &s.id,
        0,
        crate::manager::control::Change::Spec(Box::new(spec)),
        &no_registry(),
    )
    .await
    .unwrap();
    round(&store, &s.id).await;
    let again: Vec<Task> = tasks_of(&store, &s.id)
        .into_iter()
        .filter(|t| t.job_iteration == 2)
        .collect();
    assert_eq!(again.len(), 2, "the completed job runs again");
}

/// No commit of the loops is bigger than a loop's worth, however big the service: ten
/// thousand tasks are made and placed in commits of at most `TX_BATCH_CHANGES` changes.
#[tokio::test]
async fn big_services_are_made_and_placed_in_bounded_commits() {
    let s = service("big", replicated(10_000));
    let store = setup((0..10).map(|i| node(&format!("n{i}"), &[])).collect(), &s).await;
    // (the channel holds 1024 events: far more than these commits)
    let mut events = store.watch();
    round(&store, &s.id).await;
    let tasks = tasks_of(&store, &s.id);
    assert_eq!(tasks.len(), 10_000);
    assert!(tasks.iter().all(|t| state(t) == TaskState::Assigned));
    let mut biggest = 0;
    while let Ok(e) = events.try_recv() {
        biggest = biggest.max(e.changes.len());
    }
    assert!(
        biggest <= crate::manager::store::TX_BATCH_CHANGES,
        "a commit of {biggest} changes"
    );
    assert!(biggest > 100, "the batches are full ones: {biggest}");
}

/// A task rejected before it ran (its image cannot be pulled) is tried again once per
/// restart delay, not as fast as its node refuses it.
#[tokio::test]
async fn rejected_tasks_are_retried_after_their_delay() {
    let mut s = service("nopull", replicated(1));
    s.spec.as_mut().unwrap().task.as_mut().unwrap().restart = Some(RestartPolicy {
        delay: Some(prost_types::Duration {
            seconds: 0,
            nanos: 300_000_000,
        }),
        ..Default::default()
    });
    let store = setup(vec![node("n1", &[])], &s).await;
    round(&store, &s.id).await;
    let t = tasks_of(&store, &s.id)[0].clone();
    set_state(&store, &t.id, TaskState::Rejected).await;
    let r = restart_dead(&store).await.unwrap();
    assert!(r.start_later.is_empty());
    let wait = r.check_again_in.expect("a retry is due later");
    assert!(
        wait > Duration::from_millis(200) && wait <= Duration::from_millis(300),
        "{wait:?}"
    );
    assert_eq!(tasks_of(&store, &s.id).len(), 1, "no replacement yet");
    round(&store, &s.id).await;
    assert_eq!(
        tasks_of(&store, &s.id).len(),
        1,
        "nor from the orchestrator"
    );
    tokio::time::sleep(wait).await;
    let r = restart_dead(&store).await.unwrap();
    assert!(r.check_again_in.is_none() && r.start_later.is_empty());
    let ts = tasks_of(&store, &s.id);
    assert_eq!(ts.len(), 2, "replaced once its delay passed");
    let repl = ts.iter().find(|x| x.id != t.id).unwrap();
    assert_eq!(desired(repl), TaskState::Running, "and it runs at once");
}

/// A replacement made ready for its restart delay is started when the delay has passed,
/// and not before, though its predecessor has stopped (the orchestrator once started it
/// at once); what is due is in the store, so a new leader with none of the old one's
/// timers starts it too.
#[tokio::test]
async fn a_replacement_waits_out_its_restart_delay_even_for_a_new_leader() {
    let mut s = service("web", replicated(1));
    s.spec.as_mut().unwrap().task.as_mut().unwrap().restart = Some(RestartPolicy {
        delay: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    });
    let store = setup(vec![node("n1", &[])], &s).await;
    round(&store, &s.id).await;
    agent_converges(&store).await;
    let t = tasks_of(&store, &s.id).remove(0);
    set_state(&store, &t.id, TaskState::Failed).await;
    let before = crate::manager::store::now_ms();
    let r = restart_dead(&store).await.unwrap();
    assert_eq!(r.check_again_in, Some(Duration::from_secs(5)));
    let id = r.start_later[0].0.clone();
    let repl = store.view(|x| x.tasks[&id].clone());
    assert!(
        repl.start_after_ms >= before + 5000,
        "{}",
        repl.start_after_ms
    );
    // the orchestrator and the agent go on; the predecessor has stopped
    round(&store, &s.id).await;
    agent_converges(&store).await;
    round(&store, &s.id).await;
    assert_eq!(
        desired(&store.view(|x| x.tasks[&id].clone())),
        TaskState::Ready,
        "not started within its delay"
    );
    let wait = start_due(&store, before).await.unwrap().unwrap();
    assert!(
        wait > Duration::from_millis(4900) && wait <= Duration::from_secs(5),
        "{wait:?}"
    );
    assert_eq!(
        desired(&store.view(|x| x.tasks[&id].clone())),
        TaskState::Ready
    );
    // due: started, as by a new leader's first pass
    assert_eq!(start_due(&store, repl.start_after_ms).await.unwrap(), None);
    assert_eq!(
        desired(&store.view(|x| x.tasks[&id].clone())),
        TaskState::Running
    );
}
