//! Service VIPs, load balanced with nftables inside each task's namespace (this kernel
//! has no IPVS): a connection to a VIP is DNATed to one of the service's running tasks,
//! picked at random per new connection; conntrack keeps the choice for the
//! connection's life (no 15-minute idle cut, as IPVS's default had in Swarm), and the
//! task sees the client's own address. A VIP with no task running is refused at once
//! instead of timing out.

use std::net::Ipv4Addr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::netns::Netns;
use crate::NetError;

/// An nft script that replaces table `ip NAME` with `chains` in one transaction. A chain
/// is its name, its base-chain line (`type … hook … priority …`) and its rules, each
/// ending in a newline. A chain with no rules is left out: it would do nothing but cost
/// each packet through its hook a call (and a NAT chain, conntrack too).
pub fn replace_table(name: &str, chains: &[(&str, &str, &str)]) -> String {
    let mut s = format!("add table ip {name}\ndelete table ip {name}\ntable ip {name} {{\n");
    for (chain, base, rules) in chains.iter().filter(|(_, _, rules)| !rules.is_empty()) {
        s.push_str(&format!(
            "  chain {chain} {{\n    {base}; policy accept;\n{rules}  }}\n"
        ));
    }
    s.push_str("}\n");
    s
}

/// nft's expression for one of `backends`, picked at random per new connection.
fn pick_one(backends: &[Ipv4Addr]) -> String {
    let map: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {b}"))
        .collect();
    format!(
        "numgen random mod {} map {{ {} }}",
        backends.len(),
        map.join(", ")
    )
}

/// The ruleset for a task's namespace: one DNAT rule per VIP with backends, one reject
/// per VIP without. Replaces the whole `ip shoal` table in one transaction.
pub fn ruleset(vips: &[(Ipv4Addr, Vec<Ipv4Addr>)]) -> String {
    let mut nat = String::new();
    let mut empty = String::new();
    for (vip, backends) in vips {
        if backends.is_empty() {
            empty.push_str(&format!("    ip daddr {vip} reject\n"));
            continue;
        }
        nat.push_str(&format!(
            "    ip daddr {vip} dnat ip to {}\n",
            pick_one(backends)
        ));
    }
    replace_table(
        "shoal",
        &[
            ("vips", "type nat hook output priority -100", &nat),
            ("down", "type filter hook output priority 0", &empty),
        ],
    )
}

/// A port published on the routing mesh.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub port: u32,
    /// "tcp" or "udp"
    pub protocol: String,
    pub target: u32,
    pub backends: Vec<Ipv4Addr>,
}

/// The host's routing-mesh rules: a published port arriving at the node (or asked by the
/// node itself) goes to one of the service's running tasks, picked per connection; with
/// none running it is refused.
pub fn mesh_rules(ports: &[Published]) -> String {
    let mut pre = String::new();
    let mut down = String::new();
    for p in ports {
        let proto = if p.protocol == "udp" { "udp" } else { "tcp" };
        if p.backends.is_empty() {
            down.push_str(&format!(
                "    fib daddr type local {proto} dport {} reject\n",
                p.port
            ));
            continue;
        }
        pre.push_str(&format!(
            "    fib daddr type local {proto} dport {} dnat ip to {}:{}\n",
            p.port,
            pick_one(&p.backends),
            p.target
        ));
    }
    replace_table(
        "shoal_mesh",
        &[
            ("published", "type nat hook prerouting priority -100", &pre),
            (
                "published_local",
                "type nat hook output priority -100",
                &pre,
            ),
            ("unpublished", "type filter hook input priority 0", &down),
        ],
    )
}

/// Loads a ruleset into a namespace (`nft -f -` run inside it).
pub async fn apply(ns: &Netns, rules: &str) -> Result<(), NetError> {
    let mut child = tokio::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::io("running nft (is nftables installed?)".into(), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .await
            .map_err(|e| NetError::io("writing to nft".into(), e))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NetError::io("waiting for nft".into(), e))?;
    if !out.status.success() {
        return Err(NetError::Sys(format!(
            "nft refused the VIP rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_map_to_their_backends_and_empty_ones_are_refused() {
        let r = ruleset(&[
            (
                Ipv4Addr::new(10, 0, 1, 2),
                vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)],
            ),
            (Ipv4Addr::new(10, 0, 1, 9), vec![]),
        ]);
        assert!(r.contains(
            "ip daddr 10.0.1.2 dnat ip to numgen random mod 2 map { 0 : 10.0.1.3, 1 : 10.0.1.4 }"
        ));
        assert!(r.contains("ip daddr 10.0.1.9 reject"));
        assert!(r.starts_with("add table ip shoal\ndelete table ip shoal\n"));
    }

    #[test]
    fn chains_with_no_rules_are_left_out() {
        let r = ruleset(&[(Ipv4Addr::new(10, 0, 1, 2), vec![Ipv4Addr::new(10, 0, 1, 3)])]);
        assert!(r.contains("chain vips"), "{r}");
        assert!(!r.contains("chain down"), "{r}");
        assert_eq!(
            mesh_rules(&[]),
            "add table ip shoal_mesh\ndelete table ip shoal_mesh\ntable ip shoal_mesh {\n}\n"
        );
    }
}
