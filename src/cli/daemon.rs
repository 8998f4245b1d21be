//! `shoal daemon`: serve the local API until SIGTERM or SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use shoal_proto::control_server::ControlServer;
use shoal_proto::dispatcher_server::DispatcherServer;
use shoal_proto::swarm_server::SwarmServer;
use tokio_stream::wrappers::UnixListenerStream;

use super::Globals;
use crate::api::Api;
use crate::node::socket::socket_path;
use crate::node::Daemon;

#[derive(Args)]
pub struct DaemonArgs {
    /// Where tasks' resolvers send names that are not the swarm's (repeatable, or
    /// comma-separated); by default the nameservers of /etc/resolv.conf
    #[arg(
        long = "dns",
        value_name = "IP[:PORT]",
        env = "SHOAL_DNS",
        value_delimiter = ','
    )]
    dns: Vec<String>,
}

/// A `--dns` value: an IP address, with a port or not (53).
fn parse_dns(a: &str) -> anyhow::Result<std::net::SocketAddr> {
    let a = a.trim();
    if let Ok(ip) = a.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    match a.parse::<std::net::SocketAddr>() {
        Ok(s) if s.port() != 0 => Ok(s),
        _ => anyhow::bail!(
            "--dns {a:?}: use an IP address, with a port or not (192.0.2.53, 192.0.2.53:5353, [2001:db8::53]:53)"
        ),
    }
}

pub async fn run(g: &Globals, a: DaemonArgs) -> anyhow::Result<ExitCode> {
    let dns = a
        .dns
        .iter()
        .filter(|d| !d.trim().is_empty())
        .map(|d| parse_dns(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("shoal daemon must run as root (it runs containers, mounts and cgroups)");
    }
    // every task would fail with libcontainer's "failed to detect cgroup setup"
    let cgroups = shoal_runtime::container::cgroup_setup().map_err(|found| {
        anyhow::anyhow!(
            "{found}: shoal needs cgroup v2 (or v1) mounted at /sys/fs/cgroup to run containers. \
             A daemon started with `ip netns exec` sees the /sys that command mounts anew, without \
             cgroups: enter a network namespace with `nsenter --net=/run/netns/NAME` instead"
        )
    })?;
    tracing::info!(%cgroups, "cgroups");
    let data_root = g.data_root();
    crate::node::secure_data_root(&data_root)
        .with_context(|| format!("making --data-root {} root's alone", data_root.display()))?;
    // one daemon per data root: the lock lives as long as this process
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_root.join("daemon.lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| {
            anyhow::anyhow!(
                "another shoal daemon is running with --data-root {}",
                data_root.display()
            )
        })?;
    let sock = socket_path(g.host())?;
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if sock.exists() {
        if crate::node::socket::connect(&sock).await.is_ok()
            && std::os::unix::net::UnixStream::connect(&sock).is_ok()
        {
            anyhow::bail!("another shoal daemon is listening on {}", sock.display());
        }
        std::fs::remove_file(&sock).ok();
    }
    let runtime = super::container::open_runtime(g).await?;
    let daemon = Daemon::open(
        data_root,
        sock.clone(),
        runtime,
        dns,
        std::sync::Arc::new(crate::api::cluster::serve),
    )
    .await?;
    let listener = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("listening on {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %sock.display(), node.id = %daemon.node_id(), "shoal daemon ready");
    // give memory freed after a burst (a scale, a deploy) back to the system
    tokio::spawn(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only returns free heap pages to the kernel.
            unsafe { libc::malloc_trim(0) };
        }
    });
    let api = Api {
        daemon: daemon.clone(),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(SwarmServer::new(api.clone()))
        .add_service(ControlServer::new(api.clone()))
        .add_service(DispatcherServer::new(api))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    tracing::info!("stopping; containers keep running");
    daemon.stop().await;
    let _ = std::fs::remove_file(&sock);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_dns;

    #[test]
    fn dns_upstreams_are_ips_with_or_without_a_port() {
        assert_eq!(
            parse_dns("192.0.2.53").unwrap().to_string(),
            "192.0.2.53:53"
        );
        assert_eq!(
            parse_dns(" 192.0.2.53:5353").unwrap().to_string(),
            "192.0.2.53:5353"
        );
        assert_eq!(
            parse_dns("[2001:db8::53]:53").unwrap().to_string(),
            "[2001:db8::53]:53"
        );
        for bad in ["dns.example", "192.0.2.53:0", "192.0.2.53:x", "1.2.3"] {
            let e = parse_dns(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--dns {bad:?}")), "{e}");
        }
    }
}
