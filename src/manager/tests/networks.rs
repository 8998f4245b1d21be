//! Networks: subnets and VNIs, services' attachments and published ports, addresses
//! held once, standalone containers' attachments, and the subnets an overlay must not have.

use std::collections::BTreeSet;

use super::*;
use crate::manager::control::{create_service, update_service};
use crate::manager::error::ControlError;
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
        "the routing mesh's network cannot be attachable",
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
    let s = create_service(
        &store,
        spec_on("web", 4, &["front", "back"]),
        &no_registry(),
    )
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
    update_service(
        &store,
        &s.id,
        0,
        crate::manager::control::Change::Spec(Box::new(spec.clone())),
        &no_registry(),
    )
    .await
    .unwrap();
    round(&store, &s.id).await;
    agent_converges(&store).await;
    spec.mode = Some(replicated(6));
    update_service(
        &store,
        &s.id,
        0,
        crate::manager::control::Change::Spec(Box::new(spec)),
        &no_registry(),
    )
    .await
    .unwrap();
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
    let hog = create_service(&store, spec_on("hog", 2, &["tiny"]), &no_registry())
        .await
        .unwrap();
    round(&store, &hog.id).await;
    agent_converges(&store).await;
    // so of this one's four tasks, after its VIP, one gets an address
    let s = create_service(&store, spec_on("many", 4, &["tiny"]), &no_registry())
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
    let a = create_service(&store, a, &no_registry()).await.unwrap();
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
        create_service(&store, b.clone(), &no_registry()).await,
        "already published by service a",
    );
    b.endpoint.as_mut().unwrap().mode = endpoint_spec::ResolutionMode::Dnsrr as i32;
    b.endpoint.as_mut().unwrap().ports[0].published_port = 9090;
    refused(create_service(&store, b, &no_registry()).await, "dnsrr");
    refused(
        create_service(&store, spec_on("c", 1, &["ingress"]), &no_registry()).await,
        "routing mesh",
    );
    refused(
        create_service(&store, spec_on("d", 1, &["nope"]), &no_registry()).await,
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
        create_service(&store, h.clone(), &no_registry()).await,
        "mode=host needs a published port",
    );
    // a host-mode port may not take a port of the routing mesh (it answers on
    // every node)
    h.endpoint.as_mut().unwrap().ports[0].published_port = 8080;
    refused(
        create_service(&store, h, &no_registry()).await,
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
    let h = create_service(&store, host("h", 3), &no_registry())
        .await
        .unwrap();
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
    let g = create_service(&store, host("g", 1), &no_registry())
        .await
        .unwrap();
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

/// Subnets an overlay must not have: the kernel's special ranges, shoal's own uplinks,
/// and the hosts' own network; the pool's blocks keep clear of the hosts' addresses.
/// The routing mesh's network can be made again once removed, once.
#[tokio::test]
async fn overlays_keep_off_special_ranges_and_the_hosts_network() {
    let mut n1 = node("n1", &[]);
    n1.status.as_mut().unwrap().addr = "10.0.0.5:2377".into();
    let store = Store::in_memory();
    let c = crate::manager::ca::new_cluster(
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
    let e = crate::manager::network::check_pools(&["127.0.0.0/8".into()], 24).unwrap_err();
    assert_eq!(e.0[0].field.path(), "default_addr_pool[0]");
    assert!(e.to_string().contains("loopback"), "{e}");
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
