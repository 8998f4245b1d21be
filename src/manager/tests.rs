//! The manager loops on an in-memory store, with no Raft, no gRPC and no root: the
//! agent's part is played by setting task states directly.

use std::time::Duration;

use shoal_proto::service_spec::Mode;
use shoal_proto::*;

use super::orchestrator::reconcile;
use super::restart::{reap, restart_dead, start_ready};
use super::scheduler::{allocate_and_schedule, parse_constraint};
use super::store::{new_id, Store};
use super::tasks::{desired, state, status};

fn node(name: &str, labels: &[(&str, &str)]) -> Node {
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

fn service(name: &str, mode: Mode) -> Service {
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

fn replicated(n: u64) -> Mode {
    Mode::Replicated(ReplicatedService { replicas: n })
}

async fn setup(nodes: Vec<Node>, s: &Service) -> Store {
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
async fn round(store: &Store, service_id: &str) {
    reconcile(store, service_id).await.unwrap();
    while allocate_and_schedule(store).await.unwrap().1 {}
}

fn tasks_of(store: &Store, service_id: &str) -> Vec<Task> {
    store.view(|t| {
        t.tasks
            .values()
            .filter(|x| x.service_id == service_id)
            .cloned()
            .collect()
    })
}

/// Plays the agent: every assigned task heads to its desired state at once.
async fn agent_converges(store: &Store) {
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
                tx.update(t)?;
            }
            Ok(())
        })
        .await
        .unwrap();
}

async fn set_state(store: &Store, id: &str, s: TaskState) {
    let id = id.to_string();
    store
        .update(move |tx| {
            let mut t = tx.get::<Task>(&id).unwrap();
            t.status = Some(status(s, "test"));
            tx.update(t)
        })
        .await
        .unwrap();
}

fn running(ts: &[Task]) -> usize {
    ts.iter()
        .filter(|t| state(t) == TaskState::Running && desired(t) == TaskState::Running)
        .count()
}

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
        start_ready(&store, &repl.id).await.unwrap();
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
async fn scheduler_filters_spreads_and_explains() {
    let mut s = service("web", replicated(4));
    let store = setup(
        vec![
            node("a", &[("zone", "east")]),
            node("b", &[("zone", "west")]),
        ],
        &s,
    )
    .await;
    round(&store, &s.id).await;
    let ts = tasks_of(&store, &s.id);
    let on_a = ts
        .iter()
        .filter(|t| {
            store.view(|x| x.nodes[&t.node_id].description.clone().unwrap().hostname) == "a"
        })
        .count();
    assert_eq!(on_a, 2, "spread evenly over two nodes");

    s = service("east", replicated(2));
    s.spec.as_mut().unwrap().task.as_mut().unwrap().placement = Some(Placement {
        constraints: vec!["node.labels.zone==east".into()],
        max_replicas: 1,
        ..Default::default()
    });
    let id = s.id.clone();
    store.update(|tx| tx.create(s)).await.unwrap();
    round(&store, &id).await;
    let ts = tasks_of(&store, &id);
    let placed: Vec<&Task> = ts
        .iter()
        .filter(|t| state(t) == TaskState::Assigned)
        .collect();
    assert_eq!(
        placed.len(),
        1,
        "max one replica per node, one node matches"
    );
    let stuck = ts.iter().find(|t| state(t) == TaskState::Pending).unwrap();
    assert_eq!(
        stuck.status.as_ref().unwrap().err,
        "no suitable node (scheduling constraints not satisfied on 1 node; max replicas per node limit exceed on 1 node)"
    );

    let mut big = service("big", replicated(1));
    big.spec.as_mut().unwrap().task.as_mut().unwrap().resources = Some(ResourceRequirements {
        reservations: Some(Resources {
            memory_bytes: 2 << 30,
            nano_cpus: 0,
        }),
        ..Default::default()
    });
    let id = big.id.clone();
    store.update(|tx| tx.create(big)).await.unwrap();
    round(&store, &id).await;
    let t = &tasks_of(&store, &id)[0];
    assert_eq!(
        t.status.as_ref().unwrap().err,
        "no suitable node (insufficient resources on 2 nodes)"
    );

    assert!(parse_constraint("node.labels.zone==east").is_ok());
    assert!(parse_constraint("node.role==king")
        .unwrap_err()
        .contains("manager or worker"));
    assert!(parse_constraint("node.color==red")
        .unwrap_err()
        .contains("unknown key"));
    assert!(parse_constraint("zone=east")
        .unwrap_err()
        .contains("no == or !="));
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
    super::control::update_service(&store, &s.id, 0, spec.clone(), false)
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
    super::control::update_service(&store, &s.id, 0, spec, false)
        .await
        .unwrap();
    round(&store, &s.id).await;
    let again: Vec<Task> = tasks_of(&store, &s.id)
        .into_iter()
        .filter(|t| t.job_iteration == 2)
        .collect();
    assert_eq!(again.len(), 2, "the completed job runs again");
}

#[tokio::test]
async fn placement_preferences_spread_over_label_values_first() {
    // two nodes in east, one in west: spread=node.labels.zone puts half in each zone,
    // where plain spreading would put two thirds in east
    let mut s = service("web", replicated(4));
    s.spec.as_mut().unwrap().task.as_mut().unwrap().placement = Some(Placement {
        preferences: vec![PlacementPreference {
            spread_descriptor: "node.labels.zone".into(),
        }],
        ..Default::default()
    });
    let store = setup(
        vec![
            node("e1", &[("zone", "east")]),
            node("e2", &[("zone", "east")]),
            node("w1", &[("zone", "west")]),
        ],
        &s,
    )
    .await;
    round(&store, &s.id).await;
    let per_host = |host: &str| {
        tasks_of(&store, &s.id)
            .iter()
            .filter(|t| {
                store.view(|x| x.nodes[&t.node_id].description.clone().unwrap().hostname) == host
            })
            .count()
    };
    assert_eq!(per_host("w1"), 2, "west gets half");
    assert_eq!(
        (per_host("e1"), per_host("e2")),
        (1, 1),
        "east's half spread"
    );
    assert!(super::scheduler::parse_preference("spread=node.labels.zone").is_ok());
    assert!(super::scheduler::parse_preference("binpack=x")
        .unwrap_err()
        .contains("spread=node.labels.NAME"));
}

mod networks {
    use std::collections::BTreeSet;

    use super::*;
    use crate::manager::control::{create_service, update_service, ControlError};
    use crate::manager::network::{create_network, remove_network};

    pub(super) fn net(name: &str, subnet: &str) -> NetworkSpec {
        NetworkSpec {
            annotations: Some(Annotations {
                name: name.into(),
                ..Default::default()
            }),
            ipam: if subnet.is_empty() {
                vec![]
            } else {
                vec![IpamConfig {
                    subnet: subnet.into(),
                    ..Default::default()
                }]
            },
            ..Default::default()
        }
    }

    fn spec_on(name: &str, replicas: u64, nets: &[&str]) -> ServiceSpec {
        let mut s = service(name, replicated(replicas)).spec.unwrap();
        s.task.as_mut().unwrap().networks = nets
            .iter()
            .map(|n| NetworkAttachmentConfig {
                target: n.to_string(),
                aliases: vec![format!("{name}-alias")],
            })
            .collect();
        s
    }

    async fn store_with_nodes(n: usize) -> Store {
        let store = Store::in_memory();
        store
            .update(move |tx| {
                for i in 0..n {
                    tx.create(node(&format!("n{i}"), &[]))?;
                }
                Ok(())
            })
            .await
            .unwrap();
        store
    }

    /// The store with the ingress network, as init makes it.
    async fn with_ingress(store: Store) -> Store {
        store
            .update(|tx| {
                crate::manager::network::new_network(tx, crate::manager::network::ingress_spec())
                    .map_err(|e| crate::manager::store::StoreError::Invalid(e.to_string()))
            })
            .await
            .unwrap();
        store
    }

    fn refused(r: Result<impl std::fmt::Debug, ControlError>, why: &str) {
        let e = r.expect_err("refused").to_string();
        assert!(e.contains(why), "{e:?} should say {why:?}");
    }

    /// Every address held by a live task or a VIP, by network: none twice.
    fn assert_unique(store: &Store) {
        store.view(|t| {
            let mut seen = BTreeSet::new();
            for x in t.tasks.values().filter(|x| !state(x).is_terminal()) {
                for a in &x.networks {
                    for addr in &a.addresses {
                        assert!(
                            seen.insert((a.network_id.clone(), addr.clone())),
                            "{addr} twice"
                        );
                    }
                }
            }
            for s in t.services.values() {
                for v in s.endpoint.iter().flat_map(|e| &e.virtual_ips) {
                    assert!(
                        seen.insert((v.network_id.clone(), v.addr.clone())),
                        "VIP {} twice",
                        v.addr
                    );
                }
            }
        });
    }

    #[tokio::test]
    async fn networks_get_subnets_and_vnis_and_bad_ones_are_refused() {
        let store = store_with_nodes(0).await;
        let a = create_network(&store, net("a", "")).await.unwrap();
        let b = create_network(&store, net("b", "")).await.unwrap();
        assert_eq!(a.ipam[0].subnet, "10.0.0.0/24");
        assert_eq!(b.ipam[0].subnet, "10.0.1.0/24");
        assert_eq!(a.ipam[0].gateway, "10.0.0.1");
        assert_ne!(a.vni, b.vni);
        let big = create_network(&store, net("big", "10.20.0.0/16"))
            .await
            .unwrap();
        assert_eq!(big.ipam[0].subnet, "10.20.0.0/16");
        refused(
            create_network(&store, net("c", "10.20.4.0/24")).await,
            "overlaps network big",
        );
        refused(
            create_network(&store, net("a", "")).await,
            &format!("network name \"a\" is already in use by {}", a.id),
        );
        refused(
            create_network(&store, net("d", "10.30.0.5/24")).await,
            "did you mean 10.30.0.0/24",
        );
        let mut bridge = net("e", "");
        bridge.driver = "bridge".into();
        refused(
            create_network(&store, bridge).await,
            "overlay networks only",
        );
        let mut ingress = net("f", "");
        ingress.ingress = true;
        ingress.attachable = true;
        refused(
            create_network(&store, ingress).await,
            "the routing mesh's network cannot be --attachable",
        );
        // the next carved subnet skips what is taken
        let g = create_network(&store, net("g", "")).await.unwrap();
        assert_eq!(g.ipam[0].subnet, "10.0.2.0/24");
    }

    #[tokio::test]
    async fn tasks_and_vips_get_unique_addresses_that_come_back_when_tasks_go() {
        let store = store_with_nodes(3).await;
        create_network(&store, net("front", "10.5.0.0/24"))
            .await
            .unwrap();
        create_network(&store, net("back", "")).await.unwrap();
        let s = create_service(&store, spec_on("web", 4, &["front", "back"]))
            .await
            .unwrap();
        round(&store, &s.id).await;
        let s = store.view(|t| t.services[&s.id].clone());
        let vips = &s.endpoint.as_ref().unwrap().virtual_ips;
        assert_eq!(vips.len(), 2, "a VIP per network");
        let tasks = tasks_of(&store, &s.id);
        assert_eq!(tasks.len(), 4);
        for t in &tasks {
            assert_eq!(state(t), TaskState::Assigned, "{:?}", t.status);
            assert_eq!(t.networks.len(), 2);
            let front = t
                .networks
                .iter()
                .find(|a| a.addresses[0].starts_with("10.5.0."))
                .unwrap();
            assert!(front.addresses[0].ends_with("/24"));
            assert_eq!(front.aliases, ["web-alias"]);
        }
        assert_unique(&store);
        // scale down: the stopped tasks' addresses return; scale up: no address twice
        let cur = store.view(|t| t.services[&s.id].clone());
        let mut spec = cur.spec.clone().unwrap();
        spec.mode = Some(replicated(1));
        update_service(&store, &s.id, 0, spec.clone(), false)
            .await
            .unwrap();
        round(&store, &s.id).await;
        agent_converges(&store).await;
        spec.mode = Some(replicated(6));
        update_service(&store, &s.id, 0, spec, false).await.unwrap();
        round(&store, &s.id).await;
        assert_unique(&store);
        let live = tasks_of(&store, &s.id)
            .into_iter()
            .filter(|t| !state(t).is_terminal() && desired(t) == TaskState::Running)
            .count();
        assert_eq!(live, 6);
        // the network is in use
        refused(
            remove_network(&store, "front").await,
            "in use by service(s) web",
        );
    }

    #[tokio::test]
    async fn running_out_of_addresses_shows_in_the_task_and_resumes_when_freed() {
        let store = store_with_nodes(2).await;
        // a /29: .1 gateway, .2-.6 usable: five addresses
        create_network(&store, net("tiny", "10.9.0.0/29"))
            .await
            .unwrap();
        // another service holds three of them (its VIP and two tasks)
        let hog = create_service(&store, spec_on("hog", 2, &["tiny"]))
            .await
            .unwrap();
        round(&store, &hog.id).await;
        agent_converges(&store).await;
        // so of this one's four tasks, after its VIP, one gets an address
        let s = create_service(&store, spec_on("many", 4, &["tiny"]))
            .await
            .unwrap();
        round(&store, &s.id).await;
        let stuck: Vec<Task> = tasks_of(&store, &s.id)
            .into_iter()
            .filter(|t| state(t) == TaskState::New)
            .collect();
        assert_eq!(stuck.len(), 3, "three tasks without an address");
        let err = &stuck[0].status.as_ref().unwrap().err;
        assert!(
            err.contains("network tiny") && err.contains("all in use"),
            "{err}"
        );
        assert_unique(&store);
        // the other service goes: what it held goes back, and the waiting tasks (the
        // same ones) get it; nothing is handed out twice
        crate::manager::control::remove_service(&store, "hog")
            .await
            .unwrap();
        round(&store, &hog.id).await;
        agent_converges(&store).await;
        round(&store, &s.id).await;
        agent_converges(&store).await;
        assert_unique(&store);
        let live: Vec<Task> = tasks_of(&store, &s.id)
            .into_iter()
            .filter(|t| desired(t) == TaskState::Running && !state(t).is_terminal())
            .collect();
        assert_eq!(live.len(), 4);
        for t in &live {
            assert_ne!(state(t), TaskState::New, "{:?}", t.status);
            assert_eq!(t.networks.len(), 1);
            assert_eq!(t.networks[0].addresses.len(), 1);
        }
        for t in &stuck {
            assert!(
                live.iter().any(|l| l.id == t.id),
                "waiting task {} itself resumed",
                t.id
            );
        }
    }

    #[tokio::test]
    async fn published_ports_are_checked_and_dynamic_ones_allocated() {
        let store = with_ingress(store_with_nodes(1).await).await;
        let port = |published: u32, target: u32| PortConfig {
            published_port: published,
            target_port: target,
            ..Default::default()
        };
        let mut a = spec_on("a", 1, &[]);
        a.endpoint = Some(EndpointSpec {
            ports: vec![port(8080, 80), port(0, 81)],
            ..Default::default()
        });
        let a = create_service(&store, a).await.unwrap();
        round(&store, &a.id).await;
        let a = store.view(|t| t.services[&a.id].clone());
        let e = a.endpoint.clone().unwrap();
        assert_eq!(e.ports[0].published_port, 8080);
        assert!(
            (30000..=32767).contains(&e.ports[1].published_port),
            "{:?}",
            e.ports
        );
        assert_eq!(e.virtual_ips.len(), 1, "a VIP on ingress");
        let t = &tasks_of(&store, &a.id)[0];
        assert_eq!(
            t.networks.len(),
            1,
            "the task is on ingress: {:?}",
            t.networks
        );
        let mut b = spec_on("b", 1, &[]);
        b.endpoint = Some(EndpointSpec {
            ports: vec![port(8080, 80)],
            ..Default::default()
        });
        refused(
            create_service(&store, b.clone()).await,
            "already published by service a",
        );
        b.endpoint.as_mut().unwrap().mode = endpoint_spec::ResolutionMode::Dnsrr as i32;
        b.endpoint.as_mut().unwrap().ports[0].published_port = 9090;
        refused(create_service(&store, b).await, "dnsrr");
        refused(
            create_service(&store, spec_on("c", 1, &["ingress"])).await,
            "routing mesh",
        );
        refused(
            create_service(&store, spec_on("d", 1, &["nope"])).await,
            "no such network",
        );
        let mut h = spec_on("h", 1, &[]);
        h.endpoint = Some(EndpointSpec {
            ports: vec![PortConfig {
                publish_mode: port_config::PublishMode::Host as i32,
                ..port(0, 80)
            }],
            ..Default::default()
        });
        refused(
            create_service(&store, h.clone()).await,
            "mode=host needs a published port",
        );
        // a host-mode port may not take a port of the routing mesh (it answers on
        // every node)
        h.endpoint.as_mut().unwrap().ports[0].published_port = 8080;
        refused(
            create_service(&store, h).await,
            "already published by service a",
        );
        // the routing mesh is not taken from under a published port
        refused(
            remove_network(&store, "ingress").await,
            "network ingress is in use by service(s) a",
        );
        assert!(
            store.view(|t| t
                .networks
                .values()
                .any(|n| crate::manager::store::StoreItem::name(n) == "ingress")),
            "ingress kept"
        );
    }

    #[tokio::test]
    async fn host_mode_ports_take_one_task_per_node_and_say_why_when_full() {
        let store = with_ingress(store_with_nodes(2).await).await;
        let host = |name: &str, replicas: u64| {
            let mut h = spec_on(name, replicas, &[]);
            h.endpoint = Some(EndpointSpec {
                ports: vec![PortConfig {
                    publish_mode: port_config::PublishMode::Host as i32,
                    published_port: 9191,
                    target_port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            });
            h
        };
        let h = create_service(&store, host("h", 3)).await.unwrap();
        round(&store, &h.id).await;
        let ts = tasks_of(&store, &h.id);
        let nodes: BTreeSet<&str> = ts
            .iter()
            .filter(|t| state(t) == TaskState::Assigned)
            .map(|t| t.node_id.as_str())
            .collect();
        assert_eq!(nodes.len(), 2, "one task per node: {ts:?}");
        let stuck: Vec<&Task> = ts
            .iter()
            .filter(|t| state(t) == TaskState::Pending)
            .collect();
        assert_eq!(stuck.len(), 1);
        assert_eq!(
            stuck[0].status.as_ref().unwrap().err,
            "no suitable node (host-mode port already in use on 2 nodes)"
        );
        for t in &ts {
            assert_eq!(t.networks.len(), 1, "reached through ingress: {t:?}");
        }
        // another service may publish the same port in host mode: the nodes are full
        let g = create_service(&store, host("g", 1)).await.unwrap();
        round(&store, &g.id).await;
        let t = &tasks_of(&store, &g.id)[0];
        assert_eq!(state(t), TaskState::Pending);
        // once a task of h ends, its port is free for the waiting ones
        let first = ts
            .iter()
            .find(|t| state(t) == TaskState::Assigned)
            .unwrap()
            .id
            .clone();
        set_state(&store, &first, TaskState::Failed).await;
        round(&store, &h.id).await;
        let placed = store.view(|x| {
            x.tasks
                .values()
                .filter(|t| t.id != first && state(t) == TaskState::Assigned)
                .count()
        });
        assert_eq!(placed, 2, "one waiting task took the freed port");
    }

    #[tokio::test]
    async fn standalone_containers_attach_to_attachable_networks_only() {
        use crate::manager::network::{attach_container, detach_container};
        let store = store_with_nodes(1).await;
        // a drained node: its containers still get their attachments
        let node_id = store.view(|t| t.nodes.keys().next().unwrap().clone());
        store
            .update(|tx| {
                let mut n = tx.get::<Node>(&node_id).unwrap();
                n.spec.as_mut().unwrap().availability = NodeAvailability::Drain as i32;
                tx.update(n)
            })
            .await
            .unwrap();
        create_network(&store, net("plain", "")).await.unwrap();
        let mut att = net("att", "");
        att.attachable = true;
        create_network(&store, att).await.unwrap();
        let on = |n: &str| {
            vec![NetworkAttachmentConfig {
                target: n.into(),
                aliases: vec!["al".into()],
            }]
        };
        refused(
            attach_container(&store, &node_id, "c1".into(), on("plain")).await,
            "only attachable networks",
        );
        refused(
            attach_container(&store, &node_id, "c1".into(), on("nope")).await,
            "no such network",
        );
        let id = attach_container(&store, &node_id, "c1".into(), on("att"))
            .await
            .unwrap();
        // the orchestrator leaves it alone (no service), the allocator and scheduler
        // give it an address on its node
        reconcile(&store, "").await.unwrap();
        allocate_and_schedule(&store).await.unwrap();
        let t = store.view(|x| x.tasks[&id].clone());
        assert_eq!(state(&t), TaskState::Assigned, "{:?}", t.status);
        assert_eq!(desired(&t), TaskState::Running);
        assert_eq!(t.node_id, node_id);
        assert_eq!(t.networks.len(), 1);
        assert_eq!(t.networks[0].aliases, vec!["al".to_string()]);
        assert_unique(&store);
        // only its node may let it go
        refused(
            detach_container(&store, "another-node", &id).await,
            "not found",
        );
        // a retried attach finds the one it made
        assert_eq!(
            attach_container(&store, &node_id, "c1".into(), on("att"))
                .await
                .unwrap(),
            id
        );
        detach_container(&store, &node_id, &id).await.unwrap();
        assert!(store.view(|x| !x.tasks.contains_key(&id)));
        // and a retried detach is fine
        detach_container(&store, &node_id, &id).await.unwrap();
    }
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
        biggest <= super::store::TX_BATCH_CHANGES,
        "a commit of {biggest} changes"
    );
    assert!(biggest > 100, "the batches are full ones: {biggest}");
}

/// What a service asks is bounded before anything is committed; and a service committed
/// past the bounds (by an older version) makes no tasks and can be fixed.
#[tokio::test]
async fn impossible_services_are_refused_and_survived() {
    let store = Store::in_memory();
    let mut huge = service("huge", replicated(1_000_000_000_000)).spec.unwrap();
    let e = super::control::create_service(&store, huge.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--replicas: 1000000000000 is above the limit of 10000"),
        "{e}"
    );
    let mut fat = service("fat", replicated(1)).spec.unwrap();
    fat.task.as_mut().unwrap().container.as_mut().unwrap().env = (0..15)
        .map(|i| format!("V{i}={}", "x".repeat(100_000)))
        .collect();
    let e = super::control::create_service(&store, fat)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("above the limit of 128 KiB"), "{e}");
    assert!(store.view(|t| t.services.is_empty() && t.tasks.is_empty()));

    // as an older version left it: committed, with no task yet
    let s = Service {
        id: new_id(),
        spec: Some(huge.clone()),
        spec_version: 1,
        ..Default::default()
    };
    let id = s.id.clone();
    store.update(|tx| tx.create(s)).await.unwrap();
    reconcile(&store, &id).await.unwrap();
    assert!(store.view(|t| t.tasks.is_empty()), "no task for it");
    // an update (`service scale huge=1000000000000`) is refused the same way
    let e = super::control::update_service(&store, &id, 0, huge.clone(), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("above the limit of 10000"), "{e}");
    assert_eq!(store.view(|t| t.services[&id].spec_version), 1);
    // `service scale huge=3`
    huge.mode = Some(replicated(3));
    super::control::update_service(&store, &id, 0, huge, false)
        .await
        .unwrap();
    reconcile(&store, &id).await.unwrap();
    assert_eq!(tasks_of(&store, &id).len(), 3);
}

/// An object, and a change, are bounded in bytes before anything is proposed, whatever
/// the call (node labels have no limit of their own): the Raft entry must reach every
/// manager in one message.
#[tokio::test]
async fn objects_and_changes_too_big_are_refused_naming_the_limit() {
    use super::store::{MAX_OBJECT_BYTES, MAX_TX_BYTES};
    let (a, b) = (node("a", &[]), node("b", &[]));
    let store = setup(vec![a.clone(), b.clone()], &service("ok", replicated(1))).await;
    let with_label = |n: &Node, bytes: usize| {
        let mut spec = n.spec.clone().unwrap();
        let labels = &mut spec.annotations.as_mut().unwrap().labels;
        labels.insert("big".into(), "x".repeat(bytes));
        spec
    };
    let e = super::control::update_node(&store, &a.id, 0, with_label(&a, MAX_OBJECT_BYTES))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("node {}", a.id))
            && e.contains(&format!("above the limit of {MAX_OBJECT_BYTES} bytes")),
        "{e}"
    );
    // two objects each within the bound, together above a change's
    let half = MAX_TX_BYTES / 2;
    let e = store
        .update(|tx| {
            for n in [&a, &b] {
                let mut n = tx.get::<Node>(&n.id).unwrap();
                n.spec = Some(with_label(&n, half));
                tx.update(n)?;
            }
            Ok(())
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a change of 2 objects")
            && e.contains(&format!("above the limit of {MAX_TX_BYTES} bytes")),
        "{e}"
    );
    store.view(|t| {
        for n in t.nodes.values() {
            let labels = &n
                .spec
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()
                .labels;
            assert!(labels.is_empty(), "nothing kept: {}", n.id);
        }
    });
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

/// What only a node would have refused (so the task failed and was retried forever) is
/// refused at create, naming the field; so are renames, empty names and empty cluster
/// specs. Nothing refused is kept.
#[tokio::test]
async fn values_a_node_would_refuse_are_refused_by_the_managers() {
    use super::control::{create_service, find, update_cluster, update_service};
    let mut n1 = node("n1", &[]);
    n1.status.as_mut().unwrap().addr = "10.77.0.5:2377".into();
    let ok = service("ok", replicated(1));
    let store = setup(vec![n1], &ok).await;
    type Change = Box<dyn Fn(&mut ServiceSpec)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "image: invalid image reference",
            Box::new(|s| container(s).image = "busybox@sha256:garbage".into()),
        ),
        (
            "image: invalid image reference",
            Box::new(|s| container(s).image = "BusyBox".into()),
        ),
        (
            "limit_memory: 1 bytes is below the minimum of 6MiB",
            Box::new(|s| limits(s).memory_bytes = 1),
        ),
        ("limit_cpu", Box::new(|s| limits(s).nano_cpus = i64::MAX)),
        (
            "--reserve-cpu",
            Box::new(|s| {
                let r = s
                    .task
                    .as_mut()
                    .unwrap()
                    .resources
                    .get_or_insert_with(Default::default);
                r.reservations = Some(Resources {
                    nano_cpus: i64::MAX,
                    memory_bytes: 0,
                });
            }),
        ),
        (
            "unknown capability \"FLY\"",
            Box::new(|s| container(s).cap_add = vec!["FLY".into()]),
        ),
        (
            "\"SIGNOPE\" is not a signal name",
            Box::new(|s| container(s).stop_signal = "SIGNOPE".into()),
        ),
        (
            "user: \"99999999999\"",
            Box::new(|s| container(s).user = "99999999999".into()),
        ),
        (
            "hostname: \"web\\n1\" is not a valid hostname",
            Box::new(|s| container(s).hostname = "web\n1".into()),
        ),
        (
            "--stop-grace-period: -5s0ns is not a duration",
            Box::new(|s| {
                container(s).stop_grace_period = Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                })
            }),
        ),
        (
            "health_interval: 1ns is below the minimum",
            Box::new(|s| {
                container(s).healthcheck = Some(HealthConfig {
                    test: vec!["CMD".into(), "true".into()],
                    interval: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 1,
                    }),
                    ..Default::default()
                })
            }),
        ),
        (
            "--label: label \"kkkk",
            Box::new(|s| {
                s.annotations
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("k".repeat(5000), "v".into());
            }),
        ),
        (
            "is in the container's /proc",
            Box::new(|s| {
                container(s).mounts = vec![shoal_proto::Mount {
                    r#type: mount::Type::Bind as i32,
                    source: "/proc".into(),
                    target: "/proc".into(),
                    ..Default::default()
                }]
            }),
        ),
    ];
    fn container(s: &mut ServiceSpec) -> &mut ContainerSpec {
        s.task.as_mut().unwrap().container.as_mut().unwrap()
    }
    fn limits(s: &mut ServiceSpec) -> &mut Resources {
        s.task
            .as_mut()
            .unwrap()
            .resources
            .get_or_insert_with(Default::default)
            .limits
            .get_or_insert_with(Default::default)
    }
    for (says, change) in &cases {
        let mut spec = service("bad", replicated(1)).spec.unwrap();
        change(&mut spec);
        let e = create_service(&store, spec.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "expected {says:?} in {e:?}");
        // and the same change to a service that exists
        let mut upd = ok.spec.clone().unwrap();
        change(&mut upd);
        let e = update_service(&store, "ok", 0, upd, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "update: expected {says:?} in {e:?}");
    }
    assert_eq!(
        store.view(|t| t.services.len()),
        1,
        "nothing refused was kept"
    );
    // a rename (Swarm refuses it too)
    let mut renamed = ok.spec.clone().unwrap();
    renamed.annotations.as_mut().unwrap().name = "other".into();
    let e = update_service(&store, "ok", 0, renamed, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot be renamed"), "{e}");
    // empty and blank names match nothing (as a prefix, "" matched every ID)
    for blank in ["", " "] {
        let e = store
            .view(|t| find(&t.services, blank))
            .unwrap_err()
            .to_string();
        assert!(e.contains("it is empty"), "{e}");
        let e = super::control::remove_service(&store, blank)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("it is empty"), "{e}");
        let e = super::network::remove_network(&store, blank)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("it is empty"), "{e}");
    }
    assert_eq!(store.view(|t| t.services.len()), 1);
    // an empty cluster spec is a client's mistake, not a wish to forget the swarm
    let c = super::ca::new_cluster(
        &crate::tls::RootCa::generate().unwrap(),
        crate::tls::DEFAULT_CERT_EXPIRY,
    );
    store.update(|tx| tx.create(c)).await.unwrap();
    let e = update_cluster(&store, 0, ClusterSpec::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the cluster spec is empty"), "{e}");
    let name = store.view(|t| t.clusters.values().next().unwrap().spec.clone().unwrap());
    assert_eq!(
        name.annotations.unwrap().name,
        "default",
        "the spec is as it was"
    );
}

/// Subnets an overlay must not have: the kernel's special ranges, shoal's own uplinks,
/// and the hosts' own network; the pool's blocks keep clear of the hosts' addresses.
/// The routing mesh's network can be made again once removed, once.
#[tokio::test]
async fn overlays_keep_off_special_ranges_and_the_hosts_network() {
    use super::network::{create_network, remove_network};
    let mut n1 = node("n1", &[]);
    n1.status.as_mut().unwrap().addr = "10.0.0.5:2377".into();
    let store = Store::in_memory();
    let c = super::ca::new_cluster(
        &crate::tls::RootCa::generate().unwrap(),
        crate::tls::DEFAULT_CERT_EXPIRY,
    );
    store
        .update(|tx| {
            tx.create(c)?;
            tx.create(n1)
        })
        .await
        .unwrap();
    let net = networks::net;
    for (subnet, says) in [
        ("127.0.0.0/24", "loopback"),
        ("224.1.0.0/16", "multicast"),
        ("198.19.0.0/24", "shoal's own uplinks"),
        ("0.0.0.0/0", "overlaps"),
        ("10.0.0.0/24", "holds node n1's own address 10.0.0.5"),
    ] {
        let e = create_network(&store, net("bad", subnet))
            .await
            .unwrap_err();
        assert!(e.to_string().contains(says), "{subnet}: {e}");
    }
    // the pool's first block (10.0.0.0/24) holds the node: the next one is taken
    let a = create_network(&store, net("a", "")).await.unwrap();
    assert_eq!(a.ipam[0].subnet, "10.0.1.0/24");
    let e = super::network::check_pools(&["127.0.0.0/8".into()], 24).unwrap_err();
    assert!(e.contains("loopback"), "{e}");
    // ingress: made again with --ingress, one at a time
    let mut ing = net("mesh", "");
    ing.ingress = true;
    create_network(&store, ing.clone()).await.unwrap();
    let e = create_network(&store, {
        let mut again = ing.clone();
        again.annotations.as_mut().unwrap().name = "mesh2".into();
        again
    })
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("has an ingress network already (mesh)"),
        "{e}"
    );
    remove_network(&store, "mesh").await.unwrap();
    create_network(&store, ing).await.unwrap();
}
