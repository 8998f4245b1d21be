//! A gRPC channel over the daemon's Unix socket (`unix:///run/shoal/shoal.sock`).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// `unix:///path` or a bare path → the socket path.
pub fn socket_path(host: &str) -> anyhow::Result<PathBuf> {
    match host.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        Some(_) => anyhow::bail!("--host {host:?}: a unix socket path must be absolute (unix:///run/shoal/shoal.sock)"),
        None if host.starts_with('/') => Ok(PathBuf::from(host)),
        None => anyhow::bail!("--host {host:?} is not supported: use unix:///PATH (remote managers come with mTLS in the cluster work)"),
    }
}

pub async fn connect(path: &Path) -> anyhow::Result<Channel> {
    let p = path.to_path_buf();
    let ch = Endpoint::try_from("http://shoal.local")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await?;
    Ok(ch)
}
