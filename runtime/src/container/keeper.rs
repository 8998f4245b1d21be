//! The keeper: one small process per node that owns every container's life.
//!
//! Why a keeper (and not a shim per container, nor the daemon itself):
//! - **Containers outlive the daemon.** The keeper is the parent of every container's
//!   init (libcontainer clones it with `CLONE_PARENT`, so it is the caller's child) and a
//!   child subreaper, so exit statuses are reaped here and written to `exit.json`, never
//!   lost with a dying daemon. The daemon can be killed, upgraded and restarted at will:
//!   it reconnects to the keeper and re-adopts its containers as they are.
//! - **Output is never a pipe into the daemon.** A container's stdout and stderr are
//!   FIFOs in its directory, opened read-write by the container itself, so it never gets
//!   EPIPE; the keeper drains them into log files. Should the keeper itself restart, it
//!   reopens the FIFOs and carries on (what the kernel buffered is kept).
//! - **libcontainer is not thread-safe** (it `chdir`s around a relative notify socket,
//!   and allocates in children made by a raw `clone3`, which is only safe when the caller
//!   has a single thread). The keeper is single-threaded *by construction*: a
//!   current-thread tokio runtime, no blocking pool, and a check of
//!   `/proc/self/status` before every libcontainer call that refuses if another thread
//!   ever appears. To create several containers at once it forks short-lived helpers
//!   (a fork of a single-threaded process is safe); each runs one libcontainer build in
//!   its own process, with `as_sibling`, so the container's init is still the keeper's
//!   child. Everything else (start, kill, exec, delete) runs in the keeper itself.
//! - **No resident process per container**: one keeper for all of them (about 3 MiB).
//!
//! What the keeper cannot survive: being killed itself while containers run. They keep
//! running (orphaned to init) and are re-adopted by the next keeper, but their exit codes
//! can then only be reported as unknown (`Exit::known == false`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use chrono::Utc;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use super::logs::{LineSplitter, LogWriter, Stream};
use super::spec::LogConfig;
use super::wire::{Exit, KeptState, Request, Response};

/// Paths of a keeper rooted at `root` (`<data-root>/containers`).
pub fn socket_path(root: &Path) -> PathBuf {
    root.join("keeper.sock")
}

fn lc_root(root: &Path) -> PathBuf {
    root.join("libcontainer")
}

/// Beside libcontainer's `state.json`: a copy of the last state the keeper made
/// (created, started), written atomically.
const KEPT_STATE: &str = "state.json.kept";

/// Keeps a copy of the container's `state.json` in `dir` ([`KEPT_STATE`]). libcontainer
/// writes that file in place (truncate, then write), so a crash or a full disk between
/// the two would leave the container unreadable: it could no longer be signalled, and a
/// running one would be taken for dead.
fn keep_state(dir: &Path) {
    let Ok(b) = fs::read(dir.join("state.json")) else {
        return;
    };
    if serde_json::from_slice::<serde_json::Value>(&b).is_err() {
        return;
    }
    if let Err(e) = crate::files::write_atomic(&dir.join(KEPT_STATE), &b) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not keep a copy of the container's state");
    }
}

/// libcontainer's `Container::load`, with an unreadable `state.json` put back from the
/// copy [`keep_state`] kept (libcontainer then reads the process's real status).
fn load(dir: &Path) -> Result<Container, libcontainer::error::LibcontainerError> {
    let e = match Container::load(dir.to_path_buf()) {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let Ok(kept) = fs::read(dir.join(KEPT_STATE)) else {
        return Err(e);
    };
    if crate::files::write_atomic(&dir.join("state.json"), &kept).is_err() {
        return Err(e);
    }
    tracing::warn!(dir = %dir.display(), error = %e, "the container's state.json was unreadable: put back the copy kept of it");
    Container::load(dir.to_path_buf())
}

fn exit_path(dir: &Path) -> PathBuf {
    dir.join("exit.json")
}

/// Whether `/` is the kernel's initial root, an initramfs (fs type `rootfs`), as on a
/// host that runs from RAM. pivot_root(2) cannot leave that root (EINVAL), so containers
/// are then set up with a move mount and chroot instead, as runc's `--no-pivot` and
/// Docker's `DOCKER_RAMDISK` do. Read from `/proc/self/mountinfo` once.
fn root_is_ramdisk() -> bool {
    static RAMDISK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RAMDISK.get_or_init(|| {
        fs::read_to_string("/proc/self/mountinfo")
            .map(|m| ramdisk_in(&m))
            .unwrap_or(false)
    })
}

/// [`root_is_ramdisk`] for a mountinfo text: the mount at `/` is of type `rootfs` (the
/// fields after ` - ` are type, source, options).
fn ramdisk_in(mountinfo: &str) -> bool {
    mountinfo
        .lines()
        .rev()
        .filter(|l| l.split_whitespace().nth(4) == Some("/"))
        .filter_map(|l| l.split_once(" - "))
        .find_map(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|t| t == "rootfs")
}

/// Runs the keeper until it is killed. Returns at once (Ok) if another keeper already
/// holds `root`.
pub fn run(root: &Path) -> anyhow::Result<()> {
    crate::files::private_umask();
    fs::create_dir_all(lc_root(root))?;
    let lock = File::create(root.join("keeper.lock"))?;
    if nix::fcntl::Flock::lock(
        lock.try_clone()?,
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .is_err()
    {
        eprintln!("keeper: another keeper already serves {}", root.display());
        return Ok(());
    }
    let _ = nix::unistd::setsid();
    // Rust ignores SIGPIPE, and an ignored signal stays ignored across exec: containers
    // would inherit that. A handler that does nothing protects the keeper the same way
    // but is reset to the default in every container.
    extern "C" fn ignore(_: libc::c_int) {}
    let act = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(ignore),
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler is async-signal-safe (it does nothing).
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGPIPE, &act) }?;
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if root_is_ramdisk() {
        tracing::warn!("the root filesystem is an initramfs, which pivot_root cannot leave: containers get their root by a move mount and chroot (as runc --no-pivot)");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let res = local.block_on(&rt, serve(root.to_path_buf()));
    drop(lock);
    res
}

/// One container the keeper looks after.
struct Tracked {
    dir: PathBuf,
    pid: Option<i32>,
    exit: Option<Exit>,
    /// Reaped but its output not yet fully drained.
    reaped: Option<Exit>,
    /// Output pumps still running (0, 1 or 2).
    pumps: u8,
    waiters: Vec<oneshot::Sender<Exit>>,
}

struct Keeper {
    root: PathBuf,
    containers: HashMap<String, Tracked>,
    /// Exec'd processes (health checks) by pid.
    execs: HashMap<i32, oneshot::Sender<i32>>,
    /// Exits of children nobody claimed yet: a container's init can exit before the
    /// helper that created it has told us its pid.
    unclaimed: HashMap<i32, (i32, Option<i32>)>,
    /// Limits creations in flight to [`PARALLEL_CREATES`].
    creating: Rc<tokio::sync::Semaphore>,
}

/// How many containers are created at once, each by a helper forked from the keeper.
const PARALLEL_CREATES: usize = 8;

type Shared = Rc<RefCell<Keeper>>;

async fn serve(root: PathBuf) -> anyhow::Result<()> {
    let sock = socket_path(&root);
    let _ = fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)?;
    fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let k: Shared = Rc::new(RefCell::new(Keeper {
        root: root.clone(),
        containers: HashMap::new(),
        execs: HashMap::new(),
        unclaimed: HashMap::new(),
        creating: Rc::new(tokio::sync::Semaphore::new(PARALLEL_CREATES)),
    }));
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    readopt(&k);
    reap(&k); // anything that exited while no keeper listened for SIGCHLD
    loop {
        tokio::select! {
            _ = sigchld.recv() => reap(&k),
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    tokio::task::spawn_local(handle(k.clone(), stream));
                }
            }
        }
    }
}

/// Picks up containers from disk: ones that exited while no keeper watched, ones still
/// running (their output pumps restart; if they are no longer our children their exit
/// can only be detected, not reaped).
fn readopt(k: &Shared) {
    let root = k.borrow().root.clone();
    let Ok(entries) = fs::read_dir(lc_root(&root)) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let dir = root.join(&id);
        let exit = read_exit(&dir);
        let state = load(&e.path()).ok();
        let pid = state.as_ref().and_then(|c| c.pid()).map(|p| p.as_raw());
        let alive = state.as_ref().is_some_and(|c| {
            matches!(
                c.status(),
                libcontainer::container::ContainerStatus::Running
                    | libcontainer::container::ContainerStatus::Created
                    | libcontainer::container::ContainerStatus::Paused
            )
        });
        // a pid only counts while it is in the container's cgroup (after a reboot the
        // number may belong to anyone)
        let alive = alive && pid.is_some_and(|p| in_container_cgroup(p, &dir));
        let mut t = Tracked {
            dir: dir.clone(),
            pid,
            exit: exit.clone(),
            reaped: None,
            pumps: 0,
            waiters: vec![],
        };
        if exit.is_none() && !alive && !is_our_zombie(pid) {
            // reaped by a keeper that died before it filed the exit, or died while no
            // keeper was its parent (then the status is gone)
            let x = read_pending(&dir).unwrap_or_else(|| Exit {
                code: 255,
                signal: None,
                oom: oom_killed(&dir),
                finished_at: Utc::now(),
                known: false,
            });
            write_exit(&dir, &x);
            t.exit = Some(x);
        }
        let running = t.exit.is_none() && alive;
        k.borrow_mut().containers.insert(id.clone(), t);
        if running {
            if let Ok(log) = LogWriter::open(&dir.join("logs"), read_log_config(&dir)) {
                start_pumps(k, &id, &dir, log);
            }
            if let Some(p) = pid {
                if !is_our_child(p) {
                    tokio::task::spawn_local(watch_foreign(k.clone(), id, p));
                }
            }
        }
    }
}

/// Whether `pid` is a process of the container whose directory is `dir`.
fn in_container_cgroup(pid: i32, dir: &Path) -> bool {
    let Ok(cg) = fs::read_to_string(dir.join("cgroup")) else {
        return false;
    };
    let want = cg.trim().trim_end_matches('/').to_string();
    let nested = format!("{want}/");
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .any(|p| p == want || p.starts_with(&nested))
}

fn is_our_child(pid: i32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse::<i32>().ok());
    ppid == Some(std::process::id() as i32)
}

fn is_our_zombie(pid: Option<i32>) -> bool {
    pid.is_some_and(is_our_child)
}

/// Waits for a container that is not our child (we were restarted) to exit.
async fn watch_foreign(k: Shared, id: String, pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let mut watched = false;
    if fd >= 0 {
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: `owned` is a valid pidfd that the AsyncFd owns and nothing replaces or closes.
        if let Ok(afd) = unsafe { AsyncFd::register(owned) } {
            let _ = afd.readable().await;
            watched = true;
        }
    }
    if !watched {
        // no pidfd (an old kernel): poll
        while nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let dir = k.borrow().containers.get(&id).map(|t| t.dir.clone());
    if let Some(dir) = dir {
        let x = Exit {
            code: 255,
            signal: None,
            oom: oom_killed(&dir),
            finished_at: Utc::now(),
            known: false,
        };
        record_reaped(&k, &id, x);
    }
}

/// Reaps every child that has exited and files its status.
fn reap(k: &Shared) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => on_exit(k, pid.as_raw(), code, None),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                on_exit(k, pid.as_raw(), 128 + sig as i32, Some(sig as i32))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn on_exit(k: &Shared, pid: i32, code: i32, signal: Option<i32>) {
    if let Some(tx) = k.borrow_mut().execs.remove(&pid) {
        let _ = tx.send(code);
        return;
    }
    let found = k
        .borrow()
        .containers
        .iter()
        .find(|(_, t)| t.pid == Some(pid) && t.exit.is_none())
        .map(|(id, t)| (id.clone(), t.dir.clone()));
    if let Some((id, dir)) = found {
        let x = Exit {
            code,
            signal,
            oom: oom_killed(&dir),
            finished_at: Utc::now(),
            known: true,
        };
        record_reaped(k, &id, x);
    } else {
        let mut kb = k.borrow_mut();
        if kb.unclaimed.len() > 4096 {
            kb.unclaimed.clear(); // helpers' and intermediates' exits nobody will claim
        }
        kb.unclaimed.insert(pid, (code, signal));
    }
}

/// Files an exit once the container's output is drained (or after 2 s, if something
/// in it still holds the FIFOs open).
fn record_reaped(k: &Shared, id: &str, x: Exit) {
    let pumps = {
        let mut kb = k.borrow_mut();
        let Some(t) = kb.containers.get_mut(id) else {
            return;
        };
        // on disk at once: a keeper that dies while the output drains loses nothing
        if let Ok(b) = serde_json::to_vec(&x) {
            let _ = crate::files::replace_file(&t.dir.join("exit.pending"), &b);
        }
        t.reaped = Some(x);
        t.pumps
    };
    if pumps == 0 {
        finalize(k, id);
    } else {
        let (k2, id2) = (k.clone(), id.to_string());
        tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            finalize(&k2, &id2);
        });
    }
}

fn finalize(k: &Shared, id: &str) {
    let mut kb = k.borrow_mut();
    let Some(t) = kb.containers.get_mut(id) else {
        return;
    };
    if t.exit.is_some() {
        return;
    }
    let Some(x) = t.reaped.take() else { return };
    write_exit(&t.dir, &x);
    t.exit = Some(x.clone());
    for w in t.waiters.drain(..) {
        let _ = w.send(x.clone());
    }
}

fn write_exit(dir: &Path, x: &Exit) {
    if let Ok(b) = serde_json::to_vec(x) {
        if crate::files::write_atomic(&exit_path(dir), &b).is_ok() {
            let _ = fs::remove_file(dir.join("exit.pending"));
        }
    }
}

fn read_pending(dir: &Path) -> Option<Exit> {
    fs::read(dir.join("exit.pending"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn read_exit(dir: &Path) -> Option<Exit> {
    fs::read(exit_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn read_log_config(dir: &Path) -> LogConfig {
    fs::read(dir.join("log.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Whether the OOM killer struck in the container's memory cgroup (v1 `oom_kill`
/// counter in memory.oom_control, or v2 memory.events).
fn oom_killed(dir: &Path) -> bool {
    let Ok(cg) = fs::read_to_string(dir.join("cgroup")) else {
        return false;
    };
    let cg = cg.trim().trim_start_matches('/');
    for (file, key) in [
        (
            format!("/sys/fs/cgroup/memory/{cg}/memory.oom_control"),
            "oom_kill ",
        ),
        (format!("/sys/fs/cgroup/{cg}/memory.events"), "oom_kill "),
    ] {
        if let Ok(s) = fs::read_to_string(file) {
            return s.lines().any(|l| {
                l.strip_prefix(key)
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            });
        }
    }
    false
}

/// Refuses to go on if this process has ever grown a second thread: libcontainer is
/// only safe from a single-threaded caller.
fn ensure_single_thread() -> Result<(), String> {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(|n| n.trim().to_string());
    match threads.as_deref() {
        Some("1") => Ok(()),
        other => Err(format!(
            "keeper has {other:?} threads; libcontainer needs exactly one"
        )),
    }
}

/// An error and all its causes, for messages that say what really went wrong.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn start_pumps(k: &Shared, id: &str, dir: &Path, log: LogWriter) {
    let log = Rc::new(RefCell::new(log));
    for (name, stream) in [
        ("stdout.fifo", Stream::Stdout),
        ("stderr.fifo", Stream::Stderr),
    ] {
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(dir.join(name))
        {
            Ok(f) => f,
            Err(_) => continue,
        };
        if let Some(t) = k.borrow_mut().containers.get_mut(id) {
            t.pumps += 1;
        }
        tokio::task::spawn_local(pump(k.clone(), id.to_string(), f, stream, log.clone()));
    }
}

/// Copies one FIFO into the log until every writer is gone.
async fn pump(k: Shared, id: String, f: File, stream: Stream, log: Rc<RefCell<LogWriter>>) {
    let mut split = LineSplitter::default();
    // SAFETY: `f` is an open FIFO that the AsyncFd owns and nothing replaces or closes.
    if let Ok(afd) = unsafe { AsyncFd::register(f) } {
        // small: there is one per stream of every container (the pipe holds 64 KiB anyway)
        let mut buf = vec![0u8; 8 * 1024];
        loop {
            let Ok(mut guard) = afd.readable().await else {
                break;
            };
            match guard.try_io(|inner| inner.get_ref().read(&mut buf)) {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => split.feed(&buf[..n], &mut |line| {
                    let _ = log.borrow_mut().write(stream, line);
                }),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => break,
                Err(_would_block) => {}
            }
        }
    }
    split.finish(&mut |line| {
        let _ = log.borrow_mut().write(stream, line);
    });
    let done = {
        let mut kb = k.borrow_mut();
        match kb.containers.get_mut(&id) {
            Some(t) => {
                t.pumps = t.pumps.saturating_sub(1);
                t.pumps == 0 && t.reaped.is_some()
            }
            None => false,
        }
    };
    if done {
        finalize(&k, &id);
    }
}

async fn handle(k: Shared, stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(r).read_line(&mut line).await.is_err() {
        return;
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => dispatch(&k, req).await,
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    if let Ok(mut b) = serde_json::to_vec(&resp) {
        b.push(b'\n');
        let _ = w.write_all(&b).await;
    }
}

fn err(m: impl Into<String>) -> Response {
    Response::Error { message: m.into() }
}

async fn dispatch(k: &Shared, req: Request) -> Response {
    let root = k.borrow().root.clone();
    // statuses the SIGCHLD handler has not filed yet must not look like live processes
    reap(k);
    match req {
        Request::Ping => Response::Pong {
            pid: std::process::id() as i32,
        },
        Request::Create {
            id,
            bundle,
            dir,
            log,
        } => match create(k, &root, &id, &bundle, &dir, log).await {
            Ok(pid) => Response::Created { pid },
            Err(e) => err(e),
        },
        Request::Start { id } => {
            if let Err(e) = ensure_single_thread() {
                return err(e);
            }
            let dir = lc_root(&root).join(&id);
            match load(&dir).and_then(|mut c| c.start()) {
                Ok(()) => {
                    keep_state(&dir);
                    Response::Done
                }
                Err(e) => err(format!("start {id}: {}", chain(&e))),
            }
        }
        Request::Kill { id, signal, all } => {
            let sig = match libcontainer::signal::Signal::try_from(signal) {
                Ok(s) => s,
                Err(e) => return err(format!("signal {signal}: {e}")),
            };
            if k.borrow()
                .containers
                .get(&id)
                .is_some_and(|t| t.exit.is_some() || t.reaped.is_some())
            {
                return Response::Done; // already gone: nothing to signal
            }
            match load(&lc_root(&root).join(&id)).and_then(|mut c| c.kill(sig, all)) {
                Ok(()) => Response::Done,
                // it died between our check and the signal: nothing is left to signal
                Err(libcontainer::error::LibcontainerError::IncorrectStatus(
                    libcontainer::container::ContainerStatus::Stopped,
                )) => Response::Done,
                Err(e) => err(format!("kill {id}: {}", chain(&e))),
            }
        }
        Request::Delete { id } => {
            if let Err(e) = ensure_single_thread() {
                return err(e);
            }
            let path = lc_root(&root).join(&id);
            if path.exists() {
                match load(&path) {
                    Ok(mut c) => {
                        if let Err(e) = c.delete(true) {
                            return err(format!("delete {id}: {}", chain(&e)));
                        }
                    }
                    // state.json unreadable (a crash mid-create): drop the state by hand;
                    // the caller removes the cgroup
                    Err(_) => {
                        let _ = fs::remove_dir_all(&path);
                    }
                }
            }
            reap(k);
            k.borrow_mut().containers.remove(&id);
            Response::Done
        }
        Request::State { id } => match state(k, &root, &id) {
            Some(s) => Response::State(s),
            None => err(format!("no such container: {id}")),
        },
        Request::List => {
            let ids: Vec<String> = k.borrow().containers.keys().cloned().collect();
            Response::List {
                containers: ids.iter().filter_map(|id| state(k, &root, id)).collect(),
            }
        }
        Request::Wait { id } => {
            let rx = {
                let mut kb = k.borrow_mut();
                let Some(t) = kb.containers.get_mut(&id) else {
                    return err(format!("no such container: {id}"));
                };
                if let Some(x) = &t.exit {
                    return Response::Exited(x.clone());
                }
                let (tx, rx) = oneshot::channel();
                t.waiters.push(tx);
                rx
            };
            match rx.await {
                Ok(x) => Response::Exited(x),
                Err(_) => err(format!("container {id} was deleted while waited on")),
            }
        }
        Request::Exec {
            id,
            args,
            env,
            uid,
            gid,
            timeout_ms,
        } => exec(k, &root, &id, args, env, uid, gid, timeout_ms).await,
    }
}

fn state(k: &Shared, root: &Path, id: &str) -> Option<KeptState> {
    let kb = k.borrow();
    let t = kb.containers.get(id)?;
    let status = if t.exit.is_some() || t.reaped.is_some() {
        "stopped".to_string()
    } else {
        load(&lc_root(root).join(id))
            .map(|c| format!("{:?}", c.status()).to_lowercase())
            .unwrap_or_else(|_| "stopped".into())
    };
    Some(KeptState {
        id: id.to_string(),
        status,
        pid: t.pid,
        exit: t.exit.clone().or_else(|| t.reaped.clone()),
    })
}

/// Creates a container. libcontainer runs in a helper forked from this (single-threaded)
/// process, so several containers are created at once; with `as_sibling` the helper
/// makes the container's init a child of the keeper, which reaps it as before.
async fn create(
    k: &Shared,
    root: &Path,
    id: &str,
    bundle: &Path,
    dir: &Path,
    log: LogConfig,
) -> Result<i32, String> {
    ensure_single_thread()?;
    if k.borrow().containers.contains_key(id) {
        return Err(format!("container {id} exists already"));
    }
    let open_rw = |name: &str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(name))
            .map_err(|e| format!("{name}: {e}"))
    };
    // the container's ends: read-write, so a writer never sees EPIPE even with no reader
    let out_w = open_rw("stdout.fifo")?;
    let err_w = open_rw("stderr.fifo")?;
    let devnull = File::open("/dev/null").map_err(|e| e.to_string())?;
    let logw = LogWriter::open(&dir.join("logs"), log.clone()).map_err(|e| format!("log: {e}"))?;
    let _ = crate::files::write_atomic(
        &dir.join("log.json"),
        &serde_json::to_vec(&log).unwrap_or_default(),
    );
    k.borrow_mut().containers.insert(
        id.to_string(),
        Tracked {
            dir: dir.to_path_buf(),
            pid: None,
            exit: None,
            reaped: None,
            pumps: 0,
            waiters: vec![],
        },
    );
    // our read ends open while we still hold write ends: no early EOF
    start_pumps(k, id, dir, logw);
    let slots = k.borrow().creating.clone();
    let res = match slots.acquire().await {
        Ok(_slot) => create_in_helper(root, id, bundle, out_w, err_w, devnull).await,
        Err(_) => Err("keeper is stopping".to_string()),
    };
    match res {
        Ok(pid) => {
            keep_state(&lc_root(root).join(id));
            let early = k.borrow_mut().unclaimed.remove(&pid);
            if let Some(t) = k.borrow_mut().containers.get_mut(id) {
                t.pid = Some(pid);
            }
            if let Some((code, signal)) = early {
                on_exit(k, pid, code, signal); // it ended before we knew its pid
            }
            Ok(pid)
        }
        Err(e) => {
            k.borrow_mut().containers.remove(id);
            Err(e)
        }
    }
}

async fn create_in_helper(
    root: &Path,
    id: &str,
    bundle: &Path,
    out_w: File,
    err_w: File,
    devnull: File,
) -> Result<i32, String> {
    ensure_single_thread()?;
    let no_pivot = root_is_ramdisk();
    let build = move || {
        // what libcontainer makes in the container's root (mount points, /dev) gets the
        // container's modes, not the keeper's private ones
        crate::files::set_umask(crate::files::CONTAINER_UMASK);
        let built = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
            .with_root_path(lc_root(root))
            .and_then(|b| b.validate_id())
            .map(|b| {
                b.with_stdin(OwnedFd::from(devnull))
                    .with_stdout(OwnedFd::from(out_w))
                    .with_stderr(OwnedFd::from(err_w))
            })
            .and_then(|b| {
                b.as_init(bundle)
                    .with_systemd(false)
                    .with_no_pivot(no_pivot)
                    .with_detach(true)
                    .as_sibling(true)
                    .build()
            });
        match built {
            Ok(c) => match c.pid() {
                Some(p) => format!("OK {}\n", p.as_raw()),
                None => "ERR libcontainer gave no pid\n".to_string(),
            },
            Err(e) => format!("ERR create {id}: {}\n", chain(&e)),
        }
    };
    // SAFETY: this process has a single thread (checked just above), so the helper starts
    // in a consistent state; it only calls libcontainer.
    let text = unsafe { in_helper(&format!("create {id}"), build) }.await?;
    match text.trim().split_once(' ') {
        Some(("OK", pid)) => pid
            .parse()
            .map_err(|_| format!("create {id}: helper said {text:?}")),
        Some(("ERR", msg)) => Err(msg.to_string()),
        _ => Err(format!("create {id}: the helper died without an answer")),
    }
}

/// Runs `work` in a forked helper process and returns the line it answers (empty if it
/// died without one). The helper never returns into the caller, which it shares a copy
/// of: whatever `work` does, a panic included, it ends with `_exit` (a panic unwinding
/// out of the helper once did, on a full disk: the copies served the keeper's socket
/// and spun, and the keeper's callers waited forever).
///
/// # Safety
/// The process must have a single thread, or `work` must do only what is safe after a
/// fork of a process with several.
async unsafe fn in_helper(what: &str, work: impl FnOnce() -> String) -> Result<String, String> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: see the function's contract.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let line = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|_| format!("ERR {what}: the runtime panicked (see keeper.log)\n"));
            let mut f = File::from(w);
            let _ = std::io::Write::write_all(&mut f, line.as_bytes());
            // SAFETY: _exit ends the helper without running the caller's destructors.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            drop(work); // (the parent's copies of what the helper was given)
            nix::fcntl::fcntl(
                &r,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .map_err(|e| format!("pipe: {e}"))?;
            let mut out = Vec::new();
            // SAFETY: `r` is our pipe's read end, owned by the AsyncFd and closed only by it.
            let afd =
                unsafe { AsyncFd::register(File::from(r)) }.map_err(|e| format!("pipe: {e}"))?;
            let mut buf = [0u8; 1024];
            loop {
                let mut g = afd.readable().await.map_err(|e| format!("pipe: {e}"))?;
                // one line is the whole answer; don't wait for EOF: a new container's
                // init holds a copy of the write end until it execs
                match g.try_io(|i| i.get_ref().read(&mut buf)) {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => {
                        out.extend_from_slice(&buf[..n]);
                        if out.contains(&b'\n') {
                            break;
                        }
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => return Err(format!("{what}: helper: {e}")),
                    Err(_would_block) => {}
                }
            }
            let _ = child; // reaped with the others; its exit is nobody's
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn exec(
    k: &Shared,
    root: &Path,
    id: &str,
    args: Vec<String>,
    env: Vec<String>,
    uid: u32,
    gid: u32,
    timeout_ms: u64,
) -> Response {
    if let Err(e) = ensure_single_thread() {
        return err(e);
    }
    let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return err(format!("pipe: {e}")),
    };
    // only our end is non-blocking: the process's writes must block, not fail
    if let Err(e) = nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    ) {
        return err(format!("pipe: {e}"));
    }
    let env: HashMap<String, String> = env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let w2 = match w.try_clone() {
        Ok(x) => x,
        Err(e) => return err(e.to_string()),
    };
    let (tx, rx) = oneshot::channel();
    // what libcontainer's tenant process does not take from the container by itself
    let dir = k.borrow().containers.get(id).map(|t| t.dir.clone());
    let spec = dir.and_then(|d| oci_spec::runtime::Spec::load(d.join("bundle/config.json")).ok());
    let (cwd, gids) = spec
        .as_ref()
        .and_then(|s| s.process().as_ref())
        .map(|p| {
            (
                p.cwd().clone(),
                p.user().additional_gids().clone().unwrap_or_default(),
            )
        })
        .unwrap_or_else(|| ("/".into(), vec![]));
    let executor = TenantExecutor {
        seccomp: spec
            .as_ref()
            .and_then(|s| s.linux().as_ref())
            .and_then(|l| l.seccomp().clone()),
    };
    // its children start with the container's umask, not the keeper's
    let keeper_umask = crate::files::set_umask(crate::files::CONTAINER_UMASK);
    let built = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
        .with_root_path(lc_root(root))
        .map(|b| b.with_stdout(w).with_stderr(w2).with_executor(executor))
        .and_then(|b| {
            b.as_tenant()
                .with_container_args(args)
                .with_env(env)
                .with_user(Some(uid))
                .with_group(Some(gid))
                .with_additional_gids(gids)
                .with_cwd(Some(cwd))
                .with_detach(true)
                .build()
        });
    crate::files::set_umask(keeper_umask);
    let pid = match built {
        Ok(p) => p.as_raw(),
        Err(e) => return err(format!("exec in {id}: {}", chain(&e))),
    };
    k.borrow_mut().execs.insert(pid, tx);
    reap(k); // it may have finished already
    let file = File::from(r);
    let mut output = Vec::new();
    let timeout = Duration::from_millis(timeout_ms.max(1));
    // SAFETY: `file` is our pipe's read end, owned by the AsyncFd and closed only by it.
    let Ok(afd) = (unsafe { AsyncFd::register(file) }) else {
        return err("exec: cannot watch the output pipe");
    };
    let mut rx = rx;
    let mut code: Option<i32> = None;
    let mut open = true;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    // the exit decides when it is over, not the pipe's end (a background child may hold
    // it); output is read while it runs and for a moment after
    loop {
        let linger = tokio::time::sleep(Duration::from_millis(50));
        tokio::select! {
            c = &mut rx, if code.is_none() => code = Some(c.unwrap_or(-1)),
            g = afd.readable(), if open => {
                let Ok(mut g) = g else { open = false; continue };
                match g.try_io(|i| i.get_ref().read(&mut buf)) {
                    Ok(Ok(0)) | Ok(Err(_)) => open = false,
                    Ok(Ok(n)) => {
                        if output.len() < 4096 {
                            output.extend_from_slice(&buf[..n.min(4096 - output.len())]);
                        }
                    }
                    Err(_would_block) => {}
                }
            }
            _ = tokio::time::sleep_until(deadline), if code.is_none() => break,
            _ = linger, if code.is_some() => break,
        }
        if code.is_some() && !open {
            break;
        }
    }
    let output = String::from_utf8_lossy(&output).into_owned();
    match code {
        Some(code) => Response::Exec {
            code,
            output,
            timed_out: false,
        },
        None => {
            // ours to kill only while unreaped: until then its pid cannot be reused
            if k.borrow_mut().execs.remove(&pid).is_some() {
                let _ =
                    nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            Response::Exec {
                code: -1,
                output,
                timed_out: true,
            }
        }
    }
}

/// Runs a process in a running container (`exec`, health checks) under the container's
/// own seccomp profile. libcontainer 0.7 gives such a tenant the container's namespaces,
/// capabilities and no_new_privileges, but drops `linux.seccomp` from its spec, so the
/// filter is loaded here, in the new process, right before it execs (no_new_privileges
/// is set by then, so loading it needs no privilege).
#[derive(Clone)]
struct TenantExecutor {
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

impl libcontainer::workload::Executor for TenantExecutor {
    fn exec(
        &self,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorError> {
        if let Some(profile) = &self.seccomp {
            libcontainer::seccomp::initialize_seccomp(profile).map_err(|e| {
                libcontainer::workload::ExecutorError::Other(format!("seccomp: {e}"))
            })?;
        }
        libcontainer::workload::default::DefaultExecutor {}.exec(spec)
    }

    fn validate(
        &self,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::DefaultExecutor {}.validate(spec)
    }
}

/// Talks to a keeper.
#[derive(Clone, Debug)]
pub struct KeeperClient {
    sock: PathBuf,
    /// How long a request may go unanswered (a `wait` has no limit, an `exec` its own
    /// timeout more): a keeper that wedges fails its callers, it does not hang them.
    patience: Duration,
}

/// How long a keeper has to answer: a container's creation by libcontainer, on a slow
/// host, takes seconds.
pub const KEEPER_PATIENCE: Duration = Duration::from_secs(60);

impl KeeperClient {
    pub fn new(root: &Path) -> KeeperClient {
        KeeperClient {
            sock: socket_path(root),
            patience: KEEPER_PATIENCE,
        }
    }

    pub async fn call(&self, req: &Request) -> io::Result<Response> {
        let limit = match req {
            Request::Wait { .. } => None,
            Request::Exec { timeout_ms, .. } => {
                Some(self.patience + Duration::from_millis(*timeout_ms))
            }
            _ => Some(self.patience),
        };
        let talk = self.talk(req);
        let Some(limit) = limit else {
            return talk.await;
        };
        tokio::time::timeout(limit, talk).await.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the keeper at {} did not answer within {} s (see keeper.log beside it)",
                    self.sock.display(),
                    limit.as_secs_f64()
                ),
            ))
        })
    }

    async fn talk(&self, req: &Request) -> io::Result<Response> {
        let mut s = UnixStream::connect(&self.sock).await?;
        let mut b = serde_json::to_vec(req).map_err(io::Error::other)?;
        b.push(b'\n');
        s.write_all(&b).await?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await?;
        if line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "keeper closed the connection",
            ));
        }
        serde_json::from_str(&line).map_err(io::Error::other)
    }

    /// Pings the keeper; starts it with `cmd` (e.g. `shoal keeper --root ROOT`) if nothing
    /// answers, and waits up to 10 s for it to answer.
    pub async fn ensure(&self, cmd: &[std::ffi::OsString]) -> io::Result<i32> {
        if let Ok(Response::Pong { pid }) = self.call(&Request::Ping).await {
            return Ok(pid);
        }
        let (prog, args) = cmd
            .split_first()
            .ok_or_else(|| io::Error::other("no keeper command"))?;
        let log = self.sock.with_file_name("keeper.log");
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let mut child = std::process::Command::new(prog)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| {
                io::Error::other(format!(
                    "starting the keeper {}: {e}",
                    prog.to_string_lossy()
                ))
            })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Response::Pong { pid }) = self.call(&Request::Ping).await {
                // reap the keeper if it ever exits while we live, without blocking anyone
                std::thread::spawn(move || child.wait());
                return Ok(pid);
            }
            if let Ok(Some(status)) = child.try_wait() {
                // exit 0: another keeper won the race to serve this root; keep asking it
                if !status.success() {
                    return Err(io::Error::other(format!(
                        "the keeper exited with {status} before it answered (see {})",
                        self.sock.with_file_name("keeper.log").display()
                    )));
                }
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err(io::Error::other("the keeper did not answer within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ramdisk_in;

    /// A helper whose work panics ends there, and never returns into its caller (which
    /// it shares a copy of): the caller gets an error line, and nothing of the caller's
    /// runs in the helper, not even a destructor.
    #[tokio::test(flavor = "current_thread")]
    async fn a_helper_that_panics_never_returns_into_its_caller() {
        use std::io::Write;
        /// Notes the pid of each process that drops it: a helper that unwound into the
        /// test would drop its copy too.
        struct Mark(std::path::PathBuf);
        impl Drop for Mark {
            fn drop(&mut self) {
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&self.0)
                {
                    let _ = writeln!(f, "{}", std::process::id());
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let marks = dir.path().join("marks");
        let line = {
            let _mark = Mark(marks.clone());
            // SAFETY: the work only unwinds, with no panic hook (which would take the
            // stderr lock another test's thread may have held at the fork)
            unsafe { super::in_helper("test", || std::panic::resume_unwind(Box::new(()))) }
                .await
                .unwrap()
        };
        assert!(line.contains("ERR test: the runtime panicked"), "{line:?}");
        let pids = std::fs::read_to_string(&marks).unwrap();
        assert_eq!(
            pids.lines().collect::<Vec<_>>(),
            [std::process::id().to_string()],
            "dropped by this process alone"
        );
    }

    /// A keeper that takes a request and never answers fails its caller after the
    /// client's patience; a `wait` is let wait.
    #[tokio::test]
    async fn a_keeper_that_never_answers_fails_its_callers() {
        use super::{KeeperClient, Request};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("keeper.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = held_tx.send(s); // kept open, never answered
            }
        });
        let c = KeeperClient {
            sock: sock.clone(),
            patience: std::time::Duration::from_millis(200),
        };
        let e = c.call(&Request::List).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("did not answer"), "{e}");
        let req = Request::Wait { id: "x".into() };
        let wait = c.call(&req);
        tokio::pin!(wait);
        // the wait's connection is taken; the wait itself is still pending
        let _first = held.recv().await.unwrap();
        let _second = tokio::select! {
            s = held.recv() => s.unwrap(),
            r = &mut wait => panic!("a wait answered without its container exiting: {r:?}"),
        };
        let over = tokio::time::timeout(std::time::Duration::from_millis(600), &mut wait).await;
        assert!(over.is_err(), "a wait gave up: {over:?}");
    }

    #[test]
    fn an_initramfs_root_is_told_from_a_real_one() {
        let initramfs = "1 1 0:1 / / rw - rootfs rootfs rw,size=250000k\n\
                         20 1 0:20 / /proc rw,relatime - proc proc rw\n";
        assert!(ramdisk_in(initramfs));
        // a disk (or a tmpfs switched to) mounted over the initial rootfs: the last
        // mount at / is what / is
        let disk = "1 1 0:1 / / rw - rootfs rootfs rw\n\
                    25 1 8:1 / / rw,relatime - ext4 /dev/vda1 rw\n";
        assert!(!ramdisk_in(disk));
        let usual = "29 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n";
        assert!(!ramdisk_in(usual));
        assert!(!ramdisk_in(""));
    }
}
