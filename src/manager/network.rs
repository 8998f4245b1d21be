//! Overlay networks in the store: creating and removing them (each with a subnet and a
//! VNI), services' attachments and published ports resolved and checked against the
//! store, and standalone containers' network attachments. What a network, service or
//! task is given out of the pools is the allocator's (`allocator.rs`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use shoal_proto::port_config::PublishMode;
use shoal_proto::*;

use super::allocator::service_networks;
use super::error::{find, invalid, update_checked, ControlError};
use super::ipam::{self, carve, next_vni, IpamError, Pool, Subnet};
use super::store::{Store, StoreError, StoreItem, Tables, Tx};
use super::tasks::state;
use crate::spec::parse::protocol_name;
use crate::spec::{validate, Field, SpecError, SpecErrors};

/// The routing mesh's network, made at init.
pub const INGRESS: &str = "ingress";

/// Checks the swarm's default address pools and the size of the subnets carved from
/// them (none given: Swarm's 10.0.0.0/8 in /24s). Returns what the cluster object keeps.
pub fn check_pools(pools: &[String], size: u32) -> Result<(Vec<String>, u32), SpecErrors> {
    let given: Vec<String> = if pools.is_empty() {
        vec![ipam::DEFAULT_POOL.into()]
    } else {
        pools.to_vec()
    };
    let size = if size == 0 {
        u32::from(ipam::DEFAULT_SUBNET_SIZE)
    } else {
        size
    };
    let at = Field::new("default_addr_pool");
    let mut parsed: Vec<Subnet> = Vec::new();
    for (i, p) in given.iter().enumerate() {
        let s: Subnet = p
            .parse()
            .map_err(|e: IpamError| SpecError::new(at.at(i), e.to_string()))?;
        if let Some(why) = ipam::reserved(&s) {
            return Err(SpecError::new(at.at(i), why).into());
        }
        if let Some(o) = parsed.iter().find(|o| o.overlaps(&s)) {
            return Err(SpecError::new(at.at(i), format!("{s} overlaps {o}")).into());
        }
        if size < u32::from(s.prefix()) || size > 29 {
            return Err(SpecError::new(
                Field::new("default_addr_pool_mask_length"),
                format!("{size}: must be between the pool's /{} and /29", s.prefix()),
            )
            .into());
        }
        parsed.push(s);
    }
    Ok((parsed.iter().map(|s| s.to_string()).collect(), size))
}

/// The ingress network's spec (its subnet comes from the pool, as Swarm's 10.0.0.0/24).
pub fn ingress_spec() -> NetworkSpec {
    NetworkSpec {
        annotations: Some(Annotations {
            name: INGRESS.into(),
            ..Default::default()
        }),
        driver: "overlay".into(),
        ingress: true,
        ..Default::default()
    }
}

/// The IP a node is reached at (its status's `ip` or `ip:port`).
pub fn node_addr_ip(n: &Node) -> Option<std::net::IpAddr> {
    let a = &n.status.as_ref()?.addr;
    a.parse::<std::net::SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| a.parse())
        .ok()
}

/// Creates a network in a transaction: its subnet (given, or the next free block of the
/// cluster's default pool) and its VNI.
pub fn new_network(tx: &mut Tx<'_>, mut spec: NetworkSpec) -> Result<Network, ControlError> {
    validate::network(&spec)?;
    if spec.driver.is_empty() {
        spec.driver = "overlay".into();
    }
    let networks = tx.list::<Network>();
    let taken: Vec<(Subnet, &Network)> = networks
        .iter()
        .filter_map(|n| {
            let s: Subnet = n.ipam.first()?.subnet.parse().ok()?;
            Some((s, n))
        })
        .collect();
    let given = spec.ipam.first().cloned().unwrap_or_default();
    // the hosts' own addresses (the underlay): an overlay over them would hide them
    let hosts: Vec<(Ipv4Addr, String)> = tx
        .list::<Node>()
        .iter()
        .filter_map(|n| {
            let name = n.description.as_ref().map_or(&n.id, |d| &d.hostname);
            match node_addr_ip(n)? {
                std::net::IpAddr::V4(a) => Some((a, name.clone())),
                std::net::IpAddr::V6(_) => None,
            }
        })
        .collect();
    let pool = if given.subnet.is_empty() {
        let cluster = tx.list::<Cluster>().into_iter().next().unwrap_or_default();
        let (pools, size) = check_pools(&cluster.default_addr_pool, cluster.subnet_size)
            .map_err(|e| invalid(format!("the swarm's default address pools: {e}")))?;
        let pools: Vec<Subnet> = pools.iter().filter_map(|p| p.parse().ok()).collect();
        let busy: Vec<Subnet> = taken
            .iter()
            .map(|(s, _)| *s)
            .chain(hosts.iter().filter_map(|(a, _)| Subnet::new(*a, 32).ok()))
            .collect();
        let subnet = carve(&pools, size as u8, &busy).map_err(|e| invalid(e.to_string()))?;
        Pool::new(&subnet.to_string(), "", "").map_err(|e| invalid(e.to_string()))?
    } else {
        let at = Field::new("ipam[0].subnet");
        let p = Pool::new(&given.subnet, &given.range, &given.gateway).map_err(|e| {
            let field = match &e {
                IpamError::Field { field, .. } => Field::new(format!("ipam[0].{field}")),
                _ => at.clone(),
            };
            SpecError::new(field, e.to_string())
        })?;
        if let Some(why) = ipam::reserved(&p.subnet) {
            return Err(SpecError::new(at, why).into());
        }
        if let Some((a, h)) = hosts.iter().find(|(a, _)| p.subnet.contains(*a)) {
            return Err(SpecError::new(at, format!(
                "{} holds node {h}'s own address {a} (the hosts' network): an overlay must not cover the network its nodes talk over",
                p.subnet
            )).into());
        }
        if let Some((s, n)) = taken.iter().find(|(s, _)| s.overlaps(&p.subnet)) {
            return Err(SpecError::new(
                at,
                format!("{} overlaps network {} ({s})", p.subnet, n.name()),
            )
            .into());
        }
        p
    };
    let vnis: BTreeSet<u32> = networks.iter().map(|n| n.vni).collect();
    let n = Network {
        id: super::store::new_id(),
        spec: Some(spec),
        vni: next_vni(&vnis).map_err(|e| invalid(e.to_string()))?,
        ipam: vec![IpamConfig {
            subnet: pool.subnet.to_string(),
            range: if pool.range == pool.subnet {
                String::new()
            } else {
                pool.range.to_string()
            },
            gateway: pool.gateway.to_string(),
        }],
        ..Default::default()
    };
    tx.create(n.clone())?;
    Ok(n)
}

/// `network create`. `--ingress` makes the routing mesh's network again (after it was
/// removed, to give it another subnet, as Docker's): a swarm has at most one, and it is
/// neither attachable nor internal.
pub async fn create_network(store: &Store, spec: NetworkSpec) -> Result<Network, ControlError> {
    validate::network(&spec)?;
    let id = update_checked(store, |tx| {
        if let Some(n) = super::allocator::ingress_id(tx).filter(|_| spec.ingress) {
            let name = tx.get::<Network>(&n).map(|x| x.name().to_string());
            return Err(SpecError::new(Field::new("ingress"), format!(
                "the swarm has an ingress network already ({}): a swarm has one; remove it first (with no service publishing a port) to make another",
                name.unwrap_or(n)
            )).into());
        }
        new_network(tx, spec)
    })
    .await?
    .id;
    store
        .view(|t| t.networks.get(&id).cloned())
        .ok_or(ControlError::NotFound {
            kind: "network",
            what: id,
        })
}

/// Resolves network attachments' targets (names, IDs or unique ID prefixes) to
/// network IDs and checks them: no ingress (a service joins it by publishing a port),
/// valid aliases, no network twice, and (`standalone`: a standalone container's)
/// attachable networks only. `at` is where the attachments are in the request.
fn resolve_attachments(
    t: &Tables,
    at: &Field,
    atts: &mut [NetworkAttachmentConfig],
    standalone: bool,
) -> Result<(), ControlError> {
    let mut seen = BTreeSet::new();
    for (i, a) in atts.iter_mut().enumerate() {
        let here = at.at(i);
        let refuse = |why: &str| SpecError::new(here.clone(), why).value(&a.target);
        let n = find(&t.networks, &a.target).map_err(|_| refuse("no such network"))?;
        let spec = n.spec.clone().unwrap_or_default();
        if standalone && (spec.ingress || !spec.attachable) {
            return Err(refuse("standalone containers may join only attachable networks (made attachable at create)").into());
        }
        if spec.ingress {
            return Err(refuse("the ingress network is the routing mesh's; a service joins it by publishing a port").into());
        }
        for (j, al) in a.aliases.iter().enumerate() {
            if !validate::valid_name(al) && !al.contains('.') {
                return Err(
                    SpecError::new(here.child("aliases").at(j), "is not a valid name")
                        .value(al)
                        .into(),
                );
            }
        }
        if !seen.insert(n.id.clone()) {
            return Err(refuse("attached to it twice").into());
        }
        a.target = n.id;
    }
    Ok(())
}

/// Resolves a service's network attachments (names or IDs) to network IDs, and checks
/// that no port it publishes is one another service already publishes on the routing
/// mesh (the rest of its ports' checks are the validation's).
pub fn resolve_service(
    t: &Tables,
    service_id: &str,
    spec: &mut ServiceSpec,
) -> Result<(), ControlError> {
    if let Some(task) = spec.task.as_mut() {
        resolve_attachments(t, &Field::new("task.networks"), &mut task.networks, false)?;
    }
    let mine = spec
        .endpoint
        .as_ref()
        .map(|e| e.ports.clone())
        .unwrap_or_default();
    // the routing mesh answers a published port on every node: one service per port
    for other in t.services.values() {
        if other.id == service_id {
            continue;
        }
        let theirs = other
            .endpoint
            .as_ref()
            .map(|e| e.ports.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(
                other
                    .spec
                    .as_ref()
                    .and_then(|s| s.endpoint.as_ref())
                    .map(|e| e.ports.clone())
                    .unwrap_or_default(),
            );
        for q in theirs {
            let clash = mine.iter().position(|p| {
                p.published_port != 0
                    && p.published_port == q.published_port
                    && p.protocol == q.protocol
                    && (p.publish_mode == PublishMode::Ingress as i32
                        || q.publish_mode == PublishMode::Ingress as i32)
            });
            if let Some(i) = clash {
                return Err(SpecError::new(
                    Field::new("endpoint.ports").at(i),
                    format!(
                        "port {}/{} is already published by service {}",
                        q.published_port,
                        protocol_name(q.protocol),
                        other.name()
                    ),
                )
                .into());
            }
        }
    }
    Ok(())
}

pub async fn remove_network(store: &Store, what: &str) -> Result<(), ControlError> {
    let n = store.view(|t| find(&t.networks, what))?;
    let users: Vec<String> = store.view(|t| {
        let ingress = t
            .networks
            .values()
            .find(|x| x.spec.as_ref().is_some_and(|s| s.ingress))
            .map(|x| x.id.as_str());
        t.services
            .values()
            .filter(|s| {
                let attached = s
                    .spec
                    .as_ref()
                    .is_some_and(|sp| service_networks(sp, ingress).contains(&n.id));
                let vip = s
                    .endpoint
                    .as_ref()
                    .is_some_and(|e| e.virtual_ips.iter().any(|v| v.network_id == n.id));
                attached || vip
            })
            .map(|s| s.name().to_string())
            .collect()
    });
    if !users.is_empty() {
        return Err(invalid(format!(
            "network {} is in use by service(s) {}: remove them, or detach them from it, first",
            n.name(),
            users.join(", ")
        )));
    }
    let live = store.view(|t| {
        t.tasks
            .values()
            .filter(|x| !state(x).is_terminal() && x.networks.iter().any(|a| a.network_id == n.id))
            .count()
    });
    if live > 0 {
        return Err(invalid(format!(
            "network {} still has {live} task(s) attached that have not stopped yet; try again when they have",
            n.name()
        )));
    }
    store
        .update(|tx| {
            tx.remove::<Network>(&n.id)?;
            // nodes' own addresses on it (ingress: the routing mesh's) go with it
            for mut node in tx.filter(|x: &Node| x.attachments.iter().any(|a| a.network_id == n.id))
            {
                node.attachments.retain(|a| a.network_id != n.id);
                tx.update(node)?;
            }
            Ok(())
        })
        .await?;
    Ok(())
}

/// `container run --network` on `node`: a network attachment for the container (a task
/// with no service, on that node, desired running), on each of `networks` (names or
/// IDs), which must be attachable overlays. Its addresses come from the allocator, as a
/// task's do; returns its ID.
pub async fn attach_container(
    store: &Store,
    node: &str,
    container: String,
    mut networks: Vec<NetworkAttachmentConfig>,
) -> Result<String, ControlError> {
    if container.is_empty() {
        return Err(invalid("a network attachment needs the container's name"));
    }
    if networks.is_empty() {
        return Err(invalid("a network attachment needs at least one network"));
    }
    store.view(|t| resolve_attachments(t, &Field::new("networks"), &mut networks, true))?;
    let id = super::store::new_id();
    let t = Task {
        id: id.clone(),
        node_id: node.to_string(),
        annotations: Some(Annotations {
            name: container.clone(),
            ..Default::default()
        }),
        spec: Some(TaskSpec {
            networks,
            ..Default::default()
        }),
        status: Some(super::tasks::status(TaskState::New, "network attachment")),
        desired_state: TaskState::Running as i32,
        attachment_container: container,
        ..Default::default()
    };
    // a retried call (its first answer lost) finds the attachment it made
    let made = store
        .update(|tx| {
            let mine = |x: &Task| {
                x.node_id == t.node_id
                    && x.attachment_container == t.attachment_container
                    && !state(x).is_terminal()
                    && x.desired_state <= TaskState::Running as i32
            };
            match tx.tasks_of("", false).into_iter().find(mine) {
                Some(old) => Ok(old.id),
                None => {
                    tx.create(t)?;
                    Ok(id)
                }
            }
        })
        .await?;
    Ok(made)
}

/// The container is gone: its attachment is removed (its node lets go of it, and its
/// addresses return to the pools). Only the node that made it may remove it; one that
/// is gone already is fine (a retried call).
pub async fn detach_container(store: &Store, node: &str, id: &str) -> Result<(), ControlError> {
    store
        .update(|tx| match tx.get::<Task>(id) {
            None => Ok(()),
            Some(t) if !t.attachment_container.is_empty() && t.node_id == node => {
                tx.remove::<Task>(id)
            }
            _ => Err(StoreError::NotFound {
                kind: "network attachment".into(),
                id: id.to_string(),
            }),
        })
        .await?;
    Ok(())
}
