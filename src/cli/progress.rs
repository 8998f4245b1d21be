//! `service create`, `update` and `scale` without `--detach`: the service followed until
//! it converges, as Docker's CLI does, with the reason when it cannot.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use shoal_proto::*;

use super::client::{self, refusal};
use crate::spec::docker::service_name;

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
        let s = ctl
            .get_service(GetRequest {
                id_or_name: id.into(),
            })
            .await
            .map_err(refusal)?
            .into_inner();
        let r = client::list_services(ctl).await?;
        let tasks = client::list_tasks(ctl, vec![format!("service={id}")]).await?;
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
