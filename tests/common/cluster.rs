//! N hosts on one machine: each a network namespace with its own address on a private
//! bridge, its own `shoal daemon` (own data root, socket and cgroup parent). The bridge
//! lives in a namespace of its own, so nothing touches the machine's interfaces. A test
//! can kill a host's daemon, cut its link and heal it; dropping the cluster kills every
//! process of every host and deletes the namespaces, also when the test failed.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{DaemonProc, Host};

/// The hosts' subnet. Every cluster has its own bridge namespace, so clusters of tests
/// running side by side do not see each other even with the same addresses.
pub const SUBNET: &str = "10.99.0";

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces and links; deleted on drop.
pub struct Net {
    pub switch: String,
    pub hosts: Vec<String>,
}

impl Net {
    pub fn new(n: usize) -> Net {
        let tag = format!(
            "sht{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            switch: format!("{tag}-sw"),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &net.switch]);
        ip(&["-n", &net.switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &net.switch, "link", "set", "br0", "up"]);
        for i in 1..=n {
            let ns = format!("{tag}-h{i}");
            ip(&["netns", "add", &ns]);
            net.hosts.push(ns.clone());
            let port = format!("p{i}");
            ip(&[
                "-n",
                &net.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ]);
            ip(&[
                "-n",
                &net.switch,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{SUBNET}.{i}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// Cuts host `i`'s link (1-based): a partition.
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), "down"]);
    }

    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One host of a cluster: its shoal state and its daemon.
pub struct ClusterHost {
    pub daemon: Option<DaemonProc>,
    pub host: Host,
    pub addr: String,
}

impl ClusterHost {
    pub fn ok(&self, args: &[&str]) -> String {
        self.host.ok(args)
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.host.cli(args)
    }

    /// kill -9 of the daemon (its containers and keeper stay).
    pub fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    pub fn start_daemon(&mut self) {
        self.kill_daemon();
        self.daemon = Some(self.host.start_daemon());
    }
}

/// Hosts are dropped (daemons killed, keepers, containers, cgroups and mounts removed)
/// before the namespaces they ran in.
pub struct Cluster {
    pub hosts: Vec<ClusterHost>,
    pub net: Net,
}

impl Cluster {
    /// `n` hosts with their daemons started and the test image imported, not yet in a
    /// swarm.
    pub fn new(n: usize) -> Cluster {
        let net = Net::new(n);
        let hosts = net
            .hosts
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let mut host = Host::new();
                host.netns = Some((ns.clone(), format!("node{}", i + 1)));
                let daemon = Some(host.start_daemon());
                host.import_test_image();
                ClusterHost {
                    daemon,
                    host,
                    addr: format!("{SUBNET}.{}", i + 1),
                }
            })
            .collect();
        Cluster { hosts, net }
    }

    /// Host `i`, 1-based as the node names are.
    pub fn h(&self, i: usize) -> &ClusterHost {
        &self.hosts[i - 1]
    }

    pub fn h_mut(&mut self, i: usize) -> &mut ClusterHost {
        &mut self.hosts[i - 1]
    }

    /// The join token for `role` ("worker" or "manager"), from host 1.
    pub fn token(&self, role: &str) -> String {
        self.h(1)
            .ok(&["swarm", "join-token", "-q", role])
            .trim()
            .to_string()
    }

    /// Host 1 inits the swarm; the others join as workers.
    pub fn swarm(n: usize) -> Cluster {
        let c = Cluster::new(n);
        c.h(1)
            .ok(&["swarm", "init", "--advertise-addr", &c.h(1).addr]);
        let token = c.h(1).ok(&["swarm", "join-token", "-q", "worker"]);
        for i in 2..=n {
            c.h(i)
                .ok(&["swarm", "join", "--token", token.trim(), &c.h(1).addr]);
        }
        c
    }
}
