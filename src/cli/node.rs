//! `shoal node …`, with Docker's verbs, flags and output.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use shoal_proto::*;

use super::client::{control, refusal, swarm};
use super::output::{self, Item, ListFlags, Listing};
use super::words::{self, Words};
use super::Globals;
use crate::spec::docker;
use crate::spec::units::label;

#[derive(Subcommand)]
pub enum NodeCmd {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        list: ListFlags,
    },
    /// Show nodes in detail (JSON).
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability or labels.
    Update {
        /// active, pause or drain
        #[arg(long)]
        availability: Option<String>,
        /// Add or replace a label (KEY=VALUE).
        #[arg(long)]
        label_add: Vec<String>,
        /// Remove a label (KEY).
        #[arg(long)]
        label_rm: Vec<String>,
        /// worker or manager
        #[arg(long)]
        role: Option<String>,
        node: String,
    },
    /// Make workers managers.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Even if the managers left would lose quorum.
        #[arg(short, long)]
        force: bool,
    },
    /// Remove nodes from the swarm.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Even a node that is not down, or a manager.
        #[arg(short, long)]
        force: bool,
    },
}

/// Reads a node, changes its spec, writes it back (with the version read).
async fn edit_node(
    ctl: &mut shoal_proto::control_client::ControlClient<tonic::transport::Channel>,
    what: &str,
    force: bool,
    f: impl FnOnce(&mut NodeSpec) -> anyhow::Result<()>,
) -> anyhow::Result<Node> {
    let n = ctl
        .get_node(GetRequest {
            id_or_name: what.to_string(),
        })
        .await
        .map_err(refusal)?
        .into_inner();
    let mut spec = n.spec.clone().unwrap_or_default();
    f(&mut spec)?;
    Ok(ctl
        .update_node(UpdateNodeRequest {
            id_or_name: n.id.clone(),
            version: n.meta.map(|m| m.version).unwrap_or(0),
            spec: Some(spec),
            force,
        })
        .await
        .map_err(|e| words::refusal(e, Words::Node))?
        .into_inner())
}

/// `node promote|demote`: the role the managers want the node to have.
async fn set_role(
    ctl: &mut shoal_proto::control_client::ControlClient<tonic::transport::Channel>,
    node: &str,
    role: NodeRole,
    force: bool,
) -> anyhow::Result<Node> {
    edit_node(ctl, node, force, |s| {
        s.desired_role = role as i32;
        Ok(())
    })
    .await
}

fn parse_role(r: &str) -> anyhow::Result<NodeRole> {
    match r {
        "worker" => Ok(NodeRole::Worker),
        "manager" => Ok(NodeRole::Manager),
        _ => bail!("--role {r:?}: use worker or manager"),
    }
}

pub async fn run(g: &Globals, c: NodeCmd) -> anyhow::Result<ExitCode> {
    let mut ctl = control(g).await?;
    match c {
        NodeCmd::Ls { list } => {
            let info = swarm(g)
                .await?
                .info(Empty {})
                .await
                .map_err(refusal)?
                .into_inner();
            let items = super::client::list_nodes(&mut ctl)
                .await?
                .iter()
                .map(|n| {
                    let json = docker::node_summary(n, &info.node_id);
                    let keys = [
                        "ID",
                        "Hostname",
                        "Status",
                        "Availability",
                        "ManagerStatus",
                        "EngineVersion",
                    ];
                    let mut item = Item::of(json, &n.id, &keys);
                    if n.id == info.node_id {
                        item.row[0].push_str(" *");
                    }
                    item
                })
                .collect();
            let header = &[
                "ID",
                "HOSTNAME",
                "STATUS",
                "AVAILABILITY",
                "MANAGER STATUS",
                "ENGINE VERSION",
            ];
            output::print(&list, Listing { header, items })?;
        }
        NodeCmd::Update {
            availability,
            label_add,
            label_rm,
            role,
            node,
        } => {
            let avail = availability
                .map(|a| match a.as_str() {
                    "active" => Ok(NodeAvailability::Active),
                    "pause" => Ok(NodeAvailability::Pause),
                    "drain" => Ok(NodeAvailability::Drain),
                    _ => Err(anyhow::anyhow!(
                        "--availability {a:?}: use active, pause or drain"
                    )),
                })
                .transpose()?;
            let role = role.map(|r| parse_role(&r)).transpose()?;
            edit_node(&mut ctl, &node, false, |spec| {
                if let Some(a) = avail {
                    spec.availability = a as i32;
                }
                if let Some(r) = role {
                    spec.desired_role = r as i32;
                }
                let labels = &mut spec
                    .annotations
                    .get_or_insert_with(Annotations::default)
                    .labels;
                for l in &label_add {
                    let (k, v) =
                        label(l).map_err(|e| super::flags::bad_value("--label-add", l, e))?;
                    labels.insert(k, v);
                }
                for k in &label_rm {
                    if labels.remove(k).is_none() {
                        bail!("--label-rm {k:?}: the node has no such label");
                    }
                }
                Ok(())
            })
            .await?;
            println!("{node}");
        }
        NodeCmd::Promote { nodes } => {
            for n in nodes {
                set_role(&mut ctl, &n, NodeRole::Manager, false).await?;
                println!("Node {n} promoted to a manager in the swarm.");
            }
        }
        NodeCmd::Demote { nodes, force } => {
            for n in nodes {
                set_role(&mut ctl, &n, NodeRole::Worker, force).await?;
                println!("Manager {n} demoted in the swarm.");
            }
        }
        NodeCmd::Rm { nodes, force } => {
            for n in nodes {
                ctl.remove_node(RemoveRequest {
                    id_or_name: n.clone(),
                    force,
                })
                .await
                .map_err(refusal)?;
                println!("{n}");
            }
        }
        NodeCmd::Inspect { nodes } => {
            let mut out = Vec::new();
            for what in nodes {
                let n = ctl
                    .get_node(GetRequest { id_or_name: what })
                    .await
                    .map_err(refusal)?
                    .into_inner();
                out.push(docker::node(&n));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
