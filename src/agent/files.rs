//! A task's secrets and configs as files. The managers send a node the data its tasks
//! need with the tasks; the agent keeps it in memory only ([`Held`]), while a task here
//! uses it. To start a task, the agent mounts a tmpfs of its own (`nodev,nosuid,noexec`,
//! 0700) holding that task's files alone, each with the owner and mode asked for, and the
//! container gets each file bind-mounted read-only at its target. Once the container is
//! made (it holds its own mounts), the host's mount is detached: the files live in the
//! container's mounts only, and go with it. Nothing is ever written to the node's disk,
//! and the kept assignments (`swarm/assignments.pb`) hold references, never data.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use shoal_proto::{Config, FileReference, RegistryCredential, Secret, Task};
use shoal_runtime::container::spec::{MountKind, MountSpec};
use zeroize::Zeroizing;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
}

/// A secret's or config's data at one version.
pub type FileKey = (Kind, String, u64);

/// What the managers sent for this node's tasks, in memory only: registry credentials
/// by service ID (`--with-registry-auth`), and secrets' and configs' data.
#[derive(Default)]
pub struct Held {
    pub auths: Mutex<HashMap<String, RegistryCredential>>,
    pub files: Mutex<HashMap<FileKey, Zeroizing<Vec<u8>>>>,
    /// How many secrets (at a version) the managers have sent since the daemon started.
    pub secrets_received: std::sync::atomic::AtomicU64,
}

fn version(v: u64) -> u64 {
    v.max(1)
}

/// The references of a task, with their kind.
pub fn references(t: &Task) -> impl Iterator<Item = (Kind, &FileReference)> {
    let c = t.spec.as_ref().and_then(|s| s.container.as_ref());
    let secrets = c.map(|c| c.secrets.as_slice()).unwrap_or_default();
    let configs = c.map(|c| c.configs.as_slice()).unwrap_or_default();
    secrets
        .iter()
        .map(|r| (Kind::Secret, r))
        .chain(configs.iter().map(|r| (Kind::Config, r)))
}

pub fn key(kind: Kind, r: &FileReference) -> FileKey {
    (kind, r.source_id.clone(), version(r.version))
}

impl Held {
    /// Takes what a message sent (a complete set replaces it all), and keeps only what
    /// the node's tasks still use (files: those of tasks that may still run): `uses`
    /// calls its argument with each task.
    pub fn learn(
        &self,
        complete: bool,
        auths: HashMap<String, RegistryCredential>,
        secrets: Vec<Secret>,
        configs: Vec<Config>,
        uses: impl Fn(&mut dyn FnMut(&Task)),
    ) {
        let mut auths_held = self.auths.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if complete {
            auths_held.clear();
            held.clear();
        }
        auths_held.extend(auths);
        self.secrets_received
            .fetch_add(secrets.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for s in secrets {
            let data = s.spec.map(|x| x.data).unwrap_or_default();
            held.insert(
                (Kind::Secret, s.id, version(s.version)),
                Zeroizing::new(data),
            );
        }
        for c in configs {
            let data = c.spec.map(|x| x.data).unwrap_or_default();
            held.insert(
                (Kind::Config, c.id, version(c.version)),
                Zeroizing::new(data),
            );
        }
        if held.is_empty() && auths_held.is_empty() {
            return;
        }
        let (mut services, mut files) = (HashSet::new(), HashSet::new());
        uses(&mut |t: &Task| {
            services.insert(t.service_id.clone());
            // a task told to stop never starts again: its files go
            if t.may_run() {
                files.extend(references(t).map(|(k, r)| key(k, r)));
            }
        });
        auths_held.retain(|service, _| services.contains(service));
        held.retain(|k, _| files.contains(k));
    }

    /// How many secrets and configs are held (for `shoal info`, and tests).
    pub fn counts(&self) -> (usize, usize) {
        let held = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let secrets = held.keys().filter(|k| k.0 == Kind::Secret).count();
        (secrets, held.len() - secrets)
    }
}

/// Where a task's files are mounted (while its container is being made).
fn task_dir(root: &Path, task_id: &str) -> PathBuf {
    root.join(task_id)
}

const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Mounts `task`'s tmpfs under `root` and writes its files there; the bind mounts that
/// put them at their targets. Nothing when the task has no files.
pub fn materialize(root: &Path, task: &Task, held: &Held) -> Result<Vec<MountSpec>, String> {
    let refs: Vec<(Kind, &FileReference)> = references(task).collect();
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let files = held.files.lock().unwrap_or_else(|p| p.into_inner());
    let mut wanted = Vec::new();
    for (kind, r) in &refs {
        let Some(data) = files.get(&key(*kind, r)) else {
            return Err(format!(
                "{} {} (version {}) is not on this node: the managers send it with the task",
                kind.name(),
                r.source_name,
                version(r.version)
            ));
        };
        wanted.push((*kind, *r, data));
    }
    let dir = task_dir(root, &task.id);
    release(root, &task.id); // what a crash left half-made
    shoal_runtime::files::private_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pages: u64 = wanted
        .iter()
        .map(|(_, _, d)| (d.len() as u64).div_ceil(4096) * 4096)
        .sum();
    let flags = nix::mount::MsFlags::MS_NODEV
        | nix::mount::MsFlags::MS_NOSUID
        | nix::mount::MsFlags::MS_NOEXEC;
    let opts = format!("mode=0700,size={}", pages + 64 * 1024);
    nix::mount::mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        flags,
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mounting the task's tmpfs at {}: {e}", dir.display()))?;
    let written = (|| {
        // never a byte to a disk: the directory must be the tmpfs just mounted
        let fs = nix::sys::statfs::statfs(&dir).map_err(|e| e.to_string())?;
        if fs.filesystem_type().0 as i64 != TMPFS_MAGIC {
            return Err(format!(
                "{} is not a tmpfs after mounting one",
                dir.display()
            ));
        }
        let mut mounts = Vec::new();
        for (i, (kind, r, data)) in wanted.iter().enumerate() {
            let path = dir.join(format!("{}-{i}", kind.name()));
            write_file(&path, r, data)?;
            let target = match kind {
                Kind::Secret => crate::spec::files::secret_path(r),
                Kind::Config => crate::spec::files::config_path(r),
            };
            mounts.push(MountSpec {
                kind: MountKind::Bind,
                source: path.display().to_string(),
                target,
                read_only: true,
                tmpfs_size: None,
            });
        }
        Ok(mounts)
    })();
    if written.is_err() {
        release(root, &task.id);
    }
    written
}

fn write_file(path: &Path, r: &FileReference, data: &[u8]) -> Result<(), String> {
    let id = |s: &str, what: &str| -> Result<u32, String> {
        if s.is_empty() {
            return Ok(0);
        }
        s.parse()
            .map_err(|_| format!("{what} {s:?} of {} is not a number", r.source_name))
    };
    let (uid, gid) = (id(&r.uid, "uid")?, id(&r.gid, "gid")?);
    let mode = if r.mode == 0 { 0o444 } else { r.mode & 0o777 };
    let e = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(e)?;
    f.write_all(data).map_err(e)?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(e)?;
    use std::os::unix::fs::PermissionsExt as _;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(e)
}

/// Detaches the task's tmpfs (its container keeps its own mounts of the files) and
/// removes its mount point. Nothing when there is none.
pub fn release(root: &Path, task_id: &str) {
    let dir = task_dir(root, task_id);
    if !dir.exists() {
        return;
    }
    while nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    if let Err(e) = std::fs::remove_dir(&dir) {
        tracing::warn!(task.id = %task_id, error = %e, "could not remove the task's file mount point");
    }
}

/// Releases the mounts of tasks this node no longer has.
pub fn sweep(root: &Path, keep: &HashSet<&str>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if let Some(id) = e.file_name().to_str() {
            if !keep.contains(id) {
                release(root, id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ContainerSpec, SecretSpec, TaskSpec};

    fn task(id: &str, service: &str, secrets: Vec<FileReference>) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    secrets,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn reference(id: &str, version: u64) -> FileReference {
        FileReference {
            source_id: id.into(),
            source_name: format!("name-{id}"),
            version,
            ..Default::default()
        }
    }

    fn secret(id: &str, version: u64, data: &[u8]) -> Secret {
        Secret {
            id: id.into(),
            version,
            spec: Some(SecretSpec {
                data: data.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn each<'a>(tasks: &'a [&'a Task]) -> impl Fn(&mut dyn FnMut(&Task)) + 'a {
        move |f| tasks.iter().for_each(|t| f(t))
    }

    /// A node holds a secret while one of its tasks uses it, at the version the task
    /// names; a complete set replaces what was held.
    #[test]
    fn a_secret_is_held_while_a_task_uses_it() {
        let held = Held::default();
        let a = task("t1", "s1", vec![reference("x", 2)]);
        held.learn(
            false,
            HashMap::new(),
            vec![secret("x", 2, b"two"), secret("y", 1, b"other")],
            vec![],
            each(&[&a]),
        );
        // y is used by no task here
        assert_eq!(held.counts(), (1, 0));
        assert!(held
            .files
            .lock()
            .unwrap()
            .contains_key(&(Kind::Secret, "x".into(), 2)));
        // version 1 is another key
        let old = task("t0", "s1", vec![reference("x", 1)]);
        held.learn(
            false,
            HashMap::new(),
            vec![secret("x", 1, b"one")],
            vec![],
            each(&[&a, &old]),
        );
        assert_eq!(held.counts(), (2, 0));
        // the task that used version 1 is gone
        held.learn(false, HashMap::new(), vec![], vec![], each(&[&a]));
        assert_eq!(held.counts(), (1, 0));
        // a task told to stop lets its files go
        let mut stopped = a.clone();
        stopped.desired_state = shoal_proto::TaskState::Shutdown as i32;
        held.learn(false, HashMap::new(), vec![], vec![], each(&[&stopped]));
        assert_eq!(held.counts(), (0, 0));
        // a complete set with no tasks: nothing held
        held.learn(true, HashMap::new(), vec![], vec![], each(&[]));
        assert_eq!(held.counts(), (0, 0));
    }

    #[test]
    fn a_missing_secret_is_named() {
        let held = Held::default();
        let dir = tempfile::tempdir().unwrap();
        let t = task("t1", "s1", vec![reference("x", 3)]);
        let e = materialize(dir.path(), &t, &held).unwrap_err();
        assert!(
            e.contains("secret name-x (version 3) is not on this node"),
            "{e}"
        );
        assert!(!dir.path().join("t1").exists());
        // no files, no mount
        assert!(materialize(dir.path(), &task("t2", "s1", vec![]), &held)
            .unwrap()
            .is_empty());
    }
}
