//! The scheduler: filters, spreading, the reason a task stays pending, placement
//! preferences.

use super::*;

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

    assert!(crate::spec::placement::parse_constraint("node.labels.zone==east").is_ok());
    assert!(crate::spec::placement::parse_constraint("node.role==king")
        .unwrap_err()
        .contains("manager or worker"));
    assert!(crate::spec::placement::parse_constraint("node.color==red")
        .unwrap_err()
        .contains("unknown key"));
    assert!(crate::spec::placement::parse_constraint("zone=east")
        .unwrap_err()
        .contains("no == or !="));
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
    use crate::spec::placement::parse_preference;
    assert!(parse_preference("spread=node.labels.zone").is_ok());
    assert!(parse_preference("binpack=x")
        .unwrap_err()
        .contains("spread=node.labels.NAME"));
}
