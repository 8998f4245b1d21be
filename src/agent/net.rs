//! The node's overlays, driven by what the managers send: each network its tasks are on
//! (with every peer elsewhere), and a network namespace per task connected to each of
//! its networks. Built with shoal-net; a simulated node has none of this.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::manager::ipam::addr_of;
use shoal_net::dns::{Directory, Names, TaskDns};
use shoal_net::netns::Netns;
use shoal_net::overlay::{Endpoint, NetworkSpec, Overlays, Peer};
use shoal_proto::{NetworkView, Task};
use tokio::sync::{watch, OnceCell};

/// One node's networking.
pub struct NodeNet {
    dir: PathBuf,
    overlays: OnceCell<Overlays>,
    views: watch::Sender<HashMap<String, NetworkView>>,
    /// One change of the node's links at a time, and what they were last made.
    links: tokio::sync::Mutex<Built>,
    /// The names the managers sent, for every task's resolver.
    dns: Directory,
    /// Each networked task's networks, resolver and VIP rules last loaded.
    tasks: std::sync::Mutex<HashMap<String, TaskEntry>>,
    /// Bumped each time a task's resolver starts (its namespace is then complete).
    resolvers: watch::Sender<u64>,
}

/// What the node's links were last made: a network whose spec and peers have not
/// changed is not touched again (every networked task change sends every view).
#[derive(Default)]
struct Built {
    networks: HashMap<u32, (NetworkSpec, BTreeSet<Peer>)>,
    /// The routing mesh's ports as last loaded (None: never).
    mesh: Option<Vec<shoal_net::lb::Published>>,
    /// Underlay MTUs by local address (read from the system once).
    mtu: HashMap<Ipv4Addr, u32>,
}

#[derive(Default)]
struct TaskEntry {
    networks: Vec<String>,
    vip_rules: String,
    dns: Option<TaskDns>,
}

/// What a networked task's container gets: its namespace, and the resolv.conf that
/// points it at its resolver.
pub struct TaskNet {
    pub netns: PathBuf,
    pub resolv_conf: PathBuf,
}

fn spec_of(v: &NetworkView, mtus: &mut HashMap<Ipv4Addr, u32>) -> Result<NetworkSpec, String> {
    let (_, prefix) = v.subnet.split_once('/').ok_or_else(|| {
        format!(
            "network {}: subnet {:?} has no prefix",
            v.network_id, v.subnet
        )
    })?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("network {}: bad subnet {:?}", v.network_id, v.subnet))?;
    let gateway: Ipv4Addr = v
        .gateway
        .parse()
        .map_err(|_| format!("network {}: bad gateway {:?}", v.network_id, v.gateway))?;
    let local: Ipv4Addr = v.local_vtep.parse().map_err(|_| {
        format!(
            "network {}: this node's underlay address {:?} is not an IPv4 address (join with an IPv4 --advertise-addr)",
            v.network_id, v.local_vtep
        )
    })?;
    Ok(NetworkSpec {
        vni: v.vni,
        gateway,
        prefix,
        local,
        underlay_mtu: *mtus.entry(local).or_insert_with(|| underlay_mtu(local)),
        uplink: !v.internal,
        ingress: v.ingress,
        ingress_addr: addr_of(&v.local_addr),
    })
}

/// The MTU of the interface that holds `local` (1500 if it cannot be read).
fn underlay_mtu(local: Ipv4Addr) -> u32 {
    // /sys has no address index; `ip -o addr` would need a process: read each
    // interface's MTU and pick the one whose address matches, via getifaddrs
    nix::ifaddrs::getifaddrs()
        .ok()
        .and_then(|mut it| {
            it.find(|i| {
                i.address
                    .as_ref()
                    .and_then(|a| a.as_sockaddr_in())
                    .is_some_and(|s| s.ip() == local)
            })
        })
        .and_then(|i| {
            std::fs::read_to_string(format!("/sys/class/net/{}/mtu", i.interface_name)).ok()
        })
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1500)
}

impl NodeNet {
    /// Networking whose namespaces live under `dir`, its tasks' resolvers forwarding
    /// what is not the swarm's to `dns`.
    pub fn new(dir: &Path, dns: Directory) -> NodeNet {
        NodeNet {
            dir: dir.to_path_buf(),
            overlays: OnceCell::new(),
            views: watch::channel(HashMap::new()).0,
            links: tokio::sync::Mutex::default(),
            dns,
            tasks: std::sync::Mutex::default(),
            resolvers: watch::channel(0).0,
        }
    }

    async fn overlays(&self) -> Result<&Overlays, String> {
        self.overlays
            .get_or_try_init(|| async {
                let host = shoal_net::netns::netlink_in(None)
                    .await
                    .map_err(|e| e.to_string())?;
                let me = Netns::open(Path::new(&format!("/proc/{}/ns/net", std::process::id())));
                Ok(Overlays::new(&self.dir.join("overlays"), host, me))
            })
            .await
    }

    fn task_path(&self, task_id: &str) -> PathBuf {
        self.dir.join("tasks").join(task_id)
    }

    /// Makes the node's overlays what the managers say: each network built with exactly
    /// its peers; networks no task here is on any more removed.
    pub async fn apply(&self, views: Vec<NetworkView>) {
        let mut built = self.links.lock().await;
        let ov = match self.overlays().await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "no netlink: overlays cannot be built");
                return;
            }
        };
        let mut wanted = BTreeSet::new();
        for v in &views {
            let spec = match spec_of(v, &mut built.mtu) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build a network");
                    continue;
                }
            };
            wanted.insert(v.vni);
            let peers: BTreeSet<Peer> = v
                .peers
                .iter()
                .filter_map(|p| {
                    Some(Peer {
                        addr: p.addr.parse().ok()?,
                        vtep: p.vtep.parse().ok()?,
                    })
                })
                .collect();
            let unchanged = built
                .networks
                .get(&v.vni)
                .is_some_and(|(s, p)| *s == spec && *p == peers);
            if unchanged && ov.netns_of(v.vni).exists() {
                continue;
            }
            built.networks.remove(&v.vni);
            if let Err(e) = ov.ensure(&spec).await {
                tracing::error!(network = %v.network_id, error = %e, "building the network failed");
                continue;
            }
            if let Err(e) = ov.set_peers(v.vni, &peers).await {
                tracing::error!(network = %v.network_id, error = %e, "setting the network's peers failed");
                continue;
            }
            // before the mesh's rules below, which may send connections to new peers
            if spec.ingress {
                if let Err(e) = ov.set_ingress_snat(&spec, &peers).await {
                    tracing::error!(network = %v.network_id, error = %e, "loading the ingress network's rules failed");
                    continue;
                }
            }
            built.networks.insert(v.vni, (spec, peers));
        }
        let ports: Vec<shoal_net::lb::Published> = views
            .iter()
            .filter(|v| v.ingress)
            .flat_map(|v| v.ports.iter())
            .map(|p| shoal_net::lb::Published {
                port: p.published,
                protocol: p.protocol.clone(),
                target: p.target,
                backends: p.backends.iter().filter_map(|b| b.parse().ok()).collect(),
            })
            .collect();
        let changed =
            built.mesh.as_ref() != Some(&ports) && !(built.mesh.is_none() && ports.is_empty());
        if changed {
            match ov.set_mesh(&ports).await {
                Ok(()) => built.mesh = Some(ports),
                Err(e) => tracing::error!(error = %e, "loading the routing mesh's rules failed"),
            }
        }
        for vni in ov.present().difference(&wanted) {
            built.networks.remove(vni);
            if let Err(e) = ov.remove(*vni).await {
                tracing::warn!(vni, error = %e, "removing a network no task uses failed");
            }
        }
        let names: Names = views
            .iter()
            .map(|v| {
                let m = v
                    .names
                    .iter()
                    .map(|n| {
                        let addrs = n.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                        (n.name.clone(), addrs)
                    })
                    .collect();
                (v.network_id.clone(), m)
            })
            .collect();
        self.dns.set(names);
        self.views.send_replace(
            views
                .into_iter()
                .map(|v| (v.network_id.clone(), v))
                .collect(),
        );
        let ids: Vec<String> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.refresh_vips(&id).await;
        }
    }

    /// Loads the task's VIP rules (its networks' VIPs and their running tasks) if they
    /// changed since last loaded.
    async fn refresh_vips(&self, task_id: &str) {
        let Some((nets, last)) = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task_id)
            .map(|e| (e.networks.clone(), e.vip_rules.clone()))
        else {
            return;
        };
        let vips: Vec<(Ipv4Addr, Vec<Ipv4Addr>)> = {
            let views = self.views.borrow();
            nets.iter()
                .filter_map(|n| views.get(n))
                .flat_map(|v| v.vips.iter())
                .filter_map(|v| {
                    let backends = v.backends.iter().filter_map(|b| b.parse().ok()).collect();
                    Some((v.addr.parse().ok()?, backends))
                })
                .collect()
        };
        let rules = shoal_net::lb::ruleset(&vips);
        if rules == last {
            return;
        }
        let ns = Netns::open(&self.task_path(task_id));
        match shoal_net::lb::apply(&ns, &rules).await {
            Ok(()) => {
                if let Some(e) = self
                    .tasks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(task_id)
                {
                    e.vip_rules = rules;
                }
            }
            Err(e) => {
                tracing::warn!(task.id = task_id, error = %e, "loading the task's VIP rules failed")
            }
        }
    }

    /// A network namespace for the task, connected to each of its networks. The default
    /// route goes through ingress if the task is on it (a published port's connection
    /// that keeps the client's address must be answered through this node's side of
    /// ingress), otherwise through its first non-internal network. Waits (a few seconds)
    /// for the managers' view of a network the task is on.
    pub async fn task_netns(&self, t: &Task) -> Result<TaskNet, String> {
        let mut rx = self.views.subscribe();
        let ids: Vec<String> = t.networks.iter().map(|a| a.network_id.clone()).collect();
        let views = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|m| ids.iter().all(|i| m.contains_key(i))),
        )
        .await
        .map_err(|_| "the managers did not send this node the task's networks".to_string())?
        .map_err(|_| "the node's networking stopped".to_string())?
        .clone();
        let mut built = self.links.lock().await;
        let ov = self.overlays().await?;
        let path = self.task_path(&t.id);
        let ns = Netns::create(&path).map_err(|e| e.to_string())?;
        let mut routed = false;
        let via_ingress = t
            .networks
            .iter()
            .position(|a| views.get(&a.network_id).is_some_and(|v| v.ingress));
        for (i, a) in t.networks.iter().enumerate() {
            let v = &views[&a.network_id];
            let spec = spec_of(v, &mut built.mtu)?;
            let addr: Ipv4Addr = a
                .addresses
                .first()
                .and_then(|x| addr_of(x))
                .ok_or_else(|| format!("no address on network {}", a.network_id))?;
            let ep = Endpoint {
                netns: ns.path().to_path_buf(),
                ifname: format!("eth{i}"),
                addr,
                default_route: match via_ingress {
                    Some(k) => k == i,
                    None => !routed && !v.internal,
                },
            };
            routed |= ep.default_route;
            // built by the views, normally; built here if the task came first
            let ready = built.networks.get(&v.vni).is_some_and(|(s, _)| *s == spec)
                && ov.netns_of(v.vni).exists();
            let connected = match if ready {
                Ok(())
            } else {
                ov.ensure(&spec).await
            } {
                Ok(()) => ov.attach(&spec, &ep).await,
                Err(e) => Err(e),
            };
            if let Err(e) = connected {
                let _ = ns.remove();
                return Err(format!("connecting to network {}: {e}", a.network_id));
            }
        }
        drop(built);
        let resolv_conf = match self.ensure_dns(t).await {
            Ok(r) => r,
            Err(e) => {
                let _ = ns.remove();
                return Err(e);
            }
        };
        Ok(TaskNet {
            netns: path,
            resolv_conf,
        })
    }

    fn resolv_conf(&self, task_id: &str) -> PathBuf {
        self.dir.join("resolv").join(format!("{task_id}.conf"))
    }

    /// Waits (up to `limit`) until the task's namespace and resolver are there: a
    /// standalone container joins its network attachment's once the agent has built it.
    pub async fn wait_ready(&self, task_id: &str, limit: Duration) -> Result<TaskNet, String> {
        let mut rx = self.resolvers.subscribe();
        let ready = || {
            self.tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(task_id)
                .is_some_and(|e| e.dns.is_some())
                && self.resolv_conf(task_id).exists()
        };
        let waited = tokio::time::timeout(limit, async {
            while !ready() {
                if rx.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        match waited {
            Ok(true) => Ok(TaskNet {
                netns: self.task_path(task_id),
                resolv_conf: self.resolv_conf(task_id),
            }),
            _ => Err(format!(
                "this node did not get the network attachment ready within {limit:?} (are the managers reachable, and does the network have free addresses?)"
            )),
        }
    }

    /// Starts the task's resolver (127.0.0.11 in its namespace) if it does not run (a
    /// restarted daemon re-adopting the task), and writes its resolv.conf.
    pub async fn ensure_dns(&self, t: &Task) -> Result<PathBuf, String> {
        let conf = self.resolv_conf(&t.id);
        let nets: Vec<String> = t.networks.iter().map(|a| a.network_id.clone()).collect();
        let running = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(t.id.clone())
            .or_insert_with(|| TaskEntry {
                networks: nets.clone(),
                ..Default::default()
            })
            .dns
            .is_some();
        self.refresh_vips(&t.id).await;
        if !running {
            let ns = Netns::open(&self.task_path(&t.id));
            let server = shoal_net::dns::serve(&ns, self.dns.clone(), nets)
                .await
                .map_err(|e| format!("the task's resolver: {e}"))?;
            if let Some(e) = self
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&t.id)
            {
                e.dns = Some(server);
            }
        }
        if let Some(d) = conf.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let text = format!("nameserver {}\noptions ndots:0\n", shoal_net::dns::RESOLVER);
        // the container's /etc/resolv.conf (bind-mounted, so written in place): readable
        // by every user in it, as Docker's
        std::fs::write(&conf, text)
            .and_then(|_| {
                std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            })
            .map_err(|e| format!("{}: {e}", conf.display()))?;
        self.resolvers.send_modify(|n| *n += 1);
        Ok(conf)
    }

    /// The task's namespace, if it has one (a restarted agent re-adopting it).
    pub fn existing(&self, task_id: &str) -> Option<PathBuf> {
        let p = self.task_path(task_id);
        p.exists().then_some(p)
    }

    /// Removes a task's namespace (and so its end of every network).
    pub fn release(&self, task_id: &str) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task_id);
        let _ = std::fs::remove_file(self.resolv_conf(task_id));
        if let Err(e) = Netns::open(&self.task_path(task_id)).remove() {
            tracing::warn!(task.id = task_id, error = %e, "removing the task's network namespace failed");
        }
    }

    /// Removes the namespaces of tasks not in `keep` (left by a crash or a restart).
    pub fn sweep(&self, keep: &HashSet<&str>) {
        let Ok(rd) = std::fs::read_dir(self.dir.join("tasks")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(name.as_str()) {
                self.release(&name);
            }
        }
    }
}
