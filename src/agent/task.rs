//! One task manager per task: steps the task's container towards the task's desired
//! state through the executor, and reports every state it reaches. It starts from what
//! the executor says the container is (so a restarted agent re-adopts running containers
//! instead of starting them again).

use std::sync::Arc;

use shoal_proto::{ContainerStatus as ApiContainer, Task, TaskState, TaskStatus};
use shoal_runtime::container::executor::Executor;
use shoal_runtime::container::health::HealthStatus;
use shoal_runtime::container::Status;
use tokio::sync::{mpsc, watch};

use crate::manager::store::now_ms;
use crate::manager::tasks::desired;
use crate::spec::container::container_spec;

/// What the reporter hears: a status to report for a task, or that a task is no longer
/// this node's (its last status need not be told again).
#[derive(Debug)]
pub enum Report {
    Status(String, TaskStatus),
    Gone(String),
}

fn st(state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        timestamp_ms: now_ms(),
        state: state as i32,
        message: message.into(),
        ..Default::default()
    }
}

fn exited(code: i32, oom: bool, known: bool, pid: i32) -> TaskStatus {
    let (state, err) = match (code, known) {
        (0, true) => (TaskState::Complete, String::new()),
        (_, false) => (
            TaskState::Failed,
            "task: exit status lost (the node's keeper restarted)".into(),
        ),
        (c, true) if oom => (
            TaskState::Failed,
            format!("task: non-zero exit ({c}): OOM killed"),
        ),
        (c, true) => (TaskState::Failed, format!("task: non-zero exit ({c})")),
    };
    TaskStatus {
        timestamp_ms: now_ms(),
        state: state as i32,
        message: if state == TaskState::Complete {
            "finished".into()
        } else {
            "failed".into()
        },
        err,
        container: Some(ApiContainer {
            container_id: String::new(),
            pid,
            exit_code: code,
        }),
        ..Default::default()
    }
}

/// How long a task on a network keeps running after it is told to stop, while the
/// nodes take it out of their load balancing.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Resolves when the container turns unhealthy (never, without a health check).
async fn unhealthy<E: Executor>(exec: &E, id: &str) {
    match exec.health(id) {
        Some(mut h) => {
            if h.wait_for(|x| x.status == HealthStatus::Unhealthy)
                .await
                .is_err()
            {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Runs until the task is removed (its watch closes) or reaches its end. `held` has
/// what the managers sent for it (registry credentials, secrets, configs); its files are
/// mounted under `files_dir` while its container is made.
pub async fn manage<E: Executor>(
    exec: Arc<E>,
    net: Option<Arc<super::net::NodeNet>>,
    mut task: watch::Receiver<Task>,
    reports: mpsc::UnboundedSender<Report>,
    held: Arc<super::files::Held>,
    files_dir: Option<std::path::PathBuf>,
) {
    let id = task.borrow().id.clone();
    if !task.borrow().attachment_container.is_empty() {
        return manage_attachment(net, task, reports).await;
    }
    let report = |s: TaskStatus| {
        let _ = reports.send(Report::Status(id.clone(), s));
    };
    // where the container is, as the executor knows it
    let mut reached = match exec.inspect(&id).await {
        Ok(c) => match c.status {
            Status::Prepared => TaskState::Ready,
            Status::Created => TaskState::Ready,
            Status::Running => TaskState::Running,
            Status::Exited => {
                if let Some(x) = c.exit {
                    let s = exited(x.code, x.oom, x.known, c.pid.unwrap_or(0));
                    let state = TaskState::try_from(s.state).unwrap_or(TaskState::Failed);
                    report(s);
                    state
                } else {
                    TaskState::Failed
                }
            }
        },
        Err(_) => TaskState::Assigned,
    };
    if reached == TaskState::Running {
        // a restarted daemon: a crash between its start and the release of its files
        // left the host's mount of them
        release_files(&files_dir, &id);
        // a restarted daemon: the task's resolver runs in this process
        let t = task.borrow().clone();
        if let (false, Some(net)) = (t.networks.is_empty(), &net) {
            if let Err(e) = net.ensure_dns(&t).await {
                tracing::warn!(task.id = %id, error = %e, "the re-adopted task has no resolver");
            }
        }
        report(st(TaskState::Running, "re-adopted"));
    }
    loop {
        let t = task.borrow_and_update().clone();
        let want = desired(&t);
        if matches!(want, TaskState::Shutdown | TaskState::Remove)
            || want as i32 > TaskState::Complete as i32
        {
            if !reached.is_terminal() {
                if reached == TaskState::Running
                    && want == TaskState::Shutdown
                    && !t.networks.is_empty()
                {
                    // the managers took it out of its service's VIP, DNS and routing mesh
                    // when they asked it to stop: it keeps serving while every node hears
                    // of that, so that no connection goes to a task already gone (an
                    // update, start-first, loses no request). Swarm waits 2 s here.
                    tokio::time::sleep(DRAIN).await;
                }
                if (reached as i32) >= TaskState::Starting as i32 {
                    let grace = None;
                    if let Err(e) = exec.shutdown(&id, grace).await {
                        tracing::warn!(task.id = %id, error = %e, "shutdown failed");
                    }
                }
                reached = TaskState::Shutdown;
                report(st(TaskState::Shutdown, "shutdown"));
            }
            if want == TaskState::Remove {
                let _ = exec.remove(&id).await;
            }
            release_files(&files_dir, &id);
            if task.changed().await.is_err() {
                return;
            }
            continue;
        }
        if reached.is_terminal() {
            if task.changed().await.is_err() {
                return;
            }
            continue;
        }
        if (reached as i32) < TaskState::Accepted as i32 {
            reached = TaskState::Accepted;
            report(st(reached, "accepted"));
            continue;
        }
        if (reached as i32) < TaskState::Ready as i32 {
            report(st(TaskState::Preparing, "preparing"));
            let mut spec = container_spec(&t);
            if !t.networks.is_empty() {
                let ns = match &net {
                    Some(net) => net.task_netns(&t).await,
                    None => Err("this node has no overlay networking (a simulated node)".into()),
                };
                match ns {
                    Ok(n) => {
                        spec.netns = Some(n.netns);
                        spec.mounts.push(shoal_runtime::container::spec::MountSpec {
                            kind: shoal_runtime::container::spec::MountKind::Bind,
                            source: n.resolv_conf.display().to_string(),
                            target: "/etc/resolv.conf".into(),
                            read_only: true,
                            tmpfs_size: None,
                        });
                    }
                    Err(e) => {
                        reached = TaskState::Rejected;
                        let mut s = st(reached, "preparing failed");
                        s.err = format!("network: {e}");
                        report(s);
                        continue;
                    }
                }
            }
            if super::files::references(&t).next().is_some() {
                // forgotten meanwhile (while its network was built): no files for it
                if task.has_changed().is_err() {
                    return;
                }
                let mounted = match &files_dir {
                    Some(dir) => super::files::materialize(dir, &t, &held),
                    None => {
                        Err("this node cannot hold secrets or configs (a simulated node)".into())
                    }
                };
                match mounted {
                    Ok(m) => spec.mounts.extend(m),
                    Err(e) => {
                        reached = TaskState::Rejected;
                        let mut s = st(reached, "preparing failed");
                        s.err = e;
                        report(s);
                        continue;
                    }
                }
            }
            let auth = crate::spec::image::auth_for(
                held.auths
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&t.service_id),
                &spec.image,
            );
            match exec.prepare(&id, &spec, auth.as_ref()).await {
                Ok(()) => {
                    reached = TaskState::Ready;
                    report(st(reached, "prepared"));
                }
                Err(e) => {
                    release_files(&files_dir, &id);
                    reached = TaskState::Rejected;
                    let mut s = st(reached, "preparing failed");
                    s.err = e.to_string();
                    report(s);
                }
            }
            continue;
        }
        if reached == TaskState::Ready {
            if !matches!(want, TaskState::Running | TaskState::Complete) {
                if task.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if task.has_changed().is_err() {
                // forgotten while it was prepared: the agent removes its container
                release_files(&files_dir, &id);
                return;
            }
            report(st(TaskState::Starting, "starting"));
            let started = exec.start(&id).await;
            // the container holds its own mounts of the files from now on
            release_files(&files_dir, &id);
            match started {
                Ok(pid) => {
                    // with a health check, a task is running once it is healthy (as in Swarm)
                    if let Some(mut h) = exec.health(&id) {
                        let healthy = tokio::select! {
                            r = h.wait_for(|x| x.status != HealthStatus::Starting) => r.map(|x| x.status == HealthStatus::Healthy).unwrap_or(false),
                            x = exec.wait(&id) => {
                                // it exited before it was ever healthy: report how
                                if let Ok(x) = x {
                                    let s = exited(x.code, x.oom, x.known, 0);
                                    reached = TaskState::try_from(s.state).unwrap_or(TaskState::Failed);
                                    report(s);
                                    continue;
                                }
                                false
                            }
                        };
                        if !healthy {
                            reached = TaskState::Failed;
                            let _ = exec.shutdown(&id, None).await;
                            let mut s = st(reached, "unhealthy");
                            s.err = "task: unhealthy container".into();
                            report(s);
                            continue;
                        }
                    }
                    reached = TaskState::Running;
                    let pid = pid.unwrap_or(0);
                    let mut s = st(reached, "started");
                    s.container = Some(ApiContainer {
                        container_id: id.clone(),
                        pid,
                        exit_code: 0,
                    });
                    report(s);
                }
                Err(e) => {
                    reached = TaskState::Failed;
                    let mut s = st(reached, "starting failed");
                    s.err = e.to_string();
                    report(s);
                }
            }
            continue;
        }
        // running: until it exits or the task changes
        tokio::select! {
            x = exec.wait(&id) => {
                match x {
                    Ok(x) => {
                        let pid = exec.inspect(&id).await.ok().and_then(|c| c.pid).unwrap_or(0);
                        let s = exited(x.code, x.oom, x.known, pid);
                        reached = TaskState::try_from(s.state).unwrap_or(TaskState::Failed);
                        report(s);
                    }
                    Err(e) => {
                        // ask again (the runtime restarts a keeper that went), unless
                        // the task changes first: never wait on the task alone, or a
                        // container that ended meanwhile stays RUNNING
                        tracing::warn!(task.id = %id, error = %e, "wait failed: asking again");
                        tokio::select! {
                            changed = task.changed() => if changed.is_err() { return },
                            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
            changed = task.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = unhealthy(exec.as_ref(), &id) => {
                reached = TaskState::Failed;
                let _ = exec.shutdown(&id, None).await;
                let mut s = st(reached, "unhealthy");
                s.err = "task: unhealthy container".into();
                report(s);
            }
        }
    }
}

fn release_files(dir: &Option<std::path::PathBuf>, task_id: &str) {
    if let Some(dir) = dir {
        super::files::release(dir, task_id);
    }
}

/// A standalone container's network attachment: no container of its own, only the
/// network namespace (and resolver) that the container joins; RUNNING once they are
/// there, SHUTDOWN when the managers say so. The namespace goes when the attachment is
/// removed (the agent's `forget`).
async fn manage_attachment(
    net: Option<Arc<super::net::NodeNet>>,
    mut task: watch::Receiver<Task>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let t = task.borrow().clone();
    let report = |s: TaskStatus| {
        let _ = reports.send(Report::Status(t.id.clone(), s));
    };
    let Some(net) = net else {
        let mut s = st(TaskState::Rejected, "preparing failed");
        s.err = "this node has no overlay networking (a simulated node)".into();
        report(s);
        return;
    };
    let built = match net.existing(&t.id) {
        // a restarted daemon: the namespace is there, its resolver is not
        Some(_) => net.ensure_dns(&t).await.map(|_| ()),
        None => {
            report(st(TaskState::Preparing, "preparing"));
            net.task_netns(&t).await.map(|_| ())
        }
    };
    if let Err(e) = built {
        let mut s = st(TaskState::Rejected, "preparing failed");
        s.err = format!("network: {e}");
        report(s);
        return;
    }
    report(st(TaskState::Running, "attached"));
    loop {
        if matches!(
            desired(&task.borrow_and_update()),
            TaskState::Shutdown | TaskState::Remove
        ) {
            report(st(TaskState::Shutdown, "detached"));
            return;
        }
        if task.changed().await.is_err() {
            return;
        }
    }
}
