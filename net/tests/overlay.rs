//! Two hosts (network namespaces joined by a veth underlay), one overlay network built
//! on both with netlink, a task namespace on each: the tasks reach each other over
//! VXLAN through the entries set from "cluster state", and not without them; removing
//! the network leaves nothing behind. As root (scripts/test.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rtnetlink::{LinkUnspec, LinkVeth};
use shoal_net::netns::Netns;
use shoal_net::overlay::{Endpoint, NetworkSpec, Overlays, Peer};

/// Every namespace the test makes, removed however it ends.
struct Namespaces(Vec<PathBuf>, tempfile::TempDir);

impl Drop for Namespaces {
    fn drop(&mut self) {
        // overlay namespaces made under each host's directory too
        let mut all = self.0.clone();
        for d in ["a", "b"] {
            if let Ok(rd) = std::fs::read_dir(self.1.path().join(d)) {
                all.extend(rd.flatten().map(|e| e.path()));
            }
        }
        for p in all {
            let _ = Netns::open(&p).remove();
        }
    }
}

fn ping(from: &Path, to: Ipv4Addr) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", from.display()))
        .args(["busybox", "ping", "-c", "1", "-W", "1"])
        .arg(to.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The conntrack table of a namespace (empty where conntrack never started there).
fn conntrack_of(ns: &Path) -> String {
    let o = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["cat", "/proc/net/nf_conntrack"])
        .output()
        .unwrap();
    // an unreadable table would make "nothing tracked" true of anything
    assert!(
        o.status.success(),
        "no conntrack table in {}: {} (the untracked-traffic checks need nf_conntrack loaded)",
        ns.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn tasks_on_two_hosts_talk_over_vxlan_only_through_pushed_entries() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root (namespaces, links): run it through scripts/test.sh"
    );
    let mut made = Namespaces(vec![], tempfile::tempdir().unwrap());
    let dirs = made.1.path().to_path_buf();
    let path = |n: &str| dirs.join(format!("ns-{n}"));
    let mut ns = |n: &str| {
        let p = path(n);
        made.0.push(p.clone());
        Netns::create(&p).unwrap()
    };
    let (a, b, ta, tb) = (ns("a"), ns("b"), ns("ta"), ns("tb"));

    // the underlay: a veth between the hosts, 10.123.0.1 and .2
    let ha = a.netlink().await.unwrap();
    let hb = b.netlink().await.unwrap();
    ha.link()
        .add(LinkVeth::new("ul0", "ul1").build())
        .execute()
        .await
        .unwrap();
    let idx = |h: &rtnetlink::Handle, n: &str| {
        let h = h.clone();
        let n = n.to_string();
        async move {
            h.link()
                .get()
                .match_name(n)
                .execute()
                .try_next()
                .await
                .unwrap()
                .unwrap()
                .header
                .index
        }
    };
    let ul1 = idx(&ha, "ul1").await;
    let fb = b.file().unwrap();
    ha.link()
        .set(
            LinkUnspec::new_with_index(ul1)
                .setns_by_fd(fb.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .unwrap();
    for (h, name, addr) in [(&ha, "ul0", [10, 123, 0, 1]), (&hb, "ul1", [10, 123, 0, 2])] {
        let i = idx(h, name).await;
        h.address()
            .add(i, Ipv4Addr::from(addr).into(), 24)
            .execute()
            .await
            .unwrap();
        h.link()
            .set(LinkUnspec::new_with_index(i).up().build())
            .execute()
            .await
            .unwrap();
    }

    let spec = |local: [u8; 4]| NetworkSpec {
        vni: 4242,
        gateway: Ipv4Addr::new(10, 200, 0, 1),
        prefix: 24,
        local: Ipv4Addr::from(local),
        underlay_mtu: 1500,
        uplink: true,
        ingress: false,
        ingress_addr: None,
    };
    let (sa, sb) = (spec([10, 123, 0, 1]), spec([10, 123, 0, 2]));
    let oa = Overlays::new(&dirs.join("a"), ha.clone(), a.clone());
    let ob = Overlays::new(&dirs.join("b"), hb.clone(), b.clone());
    oa.ensure(&sa).await.unwrap();
    ob.ensure(&sb).await.unwrap();
    oa.ensure(&sa).await.unwrap(); // idempotent
    let (ipa, ipb) = (Ipv4Addr::new(10, 200, 0, 2), Ipv4Addr::new(10, 200, 0, 3));
    let ep = |ns: &Netns, addr| Endpoint {
        netns: ns.path().to_path_buf(),
        ifname: "eth0".into(),
        addr,
        default_route: true,
    };
    oa.attach(&sa, &ep(&ta, ipa)).await.unwrap();
    ob.attach(&sb, &ep(&tb, ipb)).await.unwrap();

    // a way out through the host: host B's underlay address is "outside" for host A's
    // network (reached through A's uplink, masqueraded)
    until("the way out", Duration::from_secs(5), || {
        ping(ta.path(), Ipv4Addr::new(10, 123, 0, 2))
    });

    // no entries: nothing is flooded or learned, so nothing gets through
    assert!(!ping(ta.path(), ipb), "reached without entries");
    let peer_b: BTreeSet<Peer> = [Peer {
        addr: ipb,
        vtep: Ipv4Addr::new(10, 123, 0, 2),
    }]
    .into();
    let peer_a: BTreeSet<Peer> = [Peer {
        addr: ipa,
        vtep: Ipv4Addr::new(10, 123, 0, 1),
    }]
    .into();
    oa.set_peers(4242, &peer_b).await.unwrap();
    ob.set_peers(4242, &peer_a).await.unwrap();
    until("a ping over the overlay", Duration::from_secs(5), || {
        ping(ta.path(), ipb)
    });
    assert!(ping(tb.path(), ipa));
    // the packets crossed no conntrack on the way: not the hosts' (VXLAN is untracked),
    // and not the networks' namespaces' for what they bridge (where br_netfilter would
    // send it there)
    for host in [a.path(), b.path()] {
        let t = conntrack_of(host);
        assert!(!t.contains("dport=4789"), "VXLAN tracked on a host: {t}");
    }
    for o in [&oa, &ob] {
        let t = conntrack_of(o.netns_of(4242).path());
        assert!(
            !t.contains("src=10.200.0.2 dst=10.200.0.3"),
            "bridged traffic tracked: {t}"
        );
    }
    // the gateway answers on each host
    assert!(ping(ta.path(), Ipv4Addr::new(10, 200, 0, 1)));
    // entries taken away: the path is gone
    oa.set_peers(4242, &BTreeSet::new()).await.unwrap();
    until("the path to go", Duration::from_secs(5), || {
        !ping(ta.path(), ipb)
    });

    // detach and remove: nothing of the network is left on either host
    oa.detach(4242, ipa).await.unwrap();
    oa.remove(4242).await.unwrap();
    ob.remove(4242).await.unwrap();
    assert!(oa.present().is_empty() && ob.present().is_empty());
    for h in [&ha, &hb] {
        let mut links = h.link().get().execute();
        while let Some(l) = links.try_next().await.unwrap() {
            let name = l.attributes.iter().find_map(|x| match x {
                rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            let name = name.unwrap_or_default();
            assert!(
                !name.starts_with("shvx") && !name.starts_with("shup"),
                "a network's device left on a host: {name}"
            );
        }
    }
}
