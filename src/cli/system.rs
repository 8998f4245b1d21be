//! `shoal system info`: what this node is in its swarm, as `docker info`'s swarm part
//! says it, and what it holds for its tasks.

use std::process::ExitCode;

use clap::Subcommand;

use super::client::{refusal, swarm};
use super::Globals;

#[derive(Subcommand)]
pub enum SystemCmd {
    /// What this node is in its swarm.
    Info,
}

pub async fn run(g: &Globals, c: SystemCmd) -> anyhow::Result<ExitCode> {
    match c {
        SystemCmd::Info => {
            let i = swarm(g)
                .await?
                .info(shoal_proto::Empty {})
                .await
                .map_err(refusal)?
                .into_inner();
            println!("Swarm: {}", i.local_node_state);
            if i.local_node_state == "active" {
                println!(" NodeID: {}", i.node_id);
                println!(" Is Manager: {}", i.is_manager);
                println!(" ClusterID: {}", i.cluster_id);
                println!(" Managers: {}", i.managers.len());
                for m in &i.managers {
                    println!("  {m}");
                }
                println!(" Node Address: {}", i.node_addr);
            }
            println!(" Secrets held: {}", i.secrets_held);
            println!(" Configs held: {}", i.configs_held);
            println!(" Secrets received: {}", i.secrets_received);
            println!("Name: {}", i.hostname);
            println!("Data Root: {}", i.data_root);
            println!("Cgroup Parent: {}", i.cgroup_parent);
        }
    }
    Ok(ExitCode::SUCCESS)
}
