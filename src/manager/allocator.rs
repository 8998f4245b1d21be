//! The allocator: what the network side of a service and its tasks needs, given out of
//! the store's pools inside the scheduler's commit (so that a task can go from new to
//! assigned in one). Service VIPs on each of their networks, ingress published ports
//! (from 30000-32767 when 0), task addresses, and each node's own address on the
//! routing mesh. It rebuilds every pool from the store on each pass, so what is in use
//! is what the store says: an address is handed to one live holder at a time, and goes
//! back to the pool when its task has stopped or its service is gone.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use shoal_proto::endpoint::VirtualIp;
use shoal_proto::endpoint_spec::ResolutionMode;
use shoal_proto::port_config::PublishMode;
use shoal_proto::*;

use super::ipam::{self, Pool};
use super::store::{StoreError, StoreItem, Tx};
use super::tasks::state;

/// Where `published` ports of 0 are taken from, as in Swarm.
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

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
