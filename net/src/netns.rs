//! Named network namespaces, as iproute2 makes them: a namespace kept alive by a bind
//! mount of its `ns/net` file on a path of ours, and netlink sockets opened inside one.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::NetError;

/// A network namespace bound at a path.
#[derive(Clone, Debug)]
pub struct Netns {
    path: PathBuf,
}

/// Runs `f` on a fresh thread that has entered `ns` (a namespace change is per thread;
/// doing it on a thread of our own leaves the caller's threads where they are).
fn on_thread_in<T: Send + 'static>(
    ns: Option<PathBuf>,
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    std::thread::spawn(move || {
        if let Some(p) = ns {
            let file =
                File::open(&p).map_err(|e| NetError::io(format!("opening {}", p.display()), e))?;
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Sys(format!("entering {}: {e}", p.display())))?;
        }
        f()
    })
    .join()
    .map_err(|_| NetError::Sys("a namespace helper thread panicked".into()))?
}

impl Netns {
    /// The namespace bound at `path`, which must exist.
    pub fn open(path: &Path) -> Netns {
        Netns {
            path: path.to_path_buf(),
        }
    }

    /// A new, empty namespace (only `lo`, down) bound at `path`. A stale one at the
    /// path (a crash) is replaced.
    pub fn create(path: &Path) -> Result<Netns, NetError> {
        if path.exists() {
            Netns::open(path).remove()?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| NetError::io(format!("creating {}", dir.display()), e))?;
        }
        File::create(path).map_err(|e| NetError::io(format!("creating {}", path.display()), e))?;
        let target = path.to_path_buf();
        let made = on_thread_in(None, move || {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Sys(format!("unshare(CLONE_NEWNET): {e}")))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                NetError::Sys(format!(
                    "binding the namespace on {}: {e}",
                    target.display()
                ))
            })
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(Netns::open(path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Unbinds and removes the namespace: every device in it goes with it (once no
    /// process is left inside). Removing what is not there is no error.
    pub fn remove(&self) -> Result<(), NetError> {
        if !self.path.exists() {
            return Ok(());
        }
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {} // EINVAL: not mounted (half made)
            Err(e) => {
                return Err(NetError::Sys(format!(
                    "unmounting {}: {e}",
                    self.path.display()
                )))
            }
        }
        std::fs::remove_file(&self.path)
            .map_err(|e| NetError::io(format!("removing {}", self.path.display()), e))
    }

    /// An open file of the namespace, to move a link into it.
    pub fn file(&self) -> Result<File, NetError> {
        File::open(&self.path)
            .map_err(|e| NetError::io(format!("opening {}", self.path.display()), e))
    }

    /// A netlink handle whose socket lives in this namespace (a socket stays in the
    /// namespace it was opened in, whichever thread uses it).
    pub async fn netlink(&self) -> Result<rtnetlink::Handle, NetError> {
        netlink_in(Some(self.path.clone())).await
    }
}

/// A netlink handle in `ns`, or in the caller's namespace (`None`).
pub async fn netlink_in(ns: Option<PathBuf>) -> Result<rtnetlink::Handle, NetError> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle) = on_thread_in(ns, move || {
        let _enter = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::io("opening a netlink socket".into(), e))?;
        Ok((conn, handle))
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Runs a blocking closure inside `ns` (sysctl writes, nft), on a thread of its own.
pub async fn run_in<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let p = ns.path.clone();
    tokio::task::spawn_blocking(move || on_thread_in(Some(p), f))
        .await
        .map_err(|e| NetError::Sys(format!("a namespace task failed: {e}")))?
}
