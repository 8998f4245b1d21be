//! `shoal network …`: the swarm's overlay networks, with Docker's verbs and flags.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use serde_json::json;
use shoal_proto::*;

use super::client::{control, refusal};
use super::util::{remove_each, table};
use super::Globals;

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create an overlay network.
    Create {
        /// overlay (the only driver a swarm has)
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// The network's subnet (CIDR); default: the next free block of the swarm's pool.
        #[arg(long)]
        subnet: Vec<String>,
        /// Where task addresses come from, inside the subnet (CIDR).
        #[arg(long)]
        ip_range: Vec<String>,
        /// The subnet's gateway address (default: its first address).
        #[arg(long)]
        gateway: Vec<String>,
        /// Let standalone containers join (`shoal container run --network NAME` on a node
        /// of the swarm).
        #[arg(long)]
        attachable: bool,
        /// No way out of the network: its containers reach only each other.
        #[arg(long)]
        internal: bool,
        /// Make the routing mesh's network (after `network rm ingress`: a swarm has one).
        #[arg(long)]
        ingress: bool,
        #[arg(long = "label")]
        label: Vec<String>,
        /// IPv6 is not supported yet: refused.
        #[arg(long)]
        ipv6: bool,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show networks in detail (JSON).
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks (refused while a service uses one).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

fn name(n: &Network) -> &str {
    n.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map(|a| a.name.as_str())
        .unwrap_or("")
}

fn inspect_json(n: &Network) -> serde_json::Value {
    let spec = n.spec.clone().unwrap_or_default();
    let labels = spec
        .annotations
        .as_ref()
        .map(|a| a.labels.clone())
        .unwrap_or_default();
    json!({
        "Name": name(n),
        "Id": n.id,
        "Created": n.meta.as_ref().map(|m| m.created_at_ms).unwrap_or(0),
        "Scope": "swarm",
        "Driver": spec.driver,
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Config": n.ipam.iter().map(|c| {
                let mut m = serde_json::Map::new();
                m.insert("Subnet".into(), json!(c.subnet));
                if !c.range.is_empty() {
                    m.insert("IPRange".into(), json!(c.range));
                }
                m.insert("Gateway".into(), json!(c.gateway));
                serde_json::Value::Object(m)
            }).collect::<Vec<_>>(),
        },
        "Internal": spec.internal,
        "Attachable": spec.attachable,
        "Ingress": spec.ingress,
        "Options": {"com.docker.network.driver.overlay.vxlanid_list": n.vni.to_string()},
        "Labels": labels,
    })
}

pub async fn run(g: &Globals, c: NetworkCmd) -> anyhow::Result<ExitCode> {
    let mut ctl = control(g).await?;
    match c {
        NetworkCmd::Create {
            driver,
            subnet,
            ip_range,
            gateway,
            attachable,
            internal,
            ingress,
            label,
            ipv6,
            name,
        } => {
            if ipv6 {
                bail!("--ipv6: IPv6 networks are not supported yet (IPv4 only)");
            }
            if subnet.len() > 1 || ip_range.len() > 1 || gateway.len() > 1 {
                bail!("one --subnet (and --ip-range, --gateway) per network: IPv4 only");
            }
            if subnet.is_empty() && !(ip_range.is_empty() && gateway.is_empty()) {
                bail!("--ip-range and --gateway need --subnet");
            }
            let mut labels = BTreeMap::new();
            for l in &label {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                if k.is_empty() {
                    bail!("--label {l:?}: a label needs a name");
                }
                labels.insert(k.to_string(), v.to_string());
            }
            let ipam = subnet
                .first()
                .map(|s| IpamConfig {
                    subnet: s.clone(),
                    range: ip_range.first().cloned().unwrap_or_default(),
                    gateway: gateway.first().cloned().unwrap_or_default(),
                })
                .into_iter()
                .collect();
            let n = ctl
                .create_network(CreateNetworkRequest {
                    spec: Some(NetworkSpec {
                        annotations: Some(Annotations {
                            name,
                            labels: labels.into_iter().collect(),
                        }),
                        driver,
                        ipam,
                        internal,
                        attachable,
                        ingress,
                    }),
                })
                .await
                .map_err(refusal)?
                .into_inner();
            println!("{}", n.id);
        }
        NetworkCmd::Ls { quiet } => {
            let mut nets = super::client::list_networks(&mut ctl).await?;
            nets.sort_by(|a, b| name(a).cmp(name(b)));
            if quiet {
                nets.iter().for_each(|n| println!("{}", short(&n.id)));
            } else {
                let rows: Vec<Vec<String>> = nets
                    .iter()
                    .map(|n| {
                        vec![
                            short(&n.id).to_string(),
                            name(n).to_string(),
                            n.spec
                                .as_ref()
                                .map(|s| s.driver.clone())
                                .unwrap_or_default(),
                            "swarm".into(),
                        ]
                    })
                    .collect();
                table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows);
            }
        }
        NetworkCmd::Inspect { networks } => {
            let mut out = Vec::new();
            for what in networks {
                let n = ctl
                    .get_network(GetRequest { id_or_name: what })
                    .await
                    .map_err(refusal)?
                    .into_inner();
                out.push(inspect_json(&n));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NetworkCmd::Rm { networks } => {
            return Ok(remove_each(networks, |r| {
                let mut ctl = ctl.clone();
                async move { ctl.remove_network(r).await.map(|_| ()) }
            })
            .await);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
