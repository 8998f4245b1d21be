//! One overlay network on one node, built with netlink.
//!
//! Each network has a namespace of its own on the node (`ov-<vni>`), holding a bridge
//! and the network's VXLAN device; each task's namespace gets a veth whose other end is
//! a port of that bridge. Why a namespace per network, not devices in the host's:
//! networks may have overlapping subnets, nothing of one network is routable from
//! another or from the host by accident, and removing the namespace removes every device
//! of the network at once, so a crash leaves nothing that a restart cannot sweep (Docker's
//! overlay driver makes the same choice).
//!
//! The VXLAN device is created in the host's namespace (so its UDP socket uses the host's
//! underlay) and then moved into the network's. It neither learns nor floods: forwarding
//! entries (task MAC → the node's VTEP address) and neighbour entries (task IP → MAC,
//! answered by the device's ARP proxy) come from the cluster state the managers push.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoVxlan, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use crate::netns::Netns;
use crate::NetError;

/// The VXLAN UDP port (IANA's, as Swarm uses).
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN adds 50 bytes: overlay devices get the underlay's MTU minus that.
pub const VXLAN_OVERHEAD: u32 = 50;

/// What a node needs to build one network.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSpec {
    pub vni: u32,
    /// The bridge's address (the subnet's gateway) with the subnet's prefix length.
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// This node's underlay address: the VTEP's source.
    pub local: Ipv4Addr,
    /// The underlay's MTU (1500 if unknown).
    pub underlay_mtu: u32,
    /// A way out through the host (not for internal networks).
    pub uplink: bool,
    /// The routing mesh's network: the host routes it through the uplink, and what
    /// arrives that way is source-NATed to this node's own address on it (`ingress_addr`),
    /// so that a task's answer comes back to this node whichever node the task is on.
    pub ingress: bool,
    pub ingress_addr: Option<Ipv4Addr>,
}

/// Uplinks (network namespace ↔ host) are /30s of 198.18.0.0/15, a range set aside for
/// benchmarks and so unlikely to clash with a real network; one per VNI.
pub const UPLINK_RANGE: &str = "198.18.0.0/15";

/// The host's and the network's ends of a network's uplink.
pub fn uplink_addrs(vni: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + ((vni % 32768) << 2);
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// A task's place on a network: its namespace, address and the name of its interface
/// there.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub netns: PathBuf,
    pub ifname: String,
    pub addr: Ipv4Addr,
    /// Set the default route through the network's gateway (not for internal networks,
    /// and only on one network per task).
    pub default_route: bool,
}

/// A task elsewhere: its address on the network and its node's VTEP address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub addr: Ipv4Addr,
    pub vtep: Ipv4Addr,
}

/// A task's MAC, from its address (as Docker derives it): 02:42 and the four bytes.
pub fn mac_of(a: Ipv4Addr) -> [u8; 6] {
    let o = a.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

const BRIDGE: &str = "br0";
const VXLAN: &str = "vxlan0";

/// A node's overlays, with their namespaces under `dir`; links are made from `host`
/// (the node's namespace; a test host's namespace in tests).
pub struct Overlays {
    dir: PathBuf,
    host: Handle,
    /// The host's namespace (for its forwarding switch and rules).
    host_ns: Netns,
    /// The host's forwarding and uplink rules, set up with the first uplink.
    host_ready: tokio::sync::OnceCell<()>,
    /// The host's VXLAN rules ([`vxlan_rules`]), set up with the first network.
    vxlan_ready: tokio::sync::OnceCell<()>,
    /// The networks whose namespace rules this process has loaded (built here, or found
    /// built by an earlier daemon, perhaps an older version, and loaded once).
    rules_loaded: std::sync::Mutex<BTreeSet<u32>>,
}

fn nl(what: &str, e: rtnetlink::Error) -> NetError {
    NetError::Netlink(format!("{what}: {e}"))
}

async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // no such device
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(&format!("looking up {name}"), e)),
    }
}

async fn must_index(h: &Handle, name: &str) -> Result<u32, NetError> {
    index_of(h, name)
        .await?
        .ok_or_else(|| NetError::Netlink(format!("{name} vanished")))
}

async fn set(h: &Handle, m: LinkMessage, what: &str) -> Result<(), NetError> {
    h.link().set(m).execute().await.map_err(|e| nl(what, e))
}

async fn up(h: &Handle, index: u32, what: &str) -> Result<(), NetError> {
    set(h, LinkUnspec::new_with_index(index).up().build(), what).await
}

/// Deletes the link `name` if there is one (what a crash or an earlier attempt left).
async fn delete_named(h: &Handle, name: &str) -> Result<(), NetError> {
    if let Some(i) = index_of(h, name).await? {
        let _ = h.link().del(i).execute().await;
    }
    Ok(())
}

/// Moves link `index` (seen through `h`) into namespace `to`.
async fn move_into(h: &Handle, index: u32, to: &Netns, what: &str) -> Result<(), NetError> {
    let f = to.file()?;
    let m = LinkUnspec::new_with_index(index)
        .setns_by_fd(f.as_raw_fd())
        .build();
    set(h, m, what).await
}

impl NetworkSpec {
    /// The MTU of the network's devices: the underlay's less VXLAN's overhead.
    fn mtu(&self) -> u32 {
        self.underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
    }
}

impl Overlays {
    pub fn new(dir: &Path, host: Handle, host_ns: Netns) -> Overlays {
        Overlays {
            dir: dir.to_path_buf(),
            host,
            host_ns,
            host_ready: tokio::sync::OnceCell::new(),
            vxlan_ready: tokio::sync::OnceCell::new(),
            rules_loaded: std::sync::Mutex::default(),
        }
    }

    pub fn netns_of(&self, vni: u32) -> Netns {
        Netns::open(&self.dir.join(format!("ov-{vni}")))
    }

    /// The networks built on this node (by VNI), from the namespaces present.
    pub fn present(&self) -> BTreeSet<u32> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("ov-")?.parse().ok())
            .collect()
    }

    /// Builds the network on this node if it is not there yet (idempotent).
    pub async fn ensure(&self, spec: &NetworkSpec) -> Result<(), NetError> {
        self.vxlan_ready
            .get_or_try_init(|| async {
                crate::lb::apply(&self.host_ns, &vxlan_rules(spec.local)).await
            })
            .await?;
        let ns = self.netns_of(spec.vni);
        if ns.exists() {
            let h = ns.netlink().await?;
            if index_of(&h, VXLAN).await?.is_some() && index_of(&h, BRIDGE).await?.is_some() {
                // the node's ingress address may have come after the network was built
                if let (true, Some(a)) = (spec.ingress && spec.uplink, spec.ingress_addr) {
                    let br = must_index(&h, BRIDGE).await?;
                    self.ingress_addr(&h, br, a, spec.prefix).await?;
                }
                // once per daemon, as this version makes them (a namespace an older
                // version built may hold other rules, and br_netfilter may have been
                // loaded since)
                if !self.rules_loaded(spec.vni) {
                    bridge_hooks_off(&ns).await?;
                    if spec.uplink {
                        crate::lb::apply(&ns, &ns_rules()).await?;
                    }
                    self.set_rules_loaded(spec.vni, true);
                }
                return Ok(());
            }
        }
        // from scratch: a half-made network (a crash while building) goes first
        let built = self.build(spec).await;
        if built.is_err() {
            let _ = self.remove(spec.vni).await;
        }
        built
    }

    async fn build(&self, spec: &NetworkSpec) -> Result<(), NetError> {
        let ns = Netns::create(self.netns_of(spec.vni).path())?;
        bridge_hooks_off(&ns).await?;
        let mtu = spec.mtu();
        // the VXLAN device, made in the host's namespace under a temporary name
        let tmp = format!("shvx{}", spec.vni);
        delete_named(&self.host, &tmp).await?;
        let vx = LinkVxlan::new(&tmp, spec.vni)
            .local(spec.local)
            .port(VXLAN_PORT)
            .learning(false)
            .append_info_data(InfoVxlan::Proxy(true))
            .mtu(mtu)
            .build();
        self.host.link().add(vx).execute().await.map_err(|e| {
            nl(
                &format!("creating the VXLAN device for VNI {}", spec.vni),
                e,
            )
        })?;
        let idx = must_index(&self.host, &tmp).await?;
        if let Err(e) = move_into(&self.host, idx, &ns, "moving the VXLAN device").await {
            let _ = self.host.link().del(idx).execute().await;
            return Err(e);
        }
        let h = ns.netlink().await?;
        up(&h, must_index(&h, "lo").await?, "lo up").await?;
        h.link()
            .add(LinkBridge::new(BRIDGE).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(|e| nl("creating the bridge", e))?;
        let br = must_index(&h, BRIDGE).await?;
        h.address()
            .add(br, IpAddr::V4(spec.gateway), spec.prefix)
            .execute()
            .await
            .map_err(|e| nl("the gateway address", e))?;
        if let Some(a) = spec.ingress_addr {
            self.ingress_addr(&h, br, a, spec.prefix).await?;
        }
        let vx = must_index(&h, &tmp).await?;
        set(
            &h,
            LinkUnspec::new_with_index(vx)
                .name(VXLAN.to_string())
                .controller(br)
                .build(),
            "attaching the VXLAN device to the bridge",
        )
        .await?;
        up(&h, vx, "VXLAN up").await?;
        if spec.uplink {
            self.uplink(spec, &ns, &h).await?;
        }
        self.set_rules_loaded(spec.vni, true);
        Ok(())
    }

    /// The network's way out: a veth to the host's namespace; the network's namespace
    /// routes to it and masquerades, the host forwards and masquerades again (so
    /// networks with overlapping subnets can all get out). Networks cannot reach one
    /// another through it ([`host_rules`]).
    async fn uplink(&self, spec: &NetworkSpec, ns: &Netns, h: &Handle) -> Result<(), NetError> {
        let (host_ip, ns_ip) = uplink_addrs(spec.vni);
        let host_end = format!("shup{}", spec.vni);
        delete_named(&self.host, &host_end).await?;
        self.host
            .link()
            .add(LinkVeth::new(&host_end, "up0").build())
            .execute()
            .await
            .map_err(|e| nl("creating the network's uplink", e))?;
        let peer = must_index(&self.host, "up0").await?;
        move_into(
            &self.host,
            peer,
            ns,
            "moving the uplink into the network's namespace",
        )
        .await?;
        let hi = must_index(&self.host, &host_end).await?;
        self.host
            .address()
            .add(hi, IpAddr::V4(host_ip), 30)
            .execute()
            .await
            .map_err(|e| nl("the uplink's host address", e))?;
        up(&self.host, hi, "uplink up").await?;
        let ui = must_index(h, "up0").await?;
        h.address()
            .add(ui, IpAddr::V4(ns_ip), 30)
            .execute()
            .await
            .map_err(|e| nl("the uplink's address", e))?;
        up(h, ui, "uplink up").await?;
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(host_ip)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| nl("the network's default route", e))?;
        forwarding_on(ns).await?;
        self.host_ready
            .get_or_try_init(|| async {
                forwarding_on(&self.host_ns).await?;
                crate::lb::apply(&self.host_ns, &host_rules()).await
            })
            .await?;
        if spec.ingress {
            let net = Ipv4Addr::from(u32::from(spec.gateway) & (u32::MAX << (32 - spec.prefix)));
            self.host
                .route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(net, spec.prefix)
                        .gateway(ns_ip)
                        .build(),
                )
                .replace()
                .execute()
                .await
                .map_err(|e| nl("the host's route to the ingress network", e))?;
        }
        crate::lb::apply(ns, &ns_rules()).await
    }

    fn rules_loaded(&self, vni: u32) -> bool {
        self.rules_loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&vni)
    }

    fn set_rules_loaded(&self, vni: u32, loaded: bool) {
        let mut s = self.rules_loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded {
            s.insert(vni);
        } else {
            s.remove(&vni);
        }
    }

    /// The bridge answers as this node's ingress address: the address, and as MAC the
    /// one the other nodes' neighbour entries give it. Idempotent.
    async fn ingress_addr(
        &self,
        h: &Handle,
        br: u32,
        a: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        set(
            h,
            LinkUnspec::new_with_index(br)
                .address(mac_of(a).to_vec())
                .build(),
            "the bridge's MAC",
        )
        .await?;
        h.address()
            .add(br, IpAddr::V4(a), prefix)
            .replace()
            .execute()
            .await
            .map_err(|e| nl("the node's ingress address", e))
    }

    /// The routing mesh on this node: each published port, on the node's own addresses,
    /// DNATed to one of its service's running tasks on the ingress network (none: the
    /// table is emptied).
    pub async fn set_mesh(&self, ports: &[crate::lb::Published]) -> Result<(), NetError> {
        crate::lb::apply(&self.host_ns, &crate::lb::mesh_rules(ports)).await
    }

    /// The ingress network's source NAT on this node ([`ingress_rules`]), for its tasks
    /// on other nodes (`peers`).
    pub async fn set_ingress_snat(
        &self,
        spec: &NetworkSpec,
        peers: &BTreeSet<Peer>,
    ) -> Result<(), NetError> {
        let from = spec.ingress_addr.unwrap_or(spec.gateway);
        let remote = peers.iter().map(|p| p.addr).collect();
        crate::lb::apply(&self.netns_of(spec.vni), &ingress_rules(from, &remote)).await
    }

    /// Removes the network from this node: its namespace, and with it every device.
    pub async fn remove(&self, vni: u32) -> Result<(), NetError> {
        self.set_rules_loaded(vni, false);
        // the host's ends go now, not when the namespace is finally freed
        for name in [format!("shvx{vni}"), format!("shup{vni}")] {
            delete_named(&self.host, &name).await?;
        }
        self.netns_of(vni).remove()
    }

    /// Connects a task's namespace to the network: a veth pair, one end a bridge port,
    /// the other `ifname` in the task's namespace with its address, MAC and routes.
    pub async fn attach(&self, spec: &NetworkSpec, ep: &Endpoint) -> Result<(), NetError> {
        let ns = self.netns_of(spec.vni);
        let h = ns.netlink().await?;
        let mtu = spec.mtu();
        let host_end = port_name(ep.addr);
        delete_named(&h, &host_end).await?;
        let tmp = format!("t{host_end}");
        h.link()
            .add(LinkVeth::new(&host_end, &tmp).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| nl("creating the task's veth pair", e))?;
        let br = must_index(&h, BRIDGE).await?;
        let port = must_index(&h, &host_end).await?;
        set(
            &h,
            LinkUnspec::new_with_index(port).controller(br).up().build(),
            "attaching the veth to the bridge",
        )
        .await?;
        let peer = must_index(&h, &tmp).await?;
        let task_ns = Netns::open(&ep.netns);
        move_into(
            &h,
            peer,
            &task_ns,
            "moving the veth into the task's namespace",
        )
        .await?;
        let th = task_ns.netlink().await?;
        let i = must_index(&th, &tmp).await?;
        set(
            &th,
            LinkUnspec::new_with_index(i)
                .name(ep.ifname.clone())
                .address(mac_of(ep.addr).to_vec())
                .mtu(mtu)
                .build(),
            "naming the task's interface",
        )
        .await?;
        th.address()
            .add(i, IpAddr::V4(ep.addr), spec.prefix)
            .execute()
            .await
            .map_err(|e| nl("the task's address", e))?;
        up(&th, i, "task interface up").await?;
        up(&th, must_index(&th, "lo").await?, "lo up").await?;
        if ep.default_route {
            let r = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(spec.gateway)
                .output_interface(i)
                .build();
            th.route()
                .add(r)
                .execute()
                .await
                .map_err(|e| nl("the task's default route", e))?;
        }
        Ok(())
    }

    /// Disconnects a task (its bridge port goes; the task's end goes with it).
    pub async fn detach(&self, vni: u32, addr: Ipv4Addr) -> Result<(), NetError> {
        let ns = self.netns_of(vni);
        if !ns.exists() {
            return Ok(());
        }
        let h = ns.netlink().await?;
        if let Some(i) = index_of(&h, &port_name(addr)).await? {
            h.link()
                .del(i)
                .execute()
                .await
                .map_err(|e| nl("removing the task's veth", e))?;
        }
        Ok(())
    }

    /// Makes the network's forwarding and neighbour entries exactly `peers`: what is new
    /// is added, what is gone is removed.
    pub async fn set_peers(&self, vni: u32, peers: &BTreeSet<Peer>) -> Result<(), NetError> {
        let h = self.netns_of(vni).netlink().await?;
        let vx = must_index(&h, VXLAN).await?;
        let have = self.peers(&h, vx).await?;
        for p in have.difference(peers) {
            let mac = mac_of(p.addr);
            let mut n = NeighbourMessage::default();
            n.header.family = AddressFamily::Inet;
            n.header.ifindex = vx;
            n.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    p.addr,
                )));
            let _ = h.neighbours().del(n).execute().await;
            let mut f = NeighbourMessage::default();
            f.header.family = AddressFamily::Bridge;
            f.header.ifindex = vx;
            f.header.flags = NeighbourFlags::Own;
            f.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            f.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    p.vtep,
                )));
            let _ = h.neighbours().del(f).execute().await;
        }
        for p in peers.difference(&have) {
            let mac = mac_of(p.addr);
            h.neighbours()
                .add(vx, IpAddr::V4(p.addr))
                .link_layer_address(&mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| nl(&format!("the neighbour entry of {}", p.addr), e))?;
            let mut req = h
                .neighbours()
                .add_bridge(vx, &mac)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace();
            req.message_mut()
                .attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    p.vtep,
                )));
            req.execute()
                .await
                .map_err(|e| nl(&format!("the forwarding entry of {}", p.addr), e))?;
        }
        Ok(())
    }

    /// The peers the VXLAN device has entries for (a neighbour entry with a matching
    /// forwarding entry).
    async fn peers(&self, h: &Handle, vx: u32) -> Result<BTreeSet<Peer>, NetError> {
        let neigh = entries(h, vx, AddressFamily::Inet).await?;
        let fdb = entries(h, vx, AddressFamily::Bridge).await?;
        Ok(neigh
            .into_iter()
            .filter_map(|(ip, l)| {
                let vtep = fdb.iter().find(|(_, m)| *m == l)?.0;
                Some(Peer { addr: ip, vtep })
            })
            .collect())
    }
}

/// The device's entries of a family (neighbours: address → MAC; forwarding entries:
/// VTEP address → MAC).
async fn entries(
    h: &Handle,
    vx: u32,
    family: AddressFamily,
) -> Result<Vec<(Ipv4Addr, Vec<u8>)>, NetError> {
    let mut out = Vec::new();
    let mut dump = h.neighbours().get().set_address_family(family).execute();
    while let Some(m) = dump
        .try_next()
        .await
        .map_err(|e| nl("listing neighbour entries", e))?
    {
        if m.header.ifindex != vx {
            continue;
        }
        if let (Some(ip), Some(l)) = dst_and_lla(&m) {
            out.push((ip, l));
        }
    }
    Ok(out)
}

/// Turns IPv4 forwarding on in a namespace.
async fn forwarding_on(ns: &Netns) -> Result<(), NetError> {
    crate::netns::run_in(ns, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| NetError::io("enabling IPv4 forwarding".into(), e))
    })
    .await
}

/// Bridged frames in a network's namespace skip the IP layer's hooks. Where br_netfilter
/// is loaded (as on a host that also runs Docker) its default sends every bridged frame
/// through them, and through conntrack, on each node it crosses; nothing here needs
/// that: networks are kept apart by their namespaces, and the rules of a network's
/// namespace are for what it routes (its uplink, ingress's source NAT). Without the
/// module there is nothing to turn off.
async fn bridge_hooks_off(ns: &Netns) -> Result<(), NetError> {
    crate::netns::run_in(ns, || {
        for family in ["iptables", "ip6tables", "arptables"] {
            let f = format!("/proc/sys/net/bridge/bridge-nf-call-{family}");
            match std::fs::write(&f, "0") {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                r => r.map_err(|e| NetError::io(format!("writing {f}"), e))?,
            }
        }
        Ok(())
    })
    .await
}

/// A neighbour or forwarding entry's IPv4 destination and link-layer address. (In a
/// bridge-family message the destination is parsed as raw bytes.)
fn dst_and_lla(m: &NeighbourMessage) -> (Option<Ipv4Addr>, Option<Vec<u8>>) {
    let mut dst = None;
    let mut lla = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            NeighbourAttribute::LinkLayerAddress(l) => lla = Some(l.clone()),
            _ => {}
        }
    }
    (dst, lla)
}

/// The bridge-side name of a task's veth: from its address, unique on the network.
fn port_name(a: Ipv4Addr) -> String {
    format!("v{:08x}", u32::from(a))
}

/// A network namespace's own rules: what leaves by the uplink is masqueraded.
fn ns_rules() -> String {
    crate::lb::replace_table(
        "shoal",
        &[(
            "masquerade_out",
            "type nat hook postrouting priority 100",
            "    oifname \"up0\" masquerade\n",
        )],
    )
}

/// The ingress network's rules on a node: a published port's connection that this node
/// forwards to a task on another node is source-NATed to this node's ingress address
/// (`from`), so that the task's answer comes back through this node; one to a task on
/// this node keeps the client's address, since the task's answer comes back here anyway
/// (its default route is this node's side of ingress). `remote`: the addresses of
/// ingress's tasks elsewhere.
pub fn ingress_rules(from: Ipv4Addr, remote: &BTreeSet<Ipv4Addr>) -> String {
    let rule = if remote.is_empty() {
        String::new()
    } else {
        let set: Vec<String> = remote.iter().map(|a| a.to_string()).collect();
        format!(
            "    iifname \"up0\" oifname \"{BRIDGE}\" ip daddr {{ {} }} snat ip to {from}\n",
            set.join(", ")
        )
    };
    crate::lb::replace_table(
        "shoal_ingress",
        &[(
            "snat_remote",
            "type nat hook postrouting priority 100",
            &rule,
        )],
    )
}

/// The node's VXLAN traffic (from and to its VTEP address `local`) is not tracked by
/// the host's conntrack: the packets inside are tracked where they are routed or NATed,
/// and each flow's outer source port would otherwise hold a conntrack entry of its own.
/// (A host firewall sees these packets as untracked: it lets them in by their port, as
/// Swarm's documentation asks, not by `ct state new`.)
pub fn vxlan_rules(local: Ipv4Addr) -> String {
    let rule = |dir| format!("    ip {dir} {local} udp dport {VXLAN_PORT} notrack\n");
    crate::lb::replace_table(
        "shoal_vxlan",
        &[
            (
                "untracked_in",
                "type filter hook prerouting priority raw",
                &rule("daddr"),
            ),
            (
                "untracked_out",
                "type filter hook output priority raw",
                &rule("saddr"),
            ),
        ],
    )
}

/// The host's side of every uplink, loaded once into the node's namespace: forwarding
/// on, traffic from the networks masqueraded on its way out, and none from one network
/// to another.
pub fn host_rules() -> String {
    let out = format!("    ip saddr {UPLINK_RANGE} oifname != \"shup*\" masquerade\n");
    crate::lb::replace_table(
        "shoal",
        &[
            (
                "forward_between",
                "type filter hook forward priority 0",
                "    iifname \"shup*\" oifname \"shup*\" drop\n",
            ),
            (
                "masquerade_out",
                "type nat hook postrouting priority 100",
                &out,
            ),
        ],
    )
}
