//! Exec health checks, as Docker runs them: every `interval` the test runs inside the
//! container (through the keeper, in the container's namespaces and cgroup) with a
//! `timeout`; `retries` consecutive failures make it unhealthy, a success healthy;
//! failures within `start_period` do not count. The state is kept in `health.json` so a
//! restarted daemon resumes where it was.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::spec::HealthCheck;
use super::{ContainerRuntime, Status};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    #[default]
    Starting,
    Healthy,
    Unhealthy,
}

/// One run of the test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub exit_code: i32,
    pub output: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    pub failing_streak: u32,
    /// The last five probes, oldest first.
    pub log: Vec<Probe>,
}

impl Health {
    /// Applies one probe's result by Docker's rules.
    pub fn record(&mut self, probe: Probe, retries: u32, in_start_period: bool) {
        if probe.exit_code == 0 {
            self.status = HealthStatus::Healthy;
            self.failing_streak = 0;
        } else if !in_start_period {
            self.failing_streak += 1;
            if self.failing_streak >= retries.max(1) {
                self.status = HealthStatus::Unhealthy;
            }
        }
        self.log.push(probe);
        if self.log.len() > 5 {
            self.log.remove(0);
        }
    }
}

/// Runs the checks of one container until it stops or `stop` turns true.
pub(crate) async fn monitor(
    rt: &ContainerRuntime,
    id: &str,
    check: &HealthCheck,
    argv: Vec<String>,
    tx: watch::Sender<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let started = tokio::time::Instant::now();
    loop {
        let every = if started.elapsed() < check.start_period() {
            check.start_interval()
        } else {
            check.interval()
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        match rt.inspect(id).await {
            Ok(i) if i.status == Status::Running => {}
            _ => return,
        }
        let start = Utc::now();
        let (code, output) = match rt.exec(id, argv.clone(), check.timeout()).await {
            Ok((_, out, true)) => (
                -1,
                format!(
                    "health check exceeded timeout ({:?}){}",
                    check.timeout(),
                    if out.is_empty() {
                        String::new()
                    } else {
                        format!(": {out}")
                    }
                ),
            ),
            Ok((code, out, false)) => (code, out),
            Err(e) => (-1, e.to_string()),
        };
        let probe = Probe {
            start,
            end: Utc::now(),
            exit_code: code,
            output,
        };
        let in_start = started.elapsed() < check.start_period();
        let mut h = tx.borrow().clone();
        h.record(probe, check.retries(), in_start);
        let _ = crate::files::replace_file(
            &rt.dir(id).join("health.json"),
            &serde_json::to_vec(&h).unwrap_or_default(),
        );
        tx.send_replace(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn probe(code: i32) -> Probe {
        Probe {
            start: Utc::now(),
            end: Utc::now(),
            exit_code: code,
            output: String::new(),
        }
    }

    #[test]
    fn docker_rules() {
        let mut h = Health::default();
        h.record(probe(1), 2, true);
        assert_eq!(
            (h.status, h.failing_streak),
            (HealthStatus::Starting, 0),
            "start period failures do not count"
        );
        h.record(probe(1), 2, false);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 1));
        h.record(probe(1), 2, false);
        assert_eq!(h.status, HealthStatus::Unhealthy);
        h.record(probe(0), 2, false);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 0));
        for _ in 0..10 {
            h.record(probe(0), 2, false);
        }
        assert_eq!(h.log.len(), 5);
    }

    #[test]
    fn interval_defaults() {
        let c = HealthCheck {
            test: vec!["CMD".into(), "true".into()],
            interval: None,
            timeout: Some(Duration::from_secs(1)),
            retries: None,
            start_period: None,
            start_interval: None,
        };
        assert_eq!(
            (c.interval(), c.timeout(), c.retries()),
            (Duration::from_secs(30), Duration::from_secs(1), 3)
        );
    }
}
