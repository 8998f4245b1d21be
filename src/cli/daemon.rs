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
use crate::api::client::socket_path;
use crate::api::Api;
use crate::daemon::Daemon;

#[derive(Args)]
pub struct DaemonArgs {}

pub async fn run(g: &Globals, _a: DaemonArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("shoal daemon must run as root (it runs containers, mounts and cgroups)");
    }
    crate::daemon::secure_data_root(&g.data_root)
        .with_context(|| format!("making --data-root {} root's alone", g.data_root.display()))?;
    // one daemon per data root: the lock lives as long as this process
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(g.data_root.join("daemon.lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| {
            anyhow::anyhow!(
                "another shoal daemon is running with --data-root {}",
                g.data_root.display()
            )
        })?;
    let sock = socket_path(&g.host)?;
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if sock.exists() {
        if crate::api::client::connect(&sock).await.is_ok()
            && std::os::unix::net::UnixStream::connect(&sock).is_ok()
        {
            anyhow::bail!("another shoal daemon is listening on {}", sock.display());
        }
        std::fs::remove_file(&sock).ok();
    }
    let runtime = super::container::open_runtime(g).await?;
    let daemon = Daemon::open(g.data_root.clone(), sock.clone(), runtime).await?;
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
