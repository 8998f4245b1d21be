//! `shoal swarm …` and `shoal node …`.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use serde_json::json;
use shoal_proto::*;

use super::client::{control, refusal, swarm};
use super::util::table;
use super::Globals;

#[derive(Subcommand)]
pub enum SwarmCmd {
    /// Make this node the first manager of a new swarm.
    Init {
        /// The address other nodes reach this manager at (IP[:PORT]).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Where to serve the cluster port (IP[:PORT], default 0.0.0.0:2377).
        #[arg(long)]
        listen_addr: Option<String>,
        /// An external root CA certificate (PEM file); needs --ca-key.
        #[arg(long)]
        ca_cert: Option<std::path::PathBuf>,
        /// The external root CA's private key (PEM file).
        #[arg(long)]
        ca_key: Option<std::path::PathBuf>,
        /// How long node certificates last (e.g. 2160h, the default 90 days).
        #[arg(long, value_parser = super::container::parse_duration)]
        cert_expiry: Option<std::time::Duration>,
        #[arg(long)]
        force_new_cluster: bool,
        /// Where overlay subnets come from (CIDR; may be given several times; default
        /// 10.0.0.0/8).
        #[arg(long)]
        default_addr_pool: Vec<String>,
        /// The size of each overlay's subnet from the pool (default 24).
        #[arg(long)]
        default_addr_pool_mask_length: Option<u32>,
    },
    /// Join a swarm as the node the token says.
    Join {
        #[arg(long)]
        token: String,
        /// The address other nodes reach this node at.
        #[arg(long)]
        advertise_addr: Option<String>,
        #[arg(long)]
        listen_addr: Option<String>,
        /// A manager's address, HOST[:PORT] (port 2377 by default).
        manager: String,
    },
    /// Show (or rotate) the token that joins a worker or a manager.
    JoinToken {
        /// worker or manager
        role: String,
        #[arg(long)]
        rotate: bool,
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show the root CA certificate, or replace the root CA (--rotate).
    Ca {
        #[arg(long)]
        rotate: bool,
        /// The new root CA's certificate (PEM file); needs --ca-key.
        #[arg(long)]
        ca_cert: Option<std::path::PathBuf>,
        #[arg(long)]
        ca_key: Option<std::path::PathBuf>,
        /// Return at once instead of waiting until every node has a new certificate.
        #[arg(short, long)]
        detach: bool,
    },
    /// Change the swarm's settings.
    Update {
        /// How often agents send heartbeats (default 1s); a node not heard from for two and a
        /// half periods is Down.
        #[arg(long, value_parser = super::container::parse_duration)]
        dispatcher_heartbeat: Option<std::time::Duration>,
        /// How long new node certificates last (at least 1h).
        #[arg(long, value_parser = super::container::parse_duration)]
        cert_expiry: Option<std::time::Duration>,
        /// Dead tasks kept per slot.
        #[arg(long)]
        task_history_limit: Option<i64>,
    },
    /// Leave the swarm (a manager needs --force: its state goes with it).
    Leave {
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        #[arg(long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
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
        .map_err(refusal)?
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

/// The text of a PEM file given with `flag`, or nothing when no file was given.
fn read(p: Option<std::path::PathBuf>, flag: &str) -> anyhow::Result<String> {
    match p {
        None => Ok(String::new()),
        Some(p) => {
            std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))
        }
    }
}

pub async fn run_swarm(g: &Globals, c: SwarmCmd) -> anyhow::Result<ExitCode> {
    // a file that cannot be read is named before anything else happens
    if let SwarmCmd::Init {
        ca_cert, ca_key, ..
    }
    | SwarmCmd::Ca {
        ca_cert, ca_key, ..
    } = &c
    {
        read(ca_cert.clone(), "--ca-cert")?;
        read(ca_key.clone(), "--ca-key")?;
    }
    if let SwarmCmd::Join { token, .. } = &c {
        crate::tls::JoinToken::parse(token)?;
    }
    if let SwarmCmd::JoinToken { role, .. } = &c {
        if role != "worker" && role != "manager" {
            bail!("{role:?} is not a role: use worker or manager");
        }
    }
    let mut s = swarm(g).await?;
    match c {
        SwarmCmd::Init {
            advertise_addr,
            listen_addr,
            ca_cert,
            ca_key,
            cert_expiry,
            force_new_cluster,
            default_addr_pool,
            default_addr_pool_mask_length,
        } => {
            crate::manager::network::check_pools(
                &default_addr_pool,
                default_addr_pool_mask_length.unwrap_or(0),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let info = s
                .init(SwarmInitRequest {
                    advertise_addr: advertise_addr.unwrap_or_default(),
                    listen_addr: listen_addr.unwrap_or_default(),
                    force_new_cluster,
                    ca_cert_pem: read(ca_cert, "--ca-cert")?,
                    ca_key_pem: read(ca_key, "--ca-key")?,
                    cert_expiry_secs: cert_expiry.map(|d| d.as_secs() as i64).unwrap_or(0),
                    default_addr_pool,
                    default_addr_pool_mask_length: default_addr_pool_mask_length.unwrap_or(0),
                })
                .await
                .map_err(refusal)?
                .into_inner();
            println!(
                "Swarm initialized: current node ({}) is now a manager.\n",
                info.node_id
            );
            let t = s
                .join_token(JoinTokenRequest {
                    role: "worker".into(),
                    rotate: false,
                })
                .await
                .map_err(refusal)?
                .into_inner();
            println!(
                "To add a worker to this swarm, run the following command:\n\n    shoal swarm join --token {} {}\n",
                t.token, t.manager_addr
            );
        }
        SwarmCmd::Join {
            token,
            advertise_addr,
            listen_addr,
            manager,
        } => {
            crate::tls::JoinToken::parse(&token)?;
            let info = s
                .join(SwarmJoinRequest {
                    token,
                    remote_addr: manager,
                    advertise_addr: advertise_addr.unwrap_or_default(),
                    listen_addr: listen_addr.unwrap_or_default(),
                })
                .await
                .map_err(refusal)?
                .into_inner();
            println!(
                "This node joined a swarm as a {}.",
                if info.is_manager { "manager" } else { "worker" }
            );
        }
        SwarmCmd::JoinToken {
            role,
            rotate,
            quiet,
        } => {
            if role != "worker" && role != "manager" {
                bail!("{role:?} is not a role: use worker or manager");
            }
            let t = s
                .join_token(JoinTokenRequest {
                    role: role.clone(),
                    rotate,
                })
                .await
                .map_err(refusal)?
                .into_inner();
            if quiet {
                println!("{}", t.token);
            } else {
                if rotate {
                    println!("Successfully rotated {role} join token.\n");
                }
                println!(
                    "To add a {role} to this swarm, run the following command:\n\n    shoal swarm join --token {} {}\n",
                    t.token, t.manager_addr
                );
            }
        }
        SwarmCmd::Update {
            dispatcher_heartbeat,
            cert_expiry,
            task_history_limit,
        } => {
            let mut ctl = control(g).await?;
            let c = ctl
                .get_cluster(GetRequest::default())
                .await
                .map_err(refusal)?
                .into_inner();
            let mut spec = c.spec.clone().unwrap_or_default();
            let pd = |d: std::time::Duration| prost_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            };
            if let Some(d) = dispatcher_heartbeat {
                spec.dispatcher
                    .get_or_insert_with(DispatcherConfig::default)
                    .heartbeat_period = Some(pd(d));
            }
            if let Some(d) = cert_expiry {
                spec.ca_config
                    .get_or_insert_with(CaConfig::default)
                    .node_cert_expiry = Some(pd(d));
            }
            if let Some(n) = task_history_limit {
                spec.orchestration
                    .get_or_insert_with(OrchestrationConfig::default)
                    .task_history_retention_limit = n;
            }
            ctl.update_cluster(UpdateClusterRequest {
                version: c.meta.map(|m| m.version).unwrap_or(0),
                spec: Some(spec),
                ..Default::default()
            })
            .await
            .map_err(refusal)?;
            println!("Swarm updated.");
        }
        SwarmCmd::Ca {
            rotate,
            ca_cert,
            ca_key,
            detach,
        } => {
            let mut ctl = control(g).await?;
            if !rotate && (ca_cert.is_some() || ca_key.is_some()) {
                bail!("--ca-cert and --ca-key go with --rotate");
            }
            if rotate {
                ctl.update_cluster(UpdateClusterRequest {
                    rotate_ca: true,
                    ca_cert_pem: read(ca_cert, "--ca-cert")?,
                    ca_key_pem: read(ca_key, "--ca-key")?,
                    ..Default::default()
                })
                .await
                .map_err(refusal)?;
            }
            // until every node has a certificate from the new root
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            let mut shown = String::new();
            let c = loop {
                let c = ctl
                    .get_cluster(GetRequest::default())
                    .await
                    .map_err(refusal)?
                    .into_inner();
                if !rotate || detach || c.previous_root_ca_cert.is_empty() {
                    break c;
                }
                let digest = crate::tls::pem_cert_der(&String::from_utf8_lossy(&c.root_ca_cert))
                    .map(|d| crate::tls::ca_digest(&d))
                    .unwrap_or_default();
                let nodes = super::client::list_nodes(&mut ctl).await?;
                let done = nodes
                    .iter()
                    .filter(|n| n.cert_root_digest == digest)
                    .count();
                let line = format!(
                    "rotating the root CA: {done} out of {} nodes have a new certificate",
                    nodes.len()
                );
                if line != shown {
                    eprintln!("{line}");
                    shown = line;
                }
                if std::time::Instant::now() > deadline {
                    bail!("the CA rotation did not finish within 120 s: {shown} (a node that is down joins again)");
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            };
            print!("{}", String::from_utf8_lossy(&c.root_ca_cert));
        }
        SwarmCmd::Leave { force } => {
            s.leave(SwarmLeaveRequest { force })
                .await
                .map_err(refusal)?;
            println!("Node left the swarm.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn node_state(n: &Node) -> &'static str {
    match n
        .status
        .as_ref()
        .and_then(|s| NodeState::try_from(s.state).ok())
        .unwrap_or(NodeState::Unknown)
    {
        NodeState::Ready => "Ready",
        NodeState::Down => "Down",
        NodeState::Disconnected => "Disconnected",
        NodeState::Unknown => "Unknown",
    }
}

fn availability(n: &Node) -> &'static str {
    match n
        .spec
        .as_ref()
        .and_then(|s| NodeAvailability::try_from(s.availability).ok())
        .unwrap_or(NodeAvailability::Active)
    {
        NodeAvailability::Active => "Active",
        NodeAvailability::Pause => "Pause",
        NodeAvailability::Drain => "Drain",
    }
}

fn manager_status(n: &Node) -> &'static str {
    match &n.manager_status {
        Some(m) if m.leader => "Leader",
        Some(m) if m.reachability == Reachability::Unreachable as i32 => "Unreachable",
        Some(_) => "Reachable",
        None => "",
    }
}

pub fn hostname(n: &Node) -> String {
    n.description
        .as_ref()
        .map(|d| d.hostname.clone())
        .unwrap_or_default()
}

pub async fn run_node(g: &Globals, c: NodeCmd) -> anyhow::Result<ExitCode> {
    let mut ctl = control(g).await?;
    match c {
        NodeCmd::Ls { format, quiet } => {
            let info = swarm(g)
                .await?
                .info(Empty {})
                .await
                .map_err(refusal)?
                .into_inner();
            let nodes = super::client::list_nodes(&mut ctl).await?;
            let engine = |n: &Node| {
                n.description
                    .as_ref()
                    .and_then(|d| d.engine.as_ref())
                    .map(|e| e.engine_version.clone())
                    .unwrap_or_default()
            };
            if quiet {
                nodes.iter().for_each(|n| println!("{}", n.id));
                return Ok(ExitCode::SUCCESS);
            }
            match format.as_str() {
                "table" => {
                    let rows: Vec<Vec<String>> = nodes
                        .iter()
                        .map(|n| {
                            let me = if n.id == info.node_id { " *" } else { "" };
                            vec![
                                format!("{}{me}", n.id),
                                hostname(n),
                                node_state(n).into(),
                                availability(n).into(),
                                manager_status(n).into(),
                                engine(n),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "ID",
                            "HOSTNAME",
                            "STATUS",
                            "AVAILABILITY",
                            "MANAGER STATUS",
                            "ENGINE VERSION",
                        ],
                        &rows,
                    );
                }
                "json" | "{{json .}}" => {
                    for n in &nodes {
                        println!(
                            "{}",
                            json!({"ID": n.id, "Self": n.id == info.node_id, "Hostname": hostname(n), "Status": node_state(n), "Availability": availability(n), "ManagerStatus": manager_status(n), "EngineVersion": engine(n)})
                        );
                    }
                }
                other => bail!("--format {other:?} is not supported: use table or json"),
            }
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
                    let (k, v) = l.split_once('=').unwrap_or((l, ""));
                    if k.is_empty() {
                        bail!("--label-add {l:?}: a label needs a name");
                    }
                    labels.insert(k.to_string(), v.to_string());
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
                out.push(json!({
                    "ID": n.id,
                    "Version": {"Index": n.meta.map(|m| m.version).unwrap_or(0)},
                    "Spec": {"Role": if n.role == NodeRole::Manager as i32 { "manager" } else { "worker" }, "Availability": availability(&n).to_lowercase(),
                              "Labels": n.spec.as_ref().and_then(|s| s.annotations.as_ref()).map(|a| a.labels.clone()).unwrap_or_default()},
                    "Description": {"Hostname": hostname(&n),
                                    "Platform": n.description.as_ref().and_then(|d| d.platform.as_ref()).map(|p| json!({"Architecture": p.architecture, "OS": p.os})),
                                    "Resources": n.description.as_ref().and_then(|d| d.resources.as_ref()).map(|r| json!({"NanoCPUs": r.nano_cpus, "MemoryBytes": r.memory_bytes}))},
                    "Status": {"State": node_state(&n).to_lowercase(), "Addr": n.status.as_ref().map(|s| s.addr.clone()).unwrap_or_default()},
                    "ManagerStatus": n.manager_status.as_ref().map(|m| json!({"Leader": m.leader, "Reachability": "reachable", "Addr": m.addr})),
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
