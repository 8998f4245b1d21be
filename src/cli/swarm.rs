//! `shoal swarm …`: making, joining, leaving and changing the swarm.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use shoal_proto::*;

use super::client::{control, refusal, swarm};
use super::words::{self, Words};
use super::Globals;
use crate::spec::units::{parse_duration, to_proto};

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
        #[arg(long, value_parser = parse_duration)]
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
        #[arg(long, value_parser = parse_duration)]
        dispatcher_heartbeat: Option<std::time::Duration>,
        /// How long new node certificates last (at least 1h).
        #[arg(long, value_parser = parse_duration)]
        cert_expiry: Option<std::time::Duration>,
        /// Dead tasks kept per slot.
        #[arg(long)]
        task_history_limit: Option<i64>,
        /// Specs kept per service, for `service history` and rollback (default 10).
        #[arg(long)]
        service_history_limit: Option<i64>,
        /// Give every manager a new data key and re-seal its Raft database with it (the
        /// old key then opens nothing).
        #[arg(long)]
        rotate_dek: bool,
    },
    /// Leave the swarm (a manager needs --force: its state goes with it).
    Leave {
        #[arg(short, long)]
        force: bool,
    },
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
            .map_err(|e| Words::Swarm.say(&e))?;
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
            service_history_limit,
            rotate_dek,
        } => {
            let mut ctl = control(g).await?;
            let c = ctl
                .get_cluster(GetRequest::default())
                .await
                .map_err(refusal)?
                .into_inner();
            let mut spec = c.spec.clone().unwrap_or_default();
            let pd = to_proto;
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
            if let Some(n) = service_history_limit {
                spec.orchestration
                    .get_or_insert_with(OrchestrationConfig::default)
                    .service_history_limit = n;
            }
            crate::spec::validate::cluster(&spec).map_err(|e| Words::Swarm.say(&e))?;
            ctl.update_cluster(UpdateClusterRequest {
                version: c.meta.map(|m| m.version).unwrap_or(0),
                spec: Some(spec),
                rotate_dek,
                ..Default::default()
            })
            .await
            .map_err(|e| words::refusal(e, Words::Swarm))?;
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
