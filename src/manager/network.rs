//! Overlay networks in the store: creating and removing them (each with a subnet and a
//! VNI), services' attachments and published ports resolved and checked, and the
//! allocator's part: service VIPs, ingress published ports and task addresses. The
//! allocator rebuilds every pool from the store on each pass, so what is in use is what
//! the store says: an address is handed to one live holder at a time, and goes back to
//! the pool when its task has stopped or its service is gone.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use shoal_proto::endpoint::VirtualIp;
use shoal_proto::endpoint_spec::ResolutionMode;
use shoal_proto::port_config::{Protocol, PublishMode};
use shoal_proto::*;

use super::control::ControlError;
use super::ipam::{self, carve, next_vni, IpamError, Pool, Subnet};
use super::store::{Store, StoreError, StoreItem, Tables, Tx};
use super::tasks::state;

/// The routing mesh's network, made at init.
pub const INGRESS: &str = "ingress";
/// Where `published` ports of 0 are taken from, as in Swarm.
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

fn invalid(s: impl Into<String>) -> ControlError {
    ControlError::Invalid(s.into())
}

fn ipam_err(e: IpamError) -> ControlError {
    invalid(e.to_string())
}

/// Checks `--default-addr-pool` and `--default-addr-pool-mask-length` (none given:
/// Swarm's 10.0.0.0/8 in /24s). Returns what the cluster object keeps.
pub fn check_pools(pools: &[String], size: u32) -> Result<(Vec<String>, u32), String> {
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
    let mut parsed: Vec<Subnet> = Vec::new();
    for p in &given {
        let s: Subnet = p.parse().map_err(|e| format!("--default-addr-pool: {e}"))?;
        if let Some(why) = ipam::reserved(&s) {
            return Err(format!("--default-addr-pool {why}"));
        }
        if let Some(o) = parsed.iter().find(|o| o.overlaps(&s)) {
            return Err(format!("--default-addr-pool {s} overlaps {o}"));
        }
        if size < u32::from(s.prefix()) || size > 29 {
            return Err(format!(
                "--default-addr-pool-mask-length {size}: must be between the pool's /{} and /29",
                s.prefix()
            ));
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

/// Checks a network spec as `network create` gives it.
fn check_spec(spec: &mut NetworkSpec) -> Result<(), ControlError> {
    let name = spec
        .annotations
        .as_ref()
        .map(|a| a.name.clone())
        .unwrap_or_default();
    if !super::control::valid_name(&name) {
        return Err(invalid(format!(
            "{name:?} is not a valid network name: use up to 63 of [a-zA-Z0-9-_], starting with a letter or digit"
        )));
    }
    if let Some(a) = &spec.annotations {
        super::control::check_labels("--label", &a.labels)?;
    }
    match spec.driver.as_str() {
        "" | "overlay" => spec.driver = "overlay".into(),
        d => {
            return Err(invalid(format!(
                "--driver {d}: a swarm has overlay networks only (bridge, host and macvlan networks are one node's, not the swarm's)"
            )))
        }
    }
    if spec.ipam.len() > 1 {
        return Err(invalid(
            "one --subnet per network (IPv4 only: IPv6 is not supported yet)",
        ));
    }
    if let Some(c) = spec.ipam.first() {
        if c.subnet.is_empty() && (!c.range.is_empty() || !c.gateway.is_empty()) {
            return Err(invalid("--ip-range and --gateway need --subnet"));
        }
    }
    Ok(())
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
    check_spec(&mut spec)?;
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
        let (pools, size) =
            check_pools(&cluster.default_addr_pool, cluster.subnet_size).map_err(invalid)?;
        let pools: Vec<Subnet> = pools.iter().filter_map(|p| p.parse().ok()).collect();
        let busy: Vec<Subnet> = taken
            .iter()
            .map(|(s, _)| *s)
            .chain(hosts.iter().filter_map(|(a, _)| Subnet::new(*a, 32).ok()))
            .collect();
        let subnet = carve(&pools, size as u8, &busy).map_err(ipam_err)?;
        Pool::new(&subnet.to_string(), "", "").map_err(ipam_err)?
    } else {
        let p = Pool::new(&given.subnet, &given.range, &given.gateway).map_err(ipam_err)?;
        if let Some(why) = ipam::reserved(&p.subnet) {
            return Err(invalid(format!("--subnet {why}")));
        }
        if let Some((a, h)) = hosts.iter().find(|(a, _)| p.subnet.contains(*a)) {
            return Err(invalid(format!(
                "--subnet {}: holds node {h}'s own address {a} (the hosts' network): an overlay must not cover the network its nodes talk over",
                p.subnet
            )));
        }
        if let Some((s, n)) = taken.iter().find(|(s, _)| s.overlaps(&p.subnet)) {
            return Err(invalid(format!(
                "--subnet {}: overlaps network {} ({s})",
                p.subnet,
                n.name()
            )));
        }
        p
    };
    let vnis: BTreeSet<u32> = networks.iter().map(|n| n.vni).collect();
    let n = Network {
        id: super::store::new_id(),
        spec: Some(spec),
        vni: next_vni(&vnis).map_err(ipam_err)?,
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
    if spec.ingress && (spec.attachable || spec.internal) {
        return Err(invalid(
            "--ingress: the routing mesh's network cannot be --attachable or --internal",
        ));
    }
    let id = super::control::update_checked(store, |tx| {
        if let Some(n) = ingress_id(tx).filter(|_| spec.ingress) {
            let name = tx.get::<Network>(&n).map(|x| x.name().to_string());
            return Err(invalid(format!(
                "--ingress: the swarm has an ingress network already ({}): a swarm has one; remove it first (with no service publishing a port) to make another",
                name.unwrap_or(n)
            )));
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

/// The networks a service's tasks attach to (IDs): those it names, and ingress when it
/// publishes a port, in either mode: a published port reaches a task through its
/// node's side of the ingress network (host mode only on the task's own node).
pub fn service_networks(spec: &ServiceSpec, ingress: Option<&str>) -> Vec<String> {
    let mut ids: Vec<String> = spec
        .task
        .as_ref()
        .map(|t| t.networks.iter().map(|n| n.target.clone()).collect())
        .unwrap_or_default();
    if let Some(i) = ingress.filter(|_| !ports(spec).is_empty()) {
        ids.push(i.to_string());
    }
    ids
}

fn ports(spec: &ServiceSpec) -> &[PortConfig] {
    spec.endpoint.as_ref().map(|e| &e.ports[..]).unwrap_or(&[])
}

/// The ports a service publishes in host mode, as the allocator resolved them (its
/// endpoint: what its tasks are reached by).
pub fn host_ports(s: &Service) -> impl Iterator<Item = &PortConfig> {
    s.endpoint
        .as_ref()
        .map(|e| &e.ports[..])
        .unwrap_or(&[])
        .iter()
        .filter(|p| p.publish_mode == PublishMode::Host as i32 && p.published_port != 0)
}

fn publishes_ingress(spec: &ServiceSpec) -> bool {
    ports(spec)
        .iter()
        .any(|p| p.publish_mode == PublishMode::Ingress as i32)
}

fn dnsrr(spec: &ServiceSpec) -> bool {
    spec.endpoint.as_ref().map(|e| e.mode) == Some(ResolutionMode::Dnsrr as i32)
}

pub fn proto_name(p: i32) -> &'static str {
    if p == Protocol::Udp as i32 {
        "udp"
    } else {
        "tcp"
    }
}

/// Resolves `--network` targets (names, IDs or unique ID prefixes) to network IDs and
/// checks them: no ingress (a service joins it by publishing a port), valid aliases, no
/// network twice, and (`standalone`: a standalone container's) attachable networks only.
fn resolve_attachments(
    t: &Tables,
    atts: &mut [NetworkAttachmentConfig],
    standalone: bool,
) -> Result<(), ControlError> {
    let mut seen = BTreeSet::new();
    for a in atts.iter_mut() {
        let n = super::control::find(&t.networks, &a.target)
            .map_err(|_| invalid(format!("--network {}: no such network", a.target)))?;
        let spec = n.spec.clone().unwrap_or_default();
        if standalone && (spec.ingress || !spec.attachable) {
            return Err(invalid(format!(
                "--network {}: standalone containers may join only attachable networks (network create --attachable)",
                a.target
            )));
        }
        if spec.ingress {
            return Err(invalid(format!(
                "--network {}: the ingress network is the routing mesh's; a service joins it by publishing a port",
                a.target
            )));
        }
        for al in &a.aliases {
            if !super::control::valid_name(al) && !al.contains('.') {
                return Err(invalid(format!(
                    "--network alias {al:?} is not a valid name"
                )));
            }
        }
        if !seen.insert(n.id.clone()) {
            return Err(invalid(format!(
                "--network {}: attached to it twice",
                n.name()
            )));
        }
        a.target = n.id;
    }
    Ok(())
}

/// Resolves a service's `--network` targets (names or IDs) to network IDs and checks
/// its ports: valid numbers, no port published twice, none another service already
/// publishes on the routing mesh, and no ingress ports with DNS round robin.
pub fn resolve_service(
    t: &Tables,
    service_id: &str,
    spec: &mut ServiceSpec,
) -> Result<(), ControlError> {
    if let Some(task) = spec.task.as_mut() {
        resolve_attachments(t, &mut task.networks, false)?;
    }
    let mine = ports(spec).to_vec();
    if dnsrr(spec) && publishes_ingress(spec) {
        return Err(invalid(
            "--endpoint-mode dnsrr has no VIP, so it cannot publish ports in ingress mode (use mode=host)",
        ));
    }
    let mut published = BTreeSet::new();
    for p in &mine {
        if p.publish_mode == PublishMode::Host as i32 && p.published_port == 0 {
            return Err(invalid(format!(
                "--publish target={}: mode=host needs a published port",
                p.target_port
            )));
        }
        if p.target_port == 0 || p.target_port > 65535 {
            return Err(invalid(format!(
                "--publish: target port {} is not between 1 and 65535",
                p.target_port
            )));
        }
        if p.published_port > 65535 {
            return Err(invalid(format!(
                "--publish: published port {} is not between 1 and 65535",
                p.published_port
            )));
        }
        if p.published_port != 0 && !published.insert((p.published_port, p.protocol)) {
            return Err(invalid(format!(
                "--publish: port {}/{} is published twice",
                p.published_port,
                proto_name(p.protocol)
            )));
        }
    }
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
                    .map(|s| ports(s).to_vec())
                    .unwrap_or_default(),
            );
        for q in theirs {
            let clash = mine.iter().any(|p| {
                p.published_port != 0
                    && p.published_port == q.published_port
                    && p.protocol == q.protocol
                    && (p.publish_mode == PublishMode::Ingress as i32
                        || q.publish_mode == PublishMode::Ingress as i32)
            });
            if clash {
                return Err(invalid(format!(
                    "--publish: port {}/{} is already published by service {}",
                    q.published_port,
                    proto_name(q.protocol),
                    other.name()
                )));
            }
        }
    }
    Ok(())
}

pub async fn remove_network(store: &Store, what: &str) -> Result<(), ControlError> {
    let n = store.view(|t| super::control::find(&t.networks, what))?;
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
            "network {} is in use by service(s) {}: remove them or detach them first (service update --network-rm)",
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
    store.view(|t| resolve_attachments(t, &mut networks, true))?;
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

/// Every network's pool with what the store holds in use, built once per pass when
/// first needed.
#[derive(Default)]
pub struct Pools {
    pools: Option<HashMap<String, Pool>>,
    ports: BTreeSet<(u32, i32)>,
}

impl Pools {
    fn build(tx: &Tx<'_>) -> (HashMap<String, Pool>, BTreeSet<(u32, i32)>) {
        let mut pools = HashMap::new();
        for n in tx.list::<Network>() {
            let Some(c) = n.ipam.first() else { continue };
            match Pool::new(&c.subnet, &c.range, &c.gateway) {
                Ok(p) => {
                    pools.insert(n.id.clone(), p);
                }
                Err(e) => {
                    tracing::warn!(network = %n.id, error = %e, "network with bad addressing")
                }
            }
        }
        let mut take = |net: &str, addr: &str, holder: &str| {
            if let (Some(p), Some(a)) = (pools.get_mut(net), ipam::addr_of(addr)) {
                if !p.take(a) {
                    tracing::error!(network = net, %a, holder, "address held twice or out of its network");
                }
            }
        };
        let mut ports = BTreeSet::new();
        tx.for_each(|s: &Service| {
            if let Some(e) = &s.endpoint {
                for v in &e.virtual_ips {
                    take(&v.network_id, &v.addr, &s.id);
                }
                for p in &e.ports {
                    ports.insert((p.published_port, p.protocol));
                }
            }
        });
        tx.for_each(|n: &Node| {
            for a in &n.attachments {
                for addr in &a.addresses {
                    take(&a.network_id, addr, &n.id);
                }
            }
        });
        tx.for_each(|t: &Task| {
            if !state(t).is_terminal() {
                for a in &t.networks {
                    for addr in &a.addresses {
                        take(&a.network_id, addr, &t.id);
                    }
                }
            }
        });
        (pools, ports)
    }

    fn get(&mut self, tx: &Tx<'_>) -> &mut HashMap<String, Pool> {
        if self.pools.is_none() {
            let (p, ports) = Self::build(tx);
            self.pools = Some(p);
            self.ports = ports;
        }
        self.pools.as_mut().expect("built above")
    }

    fn release(&mut self, net: &str, a: Ipv4Addr) {
        if let Some(p) = self.pools.as_mut().and_then(|m| m.get_mut(net)) {
            p.release(a);
        }
    }
}

/// The ingress network's ID (read in place: no copy of the networks table).
pub fn ingress_id(tx: &Tx<'_>) -> Option<String> {
    let mut id = None;
    tx.for_each(|n: &Network| {
        if n.spec.as_ref().is_some_and(|s| s.ingress) {
            id = Some(n.id.clone());
        }
    });
    id
}

/// Gives every service what its endpoint needs: a VIP on each of its networks (none
/// with DNS round robin) and a port for each ingress port published as 0. Returns how
/// many services changed.
pub fn allocate_services(tx: &mut Tx<'_>, pools: &mut Pools) -> Result<usize, StoreError> {
    let ingress = ingress_id(tx);
    let mut changed = 0;
    for s in tx.list::<Service>() {
        let Some(spec) = s.spec.clone() else { continue };
        let want: Vec<String> = if dnsrr(&spec) {
            // no VIPs; ingress is not allowed with dnsrr (checked at create)
            vec![]
        } else {
            service_networks(&spec, ingress.as_deref())
        };
        let old = s.endpoint.clone().unwrap_or_default();
        let mut vips: Vec<VirtualIp> = old
            .virtual_ips
            .iter()
            .filter(|v| want.contains(&v.network_id))
            .cloned()
            .collect();
        let mut failed = None;
        for net in &want {
            if vips.iter().any(|v| &v.network_id == net) {
                continue;
            }
            let Some(pool) = pools.get(tx).get_mut(net) else {
                continue; // a network that went away: the service update is refused elsewhere
            };
            match pool.allocate() {
                Ok(a) => vips.push(VirtualIp {
                    network_id: net.clone(),
                    addr: pool.with_prefix(a),
                }),
                Err(e) => failed = Some(format!("VIP on network {net}: {e}")),
            }
        }
        if let Some(f) = failed {
            tracing::warn!(service = %s.id, "{f}");
        }
        let mut resolved = Vec::new();
        for p in ports(&spec) {
            let mut p = p.clone();
            if p.published_port == 0 && p.publish_mode == PublishMode::Ingress as i32 {
                let before = old.ports.iter().find(|q| {
                    q.target_port == p.target_port
                        && q.protocol == p.protocol
                        && q.publish_mode == p.publish_mode
                        && DYNAMIC_PORTS.contains(&q.published_port)
                });
                p.published_port = match before {
                    Some(q) => q.published_port,
                    None => {
                        pools.get(tx);
                        let free = DYNAMIC_PORTS
                            .clone()
                            .find(|n| !pools.ports.contains(&(*n, p.protocol)));
                        match free {
                            Some(n) => {
                                pools.ports.insert((n, p.protocol));
                                n
                            }
                            None => continue,
                        }
                    }
                };
            }
            resolved.push(p);
        }
        let endpoint = Endpoint {
            spec: spec.endpoint.clone(),
            ports: resolved,
            virtual_ips: vips,
        };
        if s.endpoint.as_ref() != Some(&endpoint) {
            let mut s = s.clone();
            s.endpoint = Some(endpoint);
            tx.update(s)?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Gives a new task an address on each of its service's networks. On failure nothing is
/// kept and the reason is returned, for the task's status.
pub fn attach_task(
    tx: &Tx<'_>,
    pools: &mut Pools,
    ingress: Option<&str>,
    t: &mut Task,
) -> Result<(), String> {
    let nets = match tx.get::<Service>(&t.service_id) {
        Some(service) => service_networks(&service.spec.clone().unwrap_or_default(), ingress),
        // a standalone container's attachment: the networks it names
        None if !t.attachment_container.is_empty() => t
            .spec
            .as_ref()
            .map(|s| s.networks.iter().map(|n| n.target.clone()).collect())
            .unwrap_or_default(),
        None => return Ok(()),
    };
    if nets.is_empty() || !t.networks.is_empty() {
        return Ok(());
    }
    let aliases: HashMap<String, Vec<String>> = t
        .spec
        .as_ref()
        .map(|s| {
            s.networks
                .iter()
                .map(|n| (n.target.clone(), n.aliases.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut got: Vec<NetworkAttachment> = Vec::new();
    for net in nets {
        let name = tx
            .get::<Network>(&net)
            .map(|n| n.name().to_string())
            .unwrap_or_else(|| net.clone());
        let res = match pools.get(tx).get_mut(&net) {
            Some(p) => p
                .allocate()
                .map(|a| p.with_prefix(a))
                .map_err(|e| e.to_string()),
            None => Err("the network does not exist".into()),
        };
        match res {
            Ok(addr) => got.push(NetworkAttachment {
                network_id: net.clone(),
                addresses: vec![addr],
                aliases: aliases.get(&net).cloned().unwrap_or_default(),
            }),
            Err(e) => {
                for a in &got {
                    if let Some(ip) = a.addresses.first().and_then(|x| ipam::addr_of(x)) {
                        pools.release(&a.network_id, ip);
                    }
                }
                return Err(format!("network {name}: {e}"));
            }
        }
    }
    t.networks = got;
    Ok(())
}

/// Gives every node an address of its own on the ingress network (the routing mesh
/// answers from it, so that a task's reply goes back to the node that forwarded the
/// request). Returns how many nodes got one.
pub fn allocate_nodes(tx: &mut Tx<'_>, pools: &mut Pools) -> Result<usize, StoreError> {
    let Some(ingress) = ingress_id(tx) else {
        return Ok(0);
    };
    // only while the routing mesh is in use (the ingress subnet is a /24 by default)
    let mut meshed = false;
    tx.for_each(|s: &Service| meshed |= s.spec.as_ref().is_some_and(publishes_ingress));
    if !meshed {
        return Ok(0);
    }
    let lacking: Vec<Node> =
        tx.filter(|n: &Node| !n.attachments.iter().any(|a| a.network_id == ingress));
    let mut n = 0;
    for mut node in lacking {
        let Some(pool) = pools.get(tx).get_mut(&ingress) else {
            return Ok(n);
        };
        match pool.allocate() {
            Ok(a) => {
                node.attachments.push(NetworkAttachment {
                    network_id: ingress.clone(),
                    addresses: vec![pool.with_prefix(a)],
                    aliases: vec![],
                });
                tx.update(node)?;
                n += 1;
            }
            Err(e) => tracing::warn!(node = %node.id, error = %e, "no ingress address for a node"),
        }
    }
    Ok(n)
}
