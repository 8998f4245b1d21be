//! `service create`, `update` and `scale` without `--detach`: the service followed until
//! it converges, as Docker's CLI does, with the reason when it cannot.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use shoal_proto::*;

use super::client::{self, refusal};
use crate::spec::docker::{self, service_name};

/// A service and its tasks, as they are now.
async fn service_and_tasks(
    ctl: &mut shoal_proto::control_client::ControlClient<tonic::transport::Channel>,
    id: &str,
) -> anyhow::Result<(Service, Vec<Task>)> {
    let s = ctl
        .get_service(GetRequest {
            id_or_name: id.into(),
        })
        .await
        .map_err(refusal)?
        .into_inner();
    let tasks = client::list_tasks(ctl, vec![format!("service={id}")]).await?;
    Ok((s, tasks))
}

/// Follows a service until it converges, as `docker service create` does without -d.
/// Fails with the reason when tasks keep failing or cannot be placed.
pub async fn converge(
    ctl: &mut shoal_proto::control_client::ControlClient<tonic::transport::Channel>,
    id: &str,
) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let mut last = String::new();
    let mut stuck_since: Option<Instant> = None;
    loop {
        let (s, tasks) = service_and_tasks(ctl, id).await?;
        let r = client::list_services(ctl).await?;
        let (run, want) = (
            r.running.get(id).copied().unwrap_or(0),
            r.desired.get(id).copied().unwrap_or(0),
        );
        let current: Vec<&Task> = tasks
            .iter()
            .filter(|t| t.spec_version == s.spec_version)
            .collect();
        let old_live = tasks.iter().any(|t| {
            t.spec_version != s.spec_version
                && t.status
                    .as_ref()
                    .is_some_and(|x| x.state < TaskState::Complete as i32)
        });
        let line = format!("overall progress: {run} out of {want} tasks");
        if line != last {
            println!("{line}");
            last = line;
        }
        if run == want
            && !old_live
            && current.iter().all(|t| {
                t.status.as_ref().is_some_and(|x| {
                    x.state == TaskState::Running as i32 || x.state == TaskState::Complete as i32
                }) || t.desired_state > TaskState::Running as i32
                    && t.desired_state != TaskState::Complete as i32
            })
        {
            println!("verify: Service {} converged", service_name(&s));
            return Ok(ExitCode::SUCCESS);
        }
        let failed: Vec<&&Task> = current
            .iter()
            .filter(|t| {
                t.status.as_ref().is_some_and(|x| {
                    x.state == TaskState::Rejected as i32 || x.state == TaskState::Failed as i32
                })
            })
            .collect();
        if failed.len() >= 3 || (failed.len() as u64 >= want.max(1) && !failed.is_empty()) {
            let e = failed[0]
                .status
                .as_ref()
                .map(|x| x.err.clone())
                .unwrap_or_default();
            eprintln!(
                "service {} cannot converge: task failed: {e}",
                service_name(&s)
            );
            return Ok(ExitCode::FAILURE);
        }
        let unplaced = current.iter().find(|t| {
            t.status
                .as_ref()
                .is_some_and(|x| x.state == TaskState::Pending as i32 && !x.err.is_empty())
        });
        match (unplaced, stuck_since) {
            (Some(_), None) => stuck_since = Some(Instant::now()),
            (Some(t), Some(since)) if since.elapsed() > Duration::from_secs(3) => {
                eprintln!(
                    "service {} cannot converge: {}",
                    service_name(&s),
                    t.status.as_ref().map(|x| x.err.clone()).unwrap_or_default()
                );
                return Ok(ExitCode::FAILURE);
            }
            (None, _) => stuck_since = None,
            _ => {}
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!(
                "service {} did not converge within 10 minutes",
                service_name(&s)
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether following `s` after a change means following an update: one is under way or
/// about to start (a task is out of date), rather than a change that replaces nothing.
fn updating(s: &Service, tasks: &[Task]) -> bool {
    let active = s
        .update_state()
        .is_some_and(|x| x.is_rolling() || x.is_paused());
    active
        || s.update_status.is_none()
            && tasks.iter().any(|t| {
                t.spec_version != s.spec_version
                    && t.desired_state <= TaskState::Running as i32
                    && t.status
                        .as_ref()
                        .is_some_and(|x| x.state < TaskState::Complete as i32)
            })
}

/// The task an update message names ("… of task ID"), with its error.
async fn failed_task(
    ctl: &mut shoal_proto::control_client::ControlClient<tonic::transport::Channel>,
    message: &str,
) -> String {
    let Some(id) = message.rsplit(' ').next().filter(|w| w.len() >= 12) else {
        return String::new();
    };
    match ctl
        .get_task(GetRequest {
            id_or_name: id.into(),
        })
        .await
    {
        Ok(t) => {
            let t = t.into_inner();
            let st = t.status.unwrap_or_default();
            let name = t.annotations.map(|a| a.name).unwrap_or_default();
            let why = if st.err.is_empty() {
                st.message
            } else {
                st.err
            };
            format!("\ntask {name}: {why}")
        }
        Err(_) => String::new(),
    }
}

/// Follows a service's update (or rollback) as `docker service update` does: overall
/// progress, one line per slot as it changes, the verify countdown, and the outcome.
/// Exits non-zero when the update paused or was rolled back (docker's CLI exits 0 after
/// an automatic rollback, docker/cli#6752); `manual`: a rollback was asked for, and
/// completing it is success.
pub async fn follow_update(
    ctl: &mut shoal_proto::control_client::ControlClient<tonic::transport::Channel>,
    id: &str,
    manual: bool,
) -> anyhow::Result<ExitCode> {
    use update_status::State;
    let mut last = String::new();
    let mut slots: std::collections::BTreeMap<String, String> = Default::default();
    let mut said_rollback = String::new();
    let mut verifying = false;
    loop {
        let (s, tasks) = service_and_tasks(ctl, id).await?;
        let name = service_name(&s).to_string();
        if s.update_status.is_none() && !updating(&s, &tasks) {
            return converge(ctl, id).await; // nothing to replace
        }
        let st = s.update_status.clone().unwrap_or_default();
        let state = State::try_from(st.state).unwrap_or(State::Unknown);
        if matches!(state, State::RollbackStarted) && said_rollback != st.message {
            println!("rollback: {}", st.message);
            said_rollback = st.message.clone();
        }
        let r = client::list_services(ctl).await?;
        let want = r.desired.get(id).copied().unwrap_or(0);
        let current: Vec<&Task> = tasks
            .iter()
            .filter(|t| t.spec_version == s.spec_version)
            .collect();
        let running = |t: &Task| {
            t.desired_state == TaskState::Running as i32
                && t.status
                    .as_ref()
                    .is_some_and(|x| x.state == TaskState::Running as i32)
        };
        let done = current.iter().filter(|t| running(t)).count() as u64;
        let rolling = if matches!(state, State::RollbackStarted | State::RollbackCompleted) {
            "rolling back update: "
        } else {
            ""
        };
        let line = format!("overall progress: {rolling}{done} out of {want} tasks");
        if line != last {
            println!("{line}");
            last = line;
        }
        if want <= 20 {
            // one line per slot (node, for a global service) as its newest task changes
            let mut newest: std::collections::BTreeMap<String, &Task> = Default::default();
            for t in &current {
                let k = if t.slot > 0 {
                    format!("{}/{want}", t.slot)
                } else {
                    docker::short_id(&t.node_id).to_string()
                };
                let ts = |x: &Task| x.status.as_ref().map_or(0, |y| y.timestamp_ms);
                if newest.get(&k).is_none_or(|o| ts(o) <= ts(t)) {
                    newest.insert(k, t);
                }
            }
            for (k, t) in newest {
                let st = t.status.clone().unwrap_or_default();
                let word = TaskState::try_from(st.state)
                    .map(|x| x.display().to_lowercase())
                    .unwrap_or_default();
                let mut say = format!("{k}: {word}");
                if !st.err.is_empty() {
                    let e: String = st.err.chars().take(75).collect();
                    say = format!("{say} ({e})");
                }
                if slots.get(&k) != Some(&say) {
                    println!("{say}");
                    slots.insert(k, say);
                }
            }
        }
        match state {
            State::Paused => {
                eprintln!(
                    "service update paused: {}{}",
                    st.message,
                    failed_task(ctl, &st.message).await
                );
                return Ok(ExitCode::FAILURE);
            }
            State::RollbackPaused => {
                eprintln!(
                    "service rollback paused: {}{}",
                    st.message,
                    failed_task(ctl, &st.message).await
                );
                return Ok(ExitCode::FAILURE);
            }
            State::Completed | State::RollbackCompleted => {
                println!("verify: Service {name} converged");
                if state == State::RollbackCompleted && !manual {
                    // (the reason, if the rollback began and ended between two looks)
                    let reason = match said_rollback.as_str() {
                        "" => s
                            .history
                            .iter()
                            .find(|r| r.revision == s.revision)
                            .map(|r| r.reason.clone())
                            .unwrap_or_default(),
                        m => m.to_string(),
                    };
                    let why = if reason.is_empty() {
                        "the update was rolled back".to_string()
                    } else {
                        format!("{reason}{}", failed_task(ctl, &reason).await)
                    };
                    eprintln!("service {name}: {why}");
                    return Ok(ExitCode::FAILURE);
                }
                return Ok(ExitCode::SUCCESS);
            }
            _ => {}
        }
        let old_live = tasks.iter().any(|t| {
            t.spec_version != s.spec_version
                && t.status
                    .as_ref()
                    .is_some_and(|x| x.state < TaskState::Complete as i32)
        });
        if done >= want && !old_live && !verifying {
            let cfg =
                crate::spec::update::update_config(if matches!(state, State::RollbackStarted) {
                    s.spec.as_ref().and_then(|x| x.rollback.as_ref())
                } else {
                    s.spec.as_ref().and_then(|x| x.update.as_ref())
                });
            println!(
                "verify: Waiting {} seconds to verify that tasks are stable...",
                cfg.monitor.as_secs()
            );
            verifying = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
