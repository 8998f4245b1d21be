//! The CLI's connection to the local daemon.

use shoal_proto::control_client::ControlClient;
use shoal_proto::swarm_client::SwarmClient;
use tonic::transport::Channel;

use super::Globals;

pub async fn channel(g: &Globals) -> anyhow::Result<Channel> {
    let path = crate::api::client::socket_path(&g.host)?;
    crate::api::client::connect(&path).await.map_err(|e| {
        anyhow::anyhow!(
            "Cannot connect to the shoal daemon at unix://{}: {e}. Is the shoal daemon running?",
            path.display()
        )
    })
}

pub async fn control(g: &Globals) -> anyhow::Result<ControlClient<Channel>> {
    Ok(ControlClient::new(channel(g).await?))
}

pub async fn swarm(g: &Globals) -> anyhow::Result<SwarmClient<Channel>> {
    Ok(SwarmClient::new(channel(g).await?))
}

/// A gRPC refusal as the user should read it: just the daemon's message.
pub fn refusal(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// Every node, as the managers have them.
pub async fn list_nodes(
    ctl: &mut ControlClient<Channel>,
) -> anyhow::Result<Vec<shoal_proto::Node>> {
    Ok(ctl
        .list_nodes(shoal_proto::ListRequest::default())
        .await
        .map_err(refusal)?
        .into_inner()
        .nodes)
}
