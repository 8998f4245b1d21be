//! `shoal network …`: the swarm's overlay networks, with Docker's verbs and flags.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use shoal_proto::*;

use super::client::{control, refusal};
use super::output::{self, Item, ListFlags, Listing};
use super::util::remove_each;
use super::words::{self, Words};
use super::Globals;
use crate::spec::docker;

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
        #[command(flatten)]
        list: ListFlags,
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
            let labels = crate::spec::units::labels(&label)
                .map_err(|(l, e)| super::flags::bad_value("--label", &l, e))?;
            let ipam = subnet
                .first()
                .map(|s| IpamConfig {
                    subnet: s.clone(),
                    range: ip_range.first().cloned().unwrap_or_default(),
                    gateway: gateway.first().cloned().unwrap_or_default(),
                })
                .into_iter()
                .collect();
            let spec = NetworkSpec {
                annotations: Some(Annotations { name, labels }),
                driver,
                ipam,
                internal,
                attachable,
                ingress,
            };
            crate::spec::validate::network(&spec).map_err(|e| Words::Network.say(&e))?;
            let n = ctl
                .create_network(CreateNetworkRequest { spec: Some(spec) })
                .await
                .map_err(|e| words::refusal(e, Words::Network))?
                .into_inner();
            println!("{}", n.id);
        }
        NetworkCmd::Ls { list } => {
            let mut nets = super::client::list_networks(&mut ctl).await?;
            nets.sort_by(|a, b| docker::network_name(a).cmp(docker::network_name(b)));
            let items = nets
                .iter()
                .map(|n| {
                    let json = docker::network_summary(n);
                    Item::of(
                        json,
                        docker::short_id(&n.id),
                        &["ID", "Name", "Driver", "Scope"],
                    )
                })
                .collect();
            let header = &["NETWORK ID", "NAME", "DRIVER", "SCOPE"];
            output::print(&list, Listing { header, items })?;
        }
        NetworkCmd::Inspect { networks } => {
            let mut out = Vec::new();
            for what in networks {
                let n = ctl
                    .get_network(GetRequest { id_or_name: what })
                    .await
                    .map_err(refusal)?
                    .into_inner();
                out.push(docker::network(&n));
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
