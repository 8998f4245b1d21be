//! The CLI's connection to the local daemon.

use shoal_proto::control_client::ControlClient;
use shoal_proto::swarm_client::SwarmClient;
use tonic::transport::Channel;

use super::Globals;

pub async fn channel(g: &Globals) -> anyhow::Result<Channel> {
    let path = crate::node::socket::socket_path(g.host())?;
    crate::node::socket::connect(&path).await.map_err(|e| {
        // why, in the socket's own words: a user who may not use it is not told to
        // start a daemon that runs
        let why = std::os::unix::net::UnixStream::connect(&path).err();
        match why.as_ref().map(|w| w.kind()) {
            Some(std::io::ErrorKind::PermissionDenied) => anyhow::anyhow!(
                "permission denied on the shoal daemon's socket unix://{}: it is root's alone; run shoal as root (sudo)",
                path.display()
            ),
            _ => anyhow::anyhow!(
                "Cannot connect to the shoal daemon at unix://{}: {}. Is the shoal daemon running?",
                path.display(),
                why.map_or_else(|| format!("{e:#}"), |w| w.to_string())
            ),
        }
    })
}

/// A control API client, as the commands hold it.
pub type Ctl = ControlClient<Channel>;

pub async fn control(g: &Globals) -> anyhow::Result<ControlClient<Channel>> {
    Ok(ControlClient::new(channel(g).await?))
}

pub async fn swarm(g: &Globals) -> anyhow::Result<SwarmClient<Channel>> {
    Ok(SwarmClient::new(channel(g).await?))
}

/// Where this node's images and containers are. With `--host` (or `SHOAL_HOST`), the
/// daemon there says: its data root and cgroup parent are the CLI's, and one given that
/// differs is refused (the CLI and the daemon would work on two stores, and a service
/// would not find an image the CLI imported). With no daemon there, `--data-root` must
/// be given. Without `--host`, what was given (or the defaults), as before a daemon runs.
pub async fn this_node(g: &Globals) -> anyhow::Result<Globals> {
    if g.host.is_none() {
        return Ok(g.clone());
    }
    let path = crate::node::socket::socket_path(g.host())?;
    let asked = match swarm(g).await {
        Ok(mut s) => s
            .info(shoal_proto::Empty {})
            .await
            .map(|r| r.into_inner())
            .map_err(refusal),
        Err(e) => Err(e),
    };
    let info = match asked {
        Ok(i) if !i.data_root.is_empty() => i,
        // no daemon to ask: with a data root given, the CLI works on it alone
        _ if g.data_root.is_some() => return Ok(g.clone()),
        Ok(_) => anyhow::bail!(
            "the shoal daemon at unix://{} does not say where it keeps its images and containers (an older version?): give --data-root",
            path.display()
        ),
        Err(e) => anyhow::bail!(
            "{e:#}; without it, where it keeps its images and containers is unknown: start it, or give --data-root"
        ),
    };
    let same = |a: &str, b: &str| {
        let canon = |p: &str| std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
        a.trim_end_matches('/') == b.trim_end_matches('/') || canon(a) == canon(b)
    };
    let given = [
        (
            "--data-root",
            g.data_root.as_ref().map(|p| p.display().to_string()),
            &info.data_root,
        ),
        (
            "--cgroup-parent",
            g.cgroup_parent.clone(),
            &info.cgroup_parent,
        ),
    ];
    for (flag, given, theirs) in given {
        if let Some(v) = given.filter(|v| !same(v, theirs)) {
            anyhow::bail!(
                "{flag} {v}: the shoal daemon at unix://{} uses {theirs}; give its {flag}, or none",
                path.display()
            );
        }
    }
    let mut here = g.clone();
    here.data_root = Some(info.data_root.into());
    here.cgroup_parent = Some(info.cgroup_parent);
    Ok(here)
}

/// A gRPC refusal as the user should read it: just the daemon's message.
pub fn refusal(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// A list's parts as they stream in (see `ListRequest`), joined by `join`.
pub(super) async fn joined<R>(
    parts: Result<tonic::Response<tonic::Streaming<R>>, tonic::Status>,
    mut join: impl FnMut(R),
) -> anyhow::Result<()> {
    // a refused filter is named as `service ps` takes it
    let refused = |s| super::words::refusal(s, super::words::Words::Service);
    let mut s = parts.map_err(refused)?.into_inner();
    while let Some(part) = s.message().await.map_err(refused)? {
        join(part);
    }
    Ok(())
}

/// Every node, as the managers have them.
pub async fn list_nodes(
    ctl: &mut ControlClient<Channel>,
) -> anyhow::Result<Vec<shoal_proto::Node>> {
    let mut all = Vec::new();
    let parts = ctl.list_nodes(shoal_proto::ListRequest::default()).await;
    joined(parts, |p| all.extend(p.nodes)).await?;
    Ok(all)
}

/// Every service, with its running and desired task counts.
pub async fn list_services(
    ctl: &mut ControlClient<Channel>,
) -> anyhow::Result<shoal_proto::ListServicesResponse> {
    let mut all = shoal_proto::ListServicesResponse::default();
    let parts = ctl.list_services(shoal_proto::ListRequest::default()).await;
    joined(parts, |p| {
        all.services.extend(p.services);
        all.running.extend(p.running);
        all.desired.extend(p.desired);
    })
    .await?;
    Ok(all)
}

/// The tasks that match `filters` (`service ps`'s).
pub async fn list_tasks(
    ctl: &mut ControlClient<Channel>,
    filters: Vec<String>,
) -> anyhow::Result<Vec<shoal_proto::Task>> {
    let mut all = Vec::new();
    let parts = ctl
        .list_tasks(shoal_proto::ListTasksRequest { filters })
        .await;
    joined(parts, |p| all.extend(p.tasks)).await?;
    Ok(all)
}

/// Every network.
pub async fn list_networks(
    ctl: &mut ControlClient<Channel>,
) -> anyhow::Result<Vec<shoal_proto::Network>> {
    let mut all = Vec::new();
    let parts = ctl.list_networks(shoal_proto::ListRequest::default()).await;
    joined(parts, |p| all.extend(p.networks)).await?;
    Ok(all)
}
