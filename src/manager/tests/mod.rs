//! The manager loops on an in-memory store, with no Raft, no gRPC and no root: the
//! agent's part is played by setting task states directly.

pub(super) use std::time::Duration;

pub(super) use shoal_proto::service_spec::Mode;
pub(super) use shoal_proto::*;

pub(super) use super::orchestrator::reaper::reap;
pub(super) use super::orchestrator::reconcile;
pub(super) use super::orchestrator::restart::{restart_dead, start_due};
pub(super) use super::scheduler::allocate_and_schedule;
pub(super) use super::store::{new_id, Store};
pub(super) use super::tasks::{desired, state, status};

/// What a create or an update is given here: no registry is asked.
pub(super) fn no_registry() -> super::images::ImageOptions {
    super::images::ImageOptions::none()
}

pub(super) fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        id: new_id(),
        spec: Some(NodeSpec {
            annotations: Some(Annotations {
                name: String::new(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: name.into(),
            platform: Some(Platform {
                architecture: "x86_64".into(),
                os: "linux".into(),
            }),
            resources: Some(Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn service(name: &str, mode: Mode) -> Service {
    Service {
        id: new_id(),
        spec: Some(ServiceSpec {
            annotations: Some(Annotations {
                name: name.into(),
                ..Default::default()
            }),
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(mode),
            ..Default::default()
        }),
        spec_version: 1,
        ..Default::default()
    }
}

pub(super) fn replicated(n: u64) -> Mode {
    Mode::Replicated(ReplicatedService { replicas: n })
}

pub(super) async fn setup(nodes: Vec<Node>, s: &Service) -> Store {
    let store = Store::in_memory();
    let s = s.clone();
    store
        .update(move |tx| {
            for n in nodes {
                tx.create(n)?;
            }
            tx.create(s)
        })
        .await
        .unwrap();
    store
}

/// One round of the manager's loops, as their events would trigger them.
pub(super) async fn round(store: &Store, service_id: &str) {
    reconcile(store, service_id).await.unwrap();
    update_at(store, service_id, super::store::now_ms()).await;
    while allocate_and_schedule(store).await.unwrap().1 {}
}

/// The update supervisor's pass over one service, as if it were `now` (ms); returns
/// when it asks to be woken.
pub(super) async fn update_at(store: &Store, service_id: &str, now: i64) -> Option<i64> {
    let id = service_id.to_string();
    store
        .update(move |tx| super::orchestrator::update::update_in(tx, &id, now))
        .await
        .unwrap()
}

pub(super) fn tasks_of(store: &Store, service_id: &str) -> Vec<Task> {
    store.view(|t| {
        t.tasks
            .values()
            .filter(|x| x.service_id == service_id)
            .cloned()
            .collect()
    })
}

/// Plays the agent: every assigned task heads to its desired state at once.
pub(super) async fn agent_converges(store: &Store) {
    store
        .update(|tx| {
            for mut t in tx.list::<Task>() {
                let (cur, want) = (state(&t), desired(&t));
                let next = if cur.is_terminal() || (cur as i32) < TaskState::Assigned as i32 {
                    continue;
                } else if want == TaskState::Running && cur != TaskState::Running {
                    TaskState::Running
                } else if want == TaskState::Complete {
                    TaskState::Complete
                } else if matches!(want, TaskState::Shutdown | TaskState::Remove) {
                    TaskState::Shutdown
                } else if want == TaskState::Ready && (cur as i32) < TaskState::Ready as i32 {
                    TaskState::Ready
                } else {
                    continue;
                };
                t.status = Some(status(next, "agent"));
                super::lifecycle::stamp(&mut t, super::store::now_ms());
                tx.update(t)?;
            }
            Ok(())
        })
        .await
        .unwrap();
}

pub(super) async fn set_state(store: &Store, id: &str, s: TaskState) {
    let id = id.to_string();
    store
        .update(move |tx| {
            let mut t = tx.get::<Task>(&id).unwrap();
            t.status = Some(status(s, "test"));
            super::lifecycle::stamp(&mut t, super::store::now_ms());
            tx.update(t)
        })
        .await
        .unwrap();
}

pub(super) fn running(ts: &[Task]) -> usize {
    ts.iter()
        .filter(|t| state(t) == TaskState::Running && desired(t) == TaskState::Running)
        .count()
}

mod files;
mod networks;
mod orchestrators;
mod refusals;
mod scheduling;
mod updates;
