//! What the managers refuse before anything is committed, each naming its field: values
//! a node would refuse, services past the limits, objects and changes too big.

use super::*;

/// What a service asks is bounded before anything is committed; and a service committed
/// past the bounds (by an older version) makes no tasks and can be fixed.
#[tokio::test]
async fn impossible_services_are_refused_and_survived() {
    let store = Store::in_memory();
    let mut huge = service("huge", replicated(1_000_000_000_000)).spec.unwrap();
    let e = crate::manager::control::create_service(&store, huge.clone(), &no_registry())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("replicated.replicas: 1000000000000 is above the limit of 10000"),
        "{e}"
    );
    let mut fat = service("fat", replicated(1)).spec.unwrap();
    fat.task.as_mut().unwrap().container.as_mut().unwrap().env = (0..15)
        .map(|i| format!("V{i}={}", "x".repeat(100_000)))
        .collect();
    let e = crate::manager::control::create_service(&store, fat, &no_registry())
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
    let e = crate::manager::control::update_service(
        &store,
        &id,
        0,
        crate::manager::control::Change::Spec(Box::new(huge.clone())),
        &no_registry(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("above the limit of 10000"), "{e}");
    assert_eq!(store.view(|t| t.services[&id].spec_version), 1);
    // `service scale huge=3`
    huge.mode = Some(replicated(3));
    crate::manager::control::update_service(
        &store,
        &id,
        0,
        crate::manager::control::Change::Spec(Box::new(huge)),
        &no_registry(),
    )
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
    use crate::manager::store::{MAX_OBJECT_BYTES, MAX_TX_BYTES};
    let (a, b) = (node("a", &[]), node("b", &[]));
    let store = setup(vec![a.clone(), b.clone()], &service("ok", replicated(1))).await;
    let with_label = |n: &Node, bytes: usize| {
        let mut spec = n.spec.clone().unwrap();
        let labels = &mut spec.annotations.as_mut().unwrap().labels;
        labels.insert("big".into(), "x".repeat(bytes));
        spec
    };
    let e =
        crate::manager::control::update_node(&store, &a.id, 0, with_label(&a, MAX_OBJECT_BYTES))
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

/// What only a node would have refused (so the task failed and was retried forever) is
/// refused at create, naming the field; so are renames, empty names and empty cluster
/// specs. Nothing refused is kept.
#[tokio::test]
async fn values_a_node_would_refuse_are_refused_by_the_managers() {
    use crate::manager::control::{create_service, update_cluster, update_service};
    use crate::manager::error::find;
    let mut n1 = node("n1", &[]);
    n1.status.as_mut().unwrap().addr = "10.77.0.5:2377".into();
    let ok = service("ok", replicated(1));
    let store = setup(vec![n1], &ok).await;
    type Change = Box<dyn Fn(&mut ServiceSpec)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "task.container.image: invalid image reference",
            Box::new(|s| container(s).image = "busybox@sha256:garbage".into()),
        ),
        (
            "task.container.image: invalid image reference",
            Box::new(|s| container(s).image = "BusyBox".into()),
        ),
        (
            "task.resources.limits.memory_bytes: 1 bytes is below the minimum of 6MiB",
            Box::new(|s| limits(s).memory_bytes = 1),
        ),
        (
            "task.resources.limits.nano_cpus",
            Box::new(|s| limits(s).nano_cpus = i64::MAX),
        ),
        (
            "task.resources.reservations.nano_cpus",
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
            "task.container.user: \"99999999999\"",
            Box::new(|s| container(s).user = "99999999999".into()),
        ),
        (
            "task.container.hostname: \"web\\n1\" is not a valid hostname",
            Box::new(|s| container(s).hostname = "web\n1".into()),
        ),
        (
            "task.container.stop_grace_period: -5s0ns is not a duration",
            Box::new(|s| {
                container(s).stop_grace_period = Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                })
            }),
        ),
        (
            "task.container.healthcheck.interval: 1ns is below the minimum",
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
            "annotations.labels: label \"kkkk",
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
        let e = create_service(&store, spec.clone(), &no_registry())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "expected {says:?} in {e:?}");
        // and the same change to a service that exists
        let mut upd = ok.spec.clone().unwrap();
        change(&mut upd);
        let e = update_service(
            &store,
            "ok",
            0,
            crate::manager::control::Change::Spec(Box::new(upd)),
            &no_registry(),
        )
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
    let e = update_service(
        &store,
        "ok",
        0,
        crate::manager::control::Change::Spec(Box::new(renamed)),
        &no_registry(),
    )
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
        let e = crate::manager::control::remove_service(&store, blank)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("it is empty"), "{e}");
        let e = crate::manager::network::remove_network(&store, blank)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("it is empty"), "{e}");
    }
    assert_eq!(store.view(|t| t.services.len()), 1);
    // an empty cluster spec is a client's mistake, not a wish to forget the swarm
    let c = crate::manager::ca::new_cluster(
        &crate::tls::RootCa::generate().unwrap(),
        crate::tls::DEFAULT_CERT_EXPIRY,
    );
    store.update(|tx| tx.create(c)).await.unwrap();
    let e = update_cluster(&store, 0, ClusterSpec::default(), false)
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
