//! What each node is told, read from the store: its overlays with every peer task's
//! address and VTEP, the names its tasks resolve (service VIPs, `tasks.<service>`,
//! aliases), the routing mesh's and host-mode published ports, and the swarm's managers
//! and roots. Pure functions over the store's tables, so they are tested without a
//! node.

use std::collections::HashMap;

use shoal_proto::*;

use crate::manager::store::Tables;
use crate::manager::tasks::state;

/// Whether `t` is `node`'s to run (assigned to it).
pub(super) fn is_for(t: &Task, node: &str) -> bool {
    t.node_id == node && state(t) as i32 >= TaskState::Assigned as i32
}

/// Every task assigned to `node`.
pub(super) fn tasks_for_in(t: &Tables, node: &str) -> Vec<Task> {
    t.tasks_on_node(node)
        .filter(|x| is_for(x, node))
        .cloned()
        .collect()
}

/// The registry credentials of `tasks`' services (`--with-registry-auth`), by service ID:
/// a node gets them with the tasks that need them, and no others.
pub(super) fn pull_auths(t: &Tables, tasks: &[Task]) -> HashMap<String, RegistryCredential> {
    let mut out = HashMap::new();
    for x in tasks {
        if out.contains_key(&x.service_id) {
            continue;
        }
        // only where they can be used: for the registry of the task's image
        let image = x
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .map_or("", |c| c.image.as_str());
        if let Some(c) = t
            .services
            .get(&x.service_id)
            .and_then(|s| s.registry_auth.as_ref())
            .filter(|c| crate::spec::image::auth_for(Some(c), image).is_some())
        {
            out.insert(x.service_id.clone(), c.clone());
        }
    }
    out
}

/// What a node needs with some of its tasks besides the tasks: their services' registry
/// credentials, and the secrets and configs (at the versions they name) of those that
/// may still run. Nothing else: a node never gets a secret none of its tasks uses.
#[derive(Default)]
pub(super) struct Needs {
    pub auths: HashMap<String, RegistryCredential>,
    pub secrets: Vec<Secret>,
    pub configs: Vec<Config>,
}

pub(super) fn needs(t: &Tables, tasks: &[Task]) -> Needs {
    use crate::manager::files::FileObject;
    fn add<T: FileObject>(
        t: &Tables,
        out: &mut Vec<T>,
        seen: &mut std::collections::HashSet<(String, u64)>,
        r: &FileReference,
    ) {
        let v = r.version.max(1);
        if !seen.insert((r.source_id.clone(), v)) {
            return;
        }
        // a version no longer kept: the task is refused on the node, naming it
        if let Some(d) = T::table(t).get(&r.source_id).and_then(|o| o.delivery(v)) {
            out.push(d);
        }
    }
    let mut n = Needs {
        auths: pull_auths(t, tasks),
        ..Default::default()
    };
    let mut seen = std::collections::HashSet::new();
    for x in tasks {
        if !x.may_run() {
            continue;
        }
        let Some(c) = x.spec.as_ref().and_then(|s| s.container.as_ref()) else {
            continue;
        };
        for r in &c.secrets {
            add(t, &mut n.secrets, &mut seen, r);
        }
        for r in &c.configs {
            add(t, &mut n.configs, &mut seen, r);
        }
    }
    n
}

/// What tasks on a network resolve: each attached service's name and aliases (its VIP,
/// or with dnsrr its running tasks' addresses), `tasks.<service>` (its running tasks'
/// addresses) and each running task's name. Tasks that are not running are left out.
pub(super) fn discovery(t: &Tables, network: &str) -> (Vec<DnsName>, Vec<Vip>) {
    use shoal_proto::endpoint_spec::ResolutionMode;
    let bare = |a: &str| crate::manager::ipam::host_part(a).to_string();
    let mut names: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut vips = Vec::new();
    for s in t.services.values() {
        let Some(spec) = &s.spec else { continue };
        let Some(att) = spec
            .task
            .as_ref()
            .and_then(|x| x.networks.iter().find(|a| a.target == network))
        else {
            continue;
        };
        let name = spec
            .annotations
            .as_ref()
            .map(|a| a.name.to_lowercase())
            .unwrap_or_default();
        let mut running = Vec::new();
        for x in t.tasks_of_service(&s.id) {
            if !serving(x) {
                continue;
            }
            for a in x.networks.iter().filter(|a| a.network_id == network) {
                if let Some(addr) = a.addresses.first() {
                    running.push(bare(addr));
                    if let Some(an) = x.annotations.as_ref().filter(|an| !an.name.is_empty()) {
                        names
                            .entry(an.name.to_lowercase())
                            .or_default()
                            .push(bare(addr));
                    }
                }
            }
        }
        let dnsrr = spec.endpoint.as_ref().map(|e| e.mode) == Some(ResolutionMode::Dnsrr as i32);
        let vip = s
            .endpoint
            .as_ref()
            .and_then(|e| e.virtual_ips.iter().find(|v| v.network_id == network))
            .map(|v| bare(&v.addr));
        let service_addrs = match (dnsrr, vip) {
            (false, Some(v)) => {
                vips.push(Vip {
                    addr: v.clone(),
                    backends: running.clone(),
                });
                vec![v]
            }
            _ => running.clone(),
        };
        names.insert(format!("tasks.{name}"), running);
        for n in std::iter::once(name).chain(att.aliases.iter().map(|a| a.to_lowercase())) {
            names
                .entry(n)
                .or_default()
                .extend(service_addrs.iter().cloned());
        }
    }
    // standalone containers' attachments (no service): their names and aliases
    for x in t.tasks_of_service("") {
        if state(x) != TaskState::Running || x.attachment_container.is_empty() {
            continue;
        }
        for a in x.networks.iter().filter(|a| a.network_id == network) {
            let Some(addr) = a.addresses.first() else {
                continue;
            };
            for n in std::iter::once(&x.attachment_container).chain(&a.aliases) {
                names.entry(n.to_lowercase()).or_default().push(bare(addr));
            }
        }
    }
    let names = names
        .into_iter()
        .map(|(name, addrs)| DnsName { name, addrs })
        .collect();
    (names, vips)
}

/// The ports published in ingress mode, each with its service's running tasks' addresses
/// on the ingress network.
pub(super) fn mesh_ports(t: &Tables, ingress: &str) -> Vec<PublishedPort> {
    use shoal_proto::port_config::PublishMode;
    let mut out = Vec::new();
    for s in t.services.values() {
        let Some(e) = &s.endpoint else { continue };
        let backends: Vec<String> = t
            .tasks_of_service(&s.id)
            .filter(|x| serving(x))
            .flat_map(|x| x.networks.iter().filter(|a| a.network_id == ingress))
            .filter_map(|a| a.addresses.first())
            .map(|a| crate::manager::ipam::host_part(a).to_string())
            .collect();
        for p in &e.ports {
            if p.publish_mode != PublishMode::Ingress as i32 || p.published_port == 0 {
                continue;
            }
            out.push(PublishedPort {
                published: p.published_port,
                protocol: crate::spec::parse::protocol_name(p.protocol).into(),
                target: p.target_port,
                backends: backends.clone(),
            });
        }
    }
    out
}

/// The ports published in host mode by `node`'s running tasks, each to its task's
/// address on the ingress network: they answer on this node only.
pub(super) fn host_ports(t: &Tables, ingress: &str, node: &str) -> Vec<PublishedPort> {
    let mut out = Vec::new();
    for x in t.tasks_on_node(node) {
        if state(x) != TaskState::Running {
            continue;
        }
        let Some(addr) = x
            .networks
            .iter()
            .find(|a| a.network_id == ingress)
            .and_then(|a| a.addresses.first())
        else {
            continue;
        };
        let Some(s) = t.services.get(&x.service_id) else {
            continue;
        };
        for p in crate::manager::allocator::host_ports(s) {
            out.push(PublishedPort {
                published: p.published_port,
                protocol: crate::spec::parse::protocol_name(p.protocol).into(),
                target: p.target_port,
                backends: vec![crate::manager::ipam::host_part(addr).to_string()],
            });
        }
    }
    out
}

/// The IP part of a node's address (`ip` or `ip:port`).
pub(super) fn node_ip(t: &Tables, node: &str) -> Option<std::net::IpAddr> {
    crate::manager::network::node_addr_ip(t.nodes.get(node)?)
}

/// The overlays `node`'s tasks are on, each with every task of the network on another
/// node (address and that node's VTEP), until they have stopped.
pub fn network_views(t: &Tables, node: &str) -> Vec<NetworkView> {
    // a task keeps its place on its networks until it has stopped: one told to stop
    // drains (it has left its VIPs and the mesh) and still answers the connections it
    // has, whose packets need its peers' entries
    let live = |x: &Task| !state(x).is_terminal();
    let mut mine: std::collections::BTreeSet<&str> = t
        .tasks_on_node(node)
        .filter(|x| live(x))
        .flat_map(|x| x.networks.iter().map(|a| a.network_id.as_str()))
        .collect();
    // the routing mesh: every node has ingress while a port is published on it
    let ingress = t
        .networks
        .values()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress));
    let ports = ingress.map(|i| mesh_ports(t, &i.id)).unwrap_or_default();
    if let (Some(i), false) = (ingress, ports.is_empty()) {
        mine.insert(i.id.as_str());
    }
    if mine.is_empty() {
        return vec![];
    }
    let local = node_ip(t, node).map(|i| i.to_string()).unwrap_or_default();
    let mut views: std::collections::BTreeMap<&str, NetworkView> =
        std::collections::BTreeMap::new();
    for id in &mine {
        let Some(n) = t.networks.get(*id) else {
            continue;
        };
        let ipam = n.ipam.first().cloned().unwrap_or_default();
        views.insert(
            id,
            NetworkView {
                network_id: n.id.clone(),
                vni: n.vni,
                subnet: ipam.subnet,
                gateway: ipam.gateway,
                internal: n.spec.as_ref().is_some_and(|s| s.internal),
                local_vtep: local.clone(),
                peers: vec![],
                names: vec![],
                vips: vec![],
                ingress: false,
                ports: vec![],
                local_addr: String::new(),
            },
        );
    }
    for v in views.values_mut() {
        (v.names, v.vips) = discovery(t, &v.network_id);
        if ingress.is_some_and(|i| i.id == v.network_id) {
            v.ingress = true;
            v.ports = ports.clone();
            v.ports.extend(host_ports(t, &v.network_id, node));
            // each node's own ingress address, its own and the others' (as peers: the
            // tasks' answers go back to the node that forwarded the request)
            for n in t.nodes.values() {
                for a in n
                    .attachments
                    .iter()
                    .filter(|a| a.network_id == v.network_id)
                {
                    let Some(addr) = a.addresses.first() else {
                        continue;
                    };
                    if n.id == node {
                        v.local_addr = addr.clone();
                    } else if let Some(vtep) = node_ip(t, &n.id) {
                        v.peers.push(NetworkPeer {
                            addr: crate::manager::ipam::host_part(addr).to_string(),
                            vtep: vtep.to_string(),
                        });
                    }
                }
            }
        }
    }
    for x in t.tasks.values() {
        if x.node_id == node || x.node_id.is_empty() || !live(x) {
            continue;
        }
        for a in &x.networks {
            let Some(v) = views.get_mut(a.network_id.as_str()) else {
                continue;
            };
            let Some(vtep) = node_ip(t, &x.node_id) else {
                continue;
            };
            for addr in &a.addresses {
                v.peers.push(NetworkPeer {
                    addr: crate::manager::ipam::host_part(addr).to_string(),
                    vtep: vtep.to_string(),
                });
            }
        }
    }
    views.into_values().collect()
}

/// What a session tells its node about the swarm, as the store has it now.
pub(super) fn swarm_view(t: &Tables, mut m: SessionMessage) -> SessionMessage {
    m.managers = crate::manager::ca::manager_addrs(t);
    m.desired_role = t
        .nodes
        .get(&m.node_id)
        .and_then(|n| n.spec.as_ref())
        .map(|s| s.desired_role)
        .unwrap_or(0);
    if let Some(c) = t.clusters.values().next() {
        m.roots_pem = crate::manager::ca::trusted_roots(c);
        m.ca_digest = crate::manager::ca::root_ca(c)
            .map(|r| r.digest())
            .unwrap_or_default();
    }
    m
}

/// Whether a task takes its service's connections: it runs (healthy, with a health
/// check) and is not being stopped. A task told to stop leaves its VIP, DNS and the
/// routing mesh at once, and its node lets it drain before it stops it.
fn serving(x: &Task) -> bool {
    // (a job's task runs to COMPLETE)
    let meant = x.desired_state <= TaskState::Running as i32
        || x.desired_state == TaskState::Complete as i32;
    state(x) == TaskState::Running && meant
}
