//! The store on its own: transactions, versions, names, indexes and snapshots.

use super::*;
use shoal_proto::{Annotations, ServiceSpec};

fn service(id: &str, name: &str) -> Service {
    Service {
        id: id.into(),
        spec: Some(ServiceSpec {
            annotations: Some(Annotations {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn transactions_commit_together_and_watchers_see_them() {
    let s = Store::in_memory();
    let mut rx = s.watch();
    s.update(|tx| {
        tx.create(service("a", "web"))?;
        tx.create(Task {
            id: "t1".into(),
            service_id: "a".into(),
            ..Default::default()
        })?;
        assert_eq!(
            tx.list::<Task>().len(),
            1,
            "a transaction reads its own writes"
        );
        Ok(())
    })
    .await
    .unwrap();
    let e = rx.recv().await.unwrap();
    assert_eq!(e.index, 1);
    assert!(matches!(
        &e.changes[..],
        [
            Change { kind: ActionKind::Create, object: a, .. },
            Change { kind: ActionKind::Create, object: b, .. },
        ] if matches!(**a, Object::Service(_)) && matches!(**b, Object::Task(_))
    ));
    let v = s.view(|t| t.services["a"].meta.unwrap().version);
    assert_eq!(v, 1);
}

#[tokio::test]
async fn stale_updates_and_duplicate_names_are_refused_whole() {
    let s = Store::in_memory();
    s.update(|tx| tx.create(service("a", "web"))).await.unwrap();
    let stale = s.view(|t| t.services["a"].clone());
    let mut fresh = stale.clone();
    fresh
        .spec
        .as_mut()
        .unwrap()
        .annotations
        .as_mut()
        .unwrap()
        .labels
        .insert("x".into(), "1".into());
    s.update(|tx| tx.update(fresh)).await.unwrap();
    let err = s
        .update(|tx| {
            tx.create(Task {
                id: "t9".into(),
                ..Default::default()
            })?;
            tx.update(stale)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(
        s.view(|t| t.tasks.is_empty()),
        "nothing of a refused batch is applied"
    );
    let err = s
        .update(|tx| tx.create(service("b", "web")))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "service name \"web\" is already in use by a"
    );
    let err = s
        .update(|tx| tx.remove::<Service>("zzz"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "service zzz not found");
}

#[tokio::test]
async fn several_changes_of_one_object_in_a_transaction_fold() {
    let s = Store::in_memory();
    s.update(|tx| {
        tx.create(Task {
            id: "t".into(),
            ..Default::default()
        })
    })
    .await
    .unwrap();
    s.update(|tx| {
        for slot in 1..=3 {
            let mut t = tx.get::<Task>("t").unwrap();
            t.slot = slot;
            tx.update(t)?;
        }
        tx.create(Task {
            id: "u".into(),
            ..Default::default()
        })?;
        tx.remove::<Task>("u")
    })
    .await
    .unwrap();
    assert_eq!(s.view(|t| t.tasks["t"].slot), 3);
    assert!(s.view(|t| !t.tasks.contains_key("u")));
}

#[tokio::test]
async fn tasks_by_service_and_node_follow_every_change() {
    let s = Store::in_memory();
    let task = |id: &str, service: &str, node: &str| Task {
        id: id.into(),
        service_id: service.into(),
        node_id: node.into(),
        ..Default::default()
    };
    s.update(|tx| {
        tx.create(task("t1", "a", "n1"))?;
        tx.create(task("t2", "a", ""))?;
        tx.create(task("t3", "b", "n1"))
    })
    .await
    .unwrap();
    let ids = |v: Vec<Task>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    s.update(|tx| {
        // the transaction's own changes count: t2 placed, t3 gone, t4 new
        let mut t2 = tx.get::<Task>("t2").unwrap();
        t2.node_id = "n1".into();
        tx.update(t2)?;
        tx.remove::<Task>("t3")?;
        tx.create(task("t4", "a", "n2"))?;
        assert_eq!(ids(tx.tasks_of("a", false)), ["t1", "t2", "t4"]);
        assert_eq!(ids(tx.tasks_of("n1", true)), ["t1", "t2"]);
        assert_eq!(ids(tx.tasks_of("b", false)), Vec::<String>::new());
        Ok(())
    })
    .await
    .unwrap();
    let committed = |f: fn(&Tables) -> Vec<String>| s.view(f);
    assert_eq!(
        committed(|t| t.tasks_on_node("n1").map(|x| x.id.clone()).collect()),
        ["t1", "t2"]
    );
    assert_eq!(
        committed(|t| t.tasks_of_service("b").map(|x| x.id.clone()).collect()),
        Vec::<String>::new()
    );
    // a refused batch leaves the index as it was
    let stale = s.view(|t| t.tasks["t1"].clone());
    s.update(|tx| {
        let mut t = tx.get::<Task>("t1").unwrap();
        t.node_id = "n9".into();
        tx.update(t)
    })
    .await
    .unwrap();
    let refused = s
        .update(|tx| {
            tx.create(task("t5", "c", "n9"))?;
            tx.update(stale)
        })
        .await;
    assert!(refused.is_err());
    assert_eq!(
        committed(|t| t.tasks_on_node("n9").map(|x| x.id.clone()).collect()),
        ["t1"]
    );
    assert_eq!(
        committed(|t| t.tasks_of_service("c").map(|x| x.id.clone()).collect()),
        Vec::<String>::new()
    );
    // a snapshot rebuilds it
    let back = s.view(|t| Tables::from_snapshot(&t.snapshot()));
    assert_eq!(back, s.view(|t| t.clone()));
}

#[tokio::test]
async fn snapshots_round_trip() {
    let s = Store::in_memory();
    s.update(|tx| {
        tx.create(service("a", "web"))?;
        tx.create(Node {
            id: "n1".into(),
            ..Default::default()
        })
    })
    .await
    .unwrap();
    let (snap, idx) = s.snapshot();
    let bytes = snap.encode_to_vec();
    let back = Tables::from_snapshot(&StoreSnapshot::decode(bytes.as_slice()).unwrap());
    assert_eq!(idx, 1);
    assert_eq!(back, s.view(|t| t.clone()));
}

#[test]
fn ids() {
    let a = new_id();
    assert_eq!(a.len(), 25);
    assert_ne!(a, new_id());
}
