//! Containers: the OCI spec built from image and task, the rootfs as an overlay of the
//! image's layers, and the life cycle through the per-node [`keeper`] (which is where
//! libcontainer runs). [`ContainerRuntime`] is what the daemon holds; it survives
//! nothing and needs to: everything it knows is on disk or in the keeper.
//!
//! On disk, under `<data-root>/containers/<id>/`:
//! ```text
//! container.json   the spec and image (written last: its presence marks a complete prepare)
//! bundle/          config.json, the OCI runtime spec
//! rootfs/ upper/ work/   the overlay mount and its writable layer
//! stdout.fifo stderr.fifo   the container's output, drained by the keeper
//! logs/            container.log and its rotations
//! exit.json        written by the keeper when the container exits
//! health.json      the last health state
//! cgroup           the container's cgroup path
//! ```
//! and `<data-root>/containers/.lock`, held shared by every prepare and exclusive by the
//! start-up cleanup of any process that opens the runtime (the daemon, a CLI command).

pub mod executor;
pub mod health;
pub mod keeper;
pub mod logs;
pub mod spec;
pub mod wire;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::digest::Digest;
use crate::image::{ImageStore, PullOptions};
use health::Health;
use keeper::KeeperClient;
use spec::{ContainerSpec, ImageConfig};
pub use wire::Exit;
use wire::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container name {0:?}: use 1-128 of [a-zA-Z0-9_.-], starting with a letter or digit")]
    InvalidId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("image {image}: {source}")]
    Image {
        image: String,
        source: crate::image::StoreError,
    },
    #[error("pull {image}: {source}")]
    Pull {
        image: String,
        source: Box<crate::image::PullError>,
    },
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("container {id}: {what}: {source}")]
    Io {
        id: String,
        what: String,
        source: std::io::Error,
    },
    #[error("keeper: {0}")]
    Keeper(String),
}

type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// The free space a container start needs under the data root (its state files, the
/// first lines of its logs).
const START_RESERVE: u64 = 4 << 20;

/// Where the runtime keeps things and how it starts its keeper.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub data_root: PathBuf,
    /// Parent of every container's cgroup, e.g. `/shoal`.
    pub cgroup_parent: String,
    /// The command that runs the keeper (`shoal keeper --root <data-root>/containers`).
    pub keeper_cmd: Vec<OsString>,
    /// How images missing from the store are pulled when a container is prepared.
    pub pull: PullOptions,
}

impl RuntimeConfig {
    pub fn containers_root(&self) -> PathBuf {
        self.data_root.join("containers")
    }
}

/// The record written at the end of a prepare.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub spec: ContainerSpec,
    pub image_id: Digest,
    pub created: DateTime<Utc>,
    pub cgroup: String,
    /// Resolved stop signal.
    pub stop_signal: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Prepared: rootfs and spec ready, no process yet.
    Prepared,
    /// Created by the keeper, not started.
    Created,
    Running,
    Exited,
}

/// What `inspect` says about a container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub record: ContainerRecord,
    pub status: Status,
    pub pid: Option<i32>,
    pub exit: Option<Exit>,
    pub health: Option<Health>,
}

/// A running health monitor: its state, and a switch that stops it.
type HealthHandle = (watch::Receiver<Health>, watch::Sender<bool>);

/// The runtime as the daemon (or a CLI command) holds it.
#[derive(Clone)]
pub struct ContainerRuntime {
    cfg: RuntimeConfig,
    root: PathBuf,
    images: ImageStore,
    keeper: KeeperClient,
    /// Health monitors by container, with a sender to stop each.
    health: Arc<Mutex<HashMap<String, HealthHandle>>>,
}

fn io(id: &str, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    let what = what.into();
    move |source| ContainerError::Io {
        id: id.to_string(),
        what,
        source,
    }
}

pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::InvalidId(id.to_string()))
    }
}

impl ContainerRuntime {
    /// Connects to (or starts) the keeper, removes what dead containers left behind, and
    /// resumes health checks of running containers.
    pub async fn open(mut cfg: RuntimeConfig, images: ImageStore) -> Result<ContainerRuntime> {
        crate::files::private_dir(&cfg.data_root)
            .map_err(io("-", format!("create {}", cfg.data_root.display())))?;
        // mounts are found by path in /proc/self/mountinfo: use the path the kernel reports
        cfg.data_root = fs::canonicalize(&cfg.data_root)
            .map_err(io("-", format!("resolve {}", cfg.data_root.display())))?;
        let root = cfg.containers_root();
        crate::files::private_dir(&root).map_err(io("-", format!("create {}", root.display())))?;
        secure_containers(&root).map_err(io("-", format!("securing {}", root.display())))?;
        let keeper = KeeperClient::new(&root);
        keeper
            .ensure(&cfg.keeper_cmd)
            .await
            .map_err(|e| ContainerError::Keeper(e.to_string()))?;
        let rt = ContainerRuntime {
            cfg,
            root,
            images,
            keeper,
            health: Arc::default(),
        };
        rt.clean_leftovers().await?;
        for info in rt.list().await? {
            if info.status == Status::Running && info.record.spec.healthcheck.is_some() {
                rt.start_health(&info.record);
            }
        }
        Ok(rt)
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn logs_dir(&self, id: &str) -> PathBuf {
        self.dir(id).join("logs")
    }

    /// Asks the keeper; one that is gone (killed, crashed) is started again first, and
    /// readopts the containers it kept.
    async fn call(&self, req: &Request) -> std::io::Result<Response> {
        use std::io::ErrorKind::{ConnectionRefused, NotFound};
        match self.keeper.call(req).await {
            Err(e) if matches!(e.kind(), ConnectionRefused | NotFound) => {
                tracing::warn!(error = %e, "the keeper is gone: starting it again");
                self.keeper.ensure(&self.cfg.keeper_cmd).await?;
                self.keeper.call(req).await
            }
            r => r,
        }
    }

    async fn keeper(&self, req: Request) -> Result<Response> {
        match self.call(&req).await {
            Ok(Response::Error { message }) => Err(ContainerError::Keeper(message)),
            Ok(r) => Ok(r),
            Err(e) => Err(ContainerError::Keeper(format!(
                "not reachable at {}: {e}",
                keeper::socket_path(&self.root).display()
            ))),
        }
    }

    /// Resolves the image, pulling it if it is not in the store.
    pub async fn ensure_image(
        &self,
        image: &str,
        pull: &PullOptions,
    ) -> Result<crate::image::ImageRecord> {
        match self.images.resolve(image) {
            Ok(r) => Ok(r),
            Err(crate::image::StoreError::NotFound(_)) => self
                .images
                .pull(image, pull)
                .await
                .map(|p| p.image)
                .map_err(|source| ContainerError::Pull {
                    image: image.into(),
                    source: Box::new(source),
                }),
            Err(source) => Err(ContainerError::Image {
                image: image.into(),
                source,
            }),
        }
    }

    /// Makes the rootfs and the OCI bundle. The image must be in the store.
    pub async fn prepare(&self, id: &str, spec: &ContainerSpec) -> Result<ContainerRecord> {
        validate_id(id)?;
        let dir = self.dir(id);
        let image = self
            .images
            .resolve(&spec.image)
            .map_err(|source| ContainerError::Image {
                image: spec.image.clone(),
                source,
            })?;
        // held until container.json is written: another process's start-up cleanup waits
        // for it, and so leaves this half-made container alone (a cleanup that listed the
        // containers just before this one was made unmounted its fresh rootfs, and it
        // started with an empty root); the lock dies with us if we crash
        let _preparing = self
            .lock_root(false)
            .await
            .map_err(io(id, "lock the containers' root"))?;
        // the directory's creation is the existence check, atomic against a racing prepare
        if let Err(e) = fs::create_dir(&dir) {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                return Err(ContainerError::Exists(id.into()));
            }
            return Err(ContainerError::Io {
                id: id.into(),
                what: "create directory".into(),
                source: e,
            });
        }
        let res = self.prepare_in(id, spec, &image, &dir);
        if res.is_err() {
            let _ = unmount(&dir.join("rootfs"));
            let _ = fs::remove_dir_all(&dir);
        }
        res
    }

    fn prepare_in(
        &self,
        id: &str,
        spec: &ContainerSpec,
        image: &crate::image::ImageRecord,
        dir: &Path,
    ) -> Result<ContainerRecord> {
        for d in ["work", "bundle", "logs"] {
            fs::create_dir_all(dir.join(d)).map_err(io(id, format!("create {d}")))?;
        }
        // the container's own root (the overlay's top layer gives it its mode): what
        // Docker gives it, inside a directory (0700) that no other host user can enter
        for d in ["rootfs", "upper"] {
            crate::files::container_dir(&dir.join(d)).map_err(io(id, format!("create {d}")))?;
        }
        fs::write(dir.join("image"), image.id.as_str()).map_err(io(id, "write image"))?;
        self.mount_rootfs(id, image)?;
        let cfg_blob =
            fs::read(self.images.blob_path(&image.id)).map_err(io(id, "read image config"))?;
        let img_cfg = ImageConfig::from_blob(&cfg_blob)?;
        // the image's own health check, unless the spec has one (["NONE"]: none at all)
        let mut spec = spec.clone();
        if spec.healthcheck.is_none() {
            spec.healthcheck = img_cfg
                .healthcheck
                .as_ref()
                .and_then(spec::HealthCheck::of_image);
        }
        let spec = &spec;
        let cgroup = spec::cgroup_path(&self.cfg.cgroup_parent, id);
        ensure_unified_parent(&self.cfg.cgroup_parent)
            .map_err(io(id, "create the cgroup parent"))?;
        let oci = spec::build(&spec::BuildInput {
            id,
            spec,
            image: &img_cfg,
            rootfs: &dir.join("rootfs"),
            cgroup_path: &cgroup,
            volumes_dir: &self.cfg.data_root.join("volumes"),
            cgroupfs: &cgroup_roots(),
        })?;
        let stop_signal = spec::parse_signal(
            spec.stop_signal
                .as_deref()
                .or(img_cfg.stop_signal.as_deref())
                .unwrap_or("SIGTERM"),
        )?;
        if let Some(h) = &spec.healthcheck {
            h.argv()?;
        }
        fs::write(
            dir.join("bundle/config.json"),
            serde_json::to_vec_pretty(&oci).unwrap_or_default(),
        )
        .map_err(io(id, "write config.json"))?;
        for f in ["stdout.fifo", "stderr.fifo"] {
            nix::unistd::mkfifo(
                &dir.join(f),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| ContainerError::Io {
                id: id.into(),
                what: format!("mkfifo {f}"),
                source: e.into(),
            })?;
        }
        fs::write(dir.join("cgroup"), &cgroup).map_err(io(id, "write cgroup"))?;
        let rec = ContainerRecord {
            id: id.into(),
            spec: spec.clone(),
            image_id: image.id.clone(),
            created: Utc::now(),
            cgroup,
            stop_signal,
        };
        crate::files::write_atomic(
            &dir.join("container.json"),
            &serde_json::to_vec_pretty(&rec).unwrap_or_default(),
        )
        .map_err(io(id, "write container.json"))?;
        Ok(rec)
    }

    fn mount_rootfs(&self, id: &str, image: &crate::image::ImageRecord) -> Result<()> {
        let dir = self.dir(id);
        let target = dir.join("rootfs");
        if is_mountpoint(&target) {
            return Ok(());
        }
        let lower: Vec<String> = image
            .layers
            .iter()
            .rev()
            .map(|l| self.images.layer_path(&l.diff_id).display().to_string())
            .collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        if data.len() >= 4096 {
            return Err(ContainerError::Io {
                id: id.into(),
                what: "mount rootfs".into(),
                source: std::io::Error::other(format!(
                    "{} layers make the overlay options longer than a page",
                    lower.len()
                )),
            });
        }
        nix::mount::mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| ContainerError::Io {
            id: id.into(),
            what: "mount overlay rootfs".into(),
            source: e.into(),
        })
    }

    /// The containers' root lock (see the module's doc): shared, or `exclusive`; the
    /// wait is off the async threads.
    async fn lock_root(&self, exclusive: bool) -> std::io::Result<nix::fcntl::Flock<fs::File>> {
        use nix::fcntl::FlockArg;
        let path = self.root.join(".lock");
        tokio::task::spawn_blocking(move || {
            if !exclusive {
                return lock_file(&path, FlockArg::LockShared);
            }
            match lock_file(&path, FlockArg::LockExclusiveNonblock) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tracing::info!("waiting for the containers being prepared to be ready");
                    lock_file(&path, FlockArg::LockExclusive)
                }
                r => r,
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }

    pub fn record(&self, id: &str) -> Result<ContainerRecord> {
        let p = self.dir(id).join("container.json");
        let b = fs::read(&p).map_err(|_| ContainerError::NotFound(id.into()))?;
        serde_json::from_slice(&b).map_err(|e| ContainerError::Io {
            id: id.into(),
            what: "read container.json".into(),
            source: std::io::Error::other(e),
        })
    }

    /// Creates and starts the container's process.
    pub async fn start(&self, id: &str) -> Result<i32> {
        let rec = self.record(id)?;
        match self.call(&Request::State { id: id.into() }).await {
            Ok(Response::State(s)) if s.exit.is_some() || s.status == "stopped" => {
                return Err(ContainerError::Keeper(format!(
                    "container {id} has exited: remove it and create a new one"
                )));
            }
            // created before a crash but never started: just start it
            Ok(Response::State(s)) if s.status == "created" => {
                self.keeper(Request::Start { id: id.into() }).await?;
                if rec.spec.healthcheck.is_some() {
                    self.start_health(&rec);
                }
                return Ok(s.pid.unwrap_or_default());
            }
            // already running: starting is done
            Ok(Response::State(s)) => return Ok(s.pid.unwrap_or_default()),
            _ => {}
        }
        let image = self
            .images
            .resolve(rec.image_id.as_str())
            .map_err(|source| ContainerError::Image {
                image: rec.image_id.to_string(),
                source,
            })?;
        self.mount_rootfs(id, &image)?; // after a reboot the mount is gone
        let dir = self.dir(id);
        // libcontainer writes its state as it goes: on a full disk it would leave a
        // truncated state.json behind; refuse before it starts
        if let Ok(free) = crate::files::free_bytes(&dir) {
            if free < START_RESERVE {
                return Err(ContainerError::Io {
                    id: id.into(),
                    what: format!(
                        "start ({} has {} KiB free, below the {} MiB a start needs)",
                        self.root.display(),
                        free >> 10,
                        START_RESERVE >> 20
                    ),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                });
            }
        }
        let pid = match self
            .keeper(Request::Create {
                id: id.into(),
                bundle: dir.join("bundle"),
                dir: dir.clone(),
                log: rec.spec.log.clone(),
            })
            .await?
        {
            Response::Created { pid } => pid,
            other => {
                return Err(ContainerError::Keeper(format!(
                    "unexpected answer to create: {other:?}"
                )))
            }
        };
        self.keeper(Request::Start { id: id.into() }).await?;
        if rec.spec.healthcheck.is_some() {
            self.start_health(&rec);
        }
        Ok(pid)
    }

    /// Waits for the container to exit. A keeper that dies meanwhile (the wait's
    /// connection ends without an answer) is started again and asked again: it
    /// readopts the container, and tells its exit if it ended meanwhile.
    pub async fn wait(&self, id: &str) -> Result<Exit> {
        let mut tries = 0;
        loop {
            let res = self.call(&Request::Wait { id: id.into() }).await;
            match res {
                Ok(Response::Exited(x)) => return Ok(x),
                Ok(Response::Error { message }) => return Err(ContainerError::Keeper(message)),
                Ok(other) => {
                    return Err(ContainerError::Keeper(format!(
                        "unexpected answer to wait: {other:?}"
                    )))
                }
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::warn!(container = id, error = %e, "the keeper went during a wait: asking again");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(ContainerError::Keeper(format!(
                        "not reachable at {}: {e}",
                        keeper::socket_path(&self.root).display()
                    )))
                }
            }
        }
    }

    pub async fn signal(&self, id: &str, signal: i32) -> Result<()> {
        self.keeper(Request::Kill {
            id: id.into(),
            signal,
            all: false,
        })
        .await
        .map(|_| ())
    }

    /// Stops the container: its stop signal, then SIGKILL to every process after the
    /// grace period (the spec's, 10 s by default, unless `grace` overrides it).
    pub async fn stop(&self, id: &str, grace: Option<Duration>) -> Result<Exit> {
        let rec = self.record(id)?;
        let grace = grace
            .or(rec.spec.stop_grace_period)
            .unwrap_or(Duration::from_secs(10));
        let info = self.inspect(id).await?;
        if let Some(x) = info.exit {
            return Ok(x);
        }
        if info.status == Status::Prepared {
            return Err(ContainerError::Keeper(format!(
                "container {id} was never started"
            )));
        }
        self.signal(id, rec.stop_signal).await?;
        match tokio::time::timeout(grace, self.wait(id)).await {
            Ok(x) => x,
            Err(_) => {
                self.keeper(Request::Kill {
                    id: id.into(),
                    signal: libc::SIGKILL,
                    all: true,
                })
                .await?;
                self.wait(id).await
            }
        }
    }

    /// Removes the container and everything it had: process (killed), cgroup, state,
    /// rootfs mount, writable layer, logs.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let dir = self.dir(id);
        if !dir.exists() {
            return Err(ContainerError::NotFound(id.into()));
        }
        self.stop_health(id);
        fs::write(dir.join("removing"), b"").map_err(io(id, "mark removing"))?;
        self.keeper(Request::Delete { id: id.into() }).await?;
        unmount(&dir.join("rootfs")).map_err(|e| ContainerError::Io {
            id: id.into(),
            what: "unmount rootfs".into(),
            source: e,
        })?;
        fs::remove_dir_all(&dir).map_err(io(id, "remove directory"))?;
        remove_cgroup_dirs(&self.cfg.cgroup_parent, id);
        Ok(())
    }

    pub async fn inspect(&self, id: &str) -> Result<ContainerInfo> {
        let record = self.record(id)?;
        let kept = match self.call(&Request::State { id: id.into() }).await {
            Ok(Response::State(s)) => Some(s),
            Ok(_) => None,
            Err(e) => return Err(ContainerError::Keeper(e.to_string())),
        };
        let (status, pid, exit) = match kept {
            None => (Status::Prepared, None, None),
            Some(s) => {
                let st = if s.exit.is_some() || s.status == "stopped" {
                    Status::Exited
                } else if s.status == "created" {
                    Status::Created
                } else {
                    Status::Running
                };
                (st, s.pid, s.exit)
            }
        };
        let health = self.health_of(id);
        Ok(ContainerInfo {
            record,
            status,
            pid,
            exit,
            health,
        })
    }

    /// Every complete container, by ID.
    pub async fn list(&self) -> Result<Vec<ContainerInfo>> {
        let mut out = Vec::new();
        let mut ids: Vec<String> = fs::read_dir(&self.root)
            .map_err(io("-", "list containers"))?
            .flatten()
            .filter(|e| e.path().join("container.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        for id in ids {
            if let Ok(i) = self.inspect(&id).await {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Image IDs in use by containers, for `image rm`.
    pub fn image_users(&self) -> HashMap<Digest, String> {
        image_users_at(&self.cfg.data_root)
    }

    /// Runs a command in a running container (its namespaces and cgroup).
    pub async fn exec(
        &self,
        id: &str,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<(i32, String, bool)> {
        let rec = self.record(id)?;
        let oci: serde_json::Value = serde_json::from_slice(
            &fs::read(self.dir(id).join("bundle/config.json"))
                .map_err(io(id, "read config.json"))?,
        )
        .unwrap_or_default();
        let env: Vec<String> = oci["process"]["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let uid = oci["process"]["user"]["uid"].as_u64().unwrap_or(0) as u32;
        let gid = oci["process"]["user"]["gid"].as_u64().unwrap_or(0) as u32;
        let _ = rec;
        match self
            .keeper(Request::Exec {
                id: id.into(),
                args,
                env,
                uid,
                gid,
                timeout_ms: timeout.as_millis() as u64,
            })
            .await?
        {
            Response::Exec {
                code,
                output,
                timed_out,
            } => Ok((code, output, timed_out)),
            other => Err(ContainerError::Keeper(format!(
                "unexpected answer to exec: {other:?}"
            ))),
        }
    }

    fn start_health(&self, rec: &ContainerRecord) {
        let Some(check) = rec.spec.healthcheck.clone() else {
            return;
        };
        let Ok(argv) = check.argv() else { return };
        if argv.is_empty() {
            return;
        }
        let initial = fs::read(self.dir(&rec.id).join("health.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let (tx, rx) = watch::channel::<Health>(initial);
        let (stop_tx, stop_rx) = watch::channel(false);
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.id.clone(), (rx, stop_tx));
        let rt = self.clone();
        let id = rec.id.clone();
        tokio::spawn(async move { health::monitor(&rt, &id, &check, argv, tx, stop_rx).await });
    }

    fn stop_health(&self, id: &str) {
        if let Some((_, stop)) = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            let _ = stop.send(true);
        }
    }

    /// The current health of a container with a health check.
    pub fn health_of(&self, id: &str) -> Option<Health> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|(rx, _)| rx.borrow().clone())
    }

    /// A receiver that sees every health change of a container.
    pub fn watch_health(&self, id: &str) -> Option<watch::Receiver<Health>> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|(rx, _)| rx.clone())
    }

    /// Removes what interrupted work left: half-prepared containers (no container.json),
    /// containers whose removal was interrupted, libcontainer state and cgroups of
    /// containers that no longer exist, and stray mounts under our root.
    async fn clean_leftovers(&self) -> Result<()> {
        let left = {
            // no prepare runs meanwhile: what is half-made now was left by a crash, and
            // what belongs to no container now is no new container's either
            let _cleaning = match self.lock_root(true).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot lock the containers' root: leftovers of earlier runs are left for the next start");
                    return Ok(());
                }
            };
            self.leftovers()?
        };
        // (each item names a container that is gone or half-made, which no prepare
        // takes again: the work, which may wait on the keeper, is done unlocked)
        for id in left.removing {
            let _ = self.remove(&id).await;
        }
        // (a half-made container's libcontainer state and cgroups are among those of
        // no container, and its rootfs among the stray mounts)
        for p in left.half_made {
            let _ = unmount(&p.join("rootfs")); // (never remove through a mount)
            let _ = fs::remove_dir_all(&p);
        }
        for (id, p) in left.states {
            let _ = self.call(&Request::Delete { id }).await;
            let _ = fs::remove_dir_all(p);
        }
        for d in left.cgroups {
            let _ = fs::remove_dir(d);
        }
        Ok(())
    }

    /// What [`Self::clean_leftovers`] removes, found under the root lock; stray mounts
    /// are unmounted at once.
    fn leftovers(&self) -> Result<Leftovers> {
        let mut left = Leftovers::default();
        let mut known = Vec::new();
        for e in fs::read_dir(&self.root)
            .map_err(io("-", "list containers"))?
            .flatten()
        {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !p.is_dir() || name == "libcontainer" {
                continue;
            }
            if p.join("removing").exists() {
                // (its removal, done again, takes its mounts, state and cgroups too)
                left.removing.push(name.clone());
                known.push(name);
            } else if !p.join("container.json").is_file() {
                left.half_made.push(p);
            } else {
                known.push(name);
            }
        }
        // libcontainer state without a container of ours
        if let Ok(rd) = fs::read_dir(self.root.join("libcontainer")) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if !known.contains(&id) {
                    left.states.push((id, e.path()));
                }
            }
        }
        // cgroups under our parent without a container
        for sub in cgroup_roots() {
            let parent = sub.join(self.cfg.cgroup_parent.trim_matches('/'));
            for e in fs::read_dir(&parent).into_iter().flatten().flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() && !known.contains(&id) {
                    left.cgroups.push(e.path());
                }
            }
        }
        // overlay mounts under our root that belong to no container
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            let Some(mp) = line.split_whitespace().nth(4) else {
                continue;
            };
            let mp = Path::new(mp);
            if let Ok(rest) = mp.strip_prefix(&self.root) {
                let id = rest
                    .components()
                    .next()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !known.contains(&id) {
                    let _ = unmount(mp);
                }
            }
        }
        Ok(left)
    }
}

/// Leftovers of earlier runs, by kind (see [`ContainerRuntime::clean_leftovers`]).
#[derive(Default)]
struct Leftovers {
    /// containers whose removal was interrupted
    removing: Vec<String>,
    /// directories of containers whose prepare was interrupted
    half_made: Vec<PathBuf>,
    /// libcontainer state of no container: ID and directory
    states: Vec<(String, PathBuf)>,
    cgroups: Vec<PathBuf>,
}

/// Makes the containers' directories root's alone, also those made before shoal said so:
/// each container's directory (its rootfs, writable layer, bundle, logs) 0700, and the
/// state files in it 0600. What is inside a container's root keeps its modes.
fn secure_containers(root: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(root)?.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if !m.is_dir() {
            crate::files::secure_tree(&p)?;
            continue;
        }
        // (a container removed meanwhile, by another process, is no concern)
        match fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        let Ok(entries) = fs::read_dir(&p) else {
            continue;
        };
        for f in entries.flatten() {
            let name = f.file_name();
            if !matches!(name.to_str(), Some("rootfs" | "upper" | "work")) {
                crate::files::secure_tree(&f.path())?;
            }
        }
    }
    Ok(())
}

/// Image IDs in use by the containers under `data_root`, each with one container using it.
pub fn image_users_at(data_root: &Path) -> HashMap<Digest, String> {
    let mut m = HashMap::new();
    for e in fs::read_dir(data_root.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(d) = fs::read_to_string(e.path().join("image")).map(|s| s.trim().to_string()) {
            if let Ok(d) = d.parse::<Digest>() {
                m.insert(d, e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    m
}

/// On a cgroup v2 host, makes the containers' parent cgroup (and its parents) before a
/// container needs it: libcgroups makes each level with a check-then-create, so two
/// containers created at once (the keeper creates up to 8 in parallel) race on a parent
/// that does not exist yet, and the loser fails with EEXIST (found on the VM suite's
/// cgroup v2 guests). A hybrid host's v1 hierarchies are made with create_dir_all,
/// which does not race.
fn ensure_unified_parent(parent: &str) -> std::io::Result<()> {
    let rel = parent.trim_matches('/');
    if rel.is_empty() || !unified() {
        return Ok(());
    }
    fs::create_dir_all(Path::new(CGROUP_BASE).join(rel))
}

/// Where the cgroup hierarchies are mounted.
const CGROUP_BASE: &str = "/sys/fs/cgroup";

/// Whether the host is cgroup v2 only (the v2 hierarchy at the base, not beside v1's).
fn unified() -> bool {
    Path::new(CGROUP_BASE).join("cgroup.controllers").exists()
}

/// The mount points of the cgroup hierarchies (v1 controllers, or the v2 root).
pub fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new(CGROUP_BASE);
    let mut v: Vec<PathBuf> = fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !fs::symlink_metadata(p)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(true)
        })
        .collect();
    if unified() {
        v.push(base.to_path_buf());
    }
    v
}

/// What cgroup filesystems this process sees at `/sys/fs/cgroup`, from its mount table:
/// `Ok` with a description (`cgroup v2 at /sys/fs/cgroup`), or `Err` with what is there
/// instead (libcontainer, with none, fails every container with "failed to detect cgroup
/// setup").
pub fn cgroup_setup() -> Result<String, String> {
    let table = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo is unreadable ({e})"))?;
    describe_cgroups(&table)
}

/// [`cgroup_setup`] of a mount table (mountinfo's format).
fn describe_cgroups(mountinfo: &str) -> Result<String, String> {
    // mount point (5th field) and, after the " - " separator, the filesystem type
    let mounts: Vec<(&str, &str)> = mountinfo
        .lines()
        .filter_map(|l| {
            let point = l.split(' ').nth(4)?;
            let fstype = l.split(" - ").nth(1)?.split(' ').next()?;
            Some((point, fstype))
        })
        .collect();
    let under = |p: &str| p == CGROUP_BASE || p.starts_with(&format!("{CGROUP_BASE}/"));
    let v2 = mounts
        .iter()
        .any(|(p, t)| *t == "cgroup2" && *p == CGROUP_BASE);
    let v1 = mounts
        .iter()
        .filter(|(p, t)| *t == "cgroup" && under(p))
        .count();
    match (v2, v1) {
        (true, 0) => Ok(format!("cgroup v2 at {CGROUP_BASE}")),
        (_, n) if n > 0 => Ok(format!("cgroup v1: {n} hierarchies under {CGROUP_BASE}")),
        _ => {
            // what is there instead: the last mount at or above the base
            let covering = mounts
                .iter()
                .rev()
                .find(|(p, _)| {
                    *p == "/"
                        || *p == CGROUP_BASE
                        || CGROUP_BASE
                            .strip_prefix(*p)
                            .is_some_and(|rest| rest.starts_with('/'))
                })
                .map(|(p, t)| format!("{CGROUP_BASE} is part of the {t} mounted at {p}"))
                .unwrap_or_else(|| format!("nothing is mounted at {CGROUP_BASE}"));
            Err(format!("no cgroup filesystem is mounted ({covering})"))
        }
    }
}

/// The directories a container's cgroup has, in every hierarchy.
pub fn cgroup_dirs(parent: &str, id: &str) -> Vec<PathBuf> {
    let rel = spec::cgroup_path(parent, id);
    cgroup_roots()
        .into_iter()
        .map(|r| r.join(rel.trim_start_matches('/')))
        .filter(|p| p.exists())
        .collect()
}

fn remove_cgroup_dirs(parent: &str, id: &str) {
    for d in cgroup_dirs(parent, id) {
        let _ = fs::remove_dir(d);
    }
}

/// Takes an flock on `path` (creating it, root's alone). The lock lasts as long as the
/// returned file.
fn lock_file(
    path: &Path,
    arg: nix::fcntl::FlockArg,
) -> std::io::Result<nix::fcntl::Flock<fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    nix::fcntl::Flock::lock(f, arg).map_err(|(_, e)| e.into())
}

pub fn is_mountpoint(p: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = p.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(want.as_ref()))
}

fn unmount(p: &Path) -> std::io::Result<()> {
    while is_mountpoint(p) {
        nix::mount::umount2(p, MntFlags::MNT_DETACH).map_err(std::io::Error::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::describe_cgroups;

    #[test]
    fn cgroup_mounts_are_found_or_what_is_there_instead_is_said() {
        let v2 = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(describe_cgroups(v2).unwrap(), "cgroup v2 at /sys/fs/cgroup");
        let v1 = "30 24 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n\
                  31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                  32 30 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        assert_eq!(
            describe_cgroups(v1).unwrap(),
            "cgroup v1: 2 hierarchies under /sys/fs/cgroup"
        );
        // as under `ip netns exec`: a fresh sysfs at /sys, nothing below it
        let none = "20 1 8:1 / / rw - ext4 /dev/vda rw\n\
                    40 20 0:50 / /sys rw - sysfs ns1 rw\n";
        assert_eq!(
            describe_cgroups(none).unwrap_err(),
            "no cgroup filesystem is mounted (/sys/fs/cgroup is part of the sysfs mounted at /sys)"
        );
        let bare = "20 1 8:1 / / rw - ext4 /dev/vda rw\n";
        assert!(describe_cgroups(bare)
            .unwrap_err()
            .contains("part of the ext4 mounted at /"));
    }
}
