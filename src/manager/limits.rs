//! What one service may ask of the managers. Every task is a copy of its service's task
//! spec, kept in memory and in the Raft log on every manager, so a service is bounded
//! three ways, checked before anything is committed (and again by the orchestrator, so
//! that a service committed by an older version is never acted on past them):
//!
//! | limit | value | why |
//! |---|---|---|
//! | a service's spec, encoded | 128 KiB | Linux passes at most 128 KiB in one environment string or argument, and a service's object holds its spec twice (current and previous) |
//! | replicas, job completions and concurrency | 10,000 | far above what one Swarm service runs, far below what fills a manager's memory |
//! | replicas × the task spec's size | 64 MiB | the task copies one service may make the managers hold |
//!
//! Transactions are bounded too (`store::MAX_TX_BYTES`, `store::MAX_OBJECT_BYTES`), and
//! loops commit at most `store::TX_BATCH_CHANGES` changes at a time.

use prost::Message;
use shoal_proto::service_spec::Mode;
use shoal_proto::ServiceSpec;

pub const MAX_SPEC_BYTES: usize = 128 << 10;
pub const MAX_REPLICAS: u64 = 10_000;
pub const MAX_SERVICE_TASK_BYTES: u64 = 64 << 20;

/// The first limit `spec` is over, in words that name the field and the limit.
pub fn check_service(spec: &ServiceSpec) -> Result<(), String> {
    let size = spec.encoded_len();
    if size > MAX_SPEC_BYTES {
        return Err(format!(
            "the service's spec is {} KiB, above the limit of {} KiB (environment, labels, command and mounts together)",
            size.div_ceil(1024),
            MAX_SPEC_BYTES >> 10
        ));
    }
    let (what, n) = match &spec.mode {
        Some(Mode::Replicated(r)) => ("--replicas", r.replicas),
        Some(Mode::ReplicatedJob(j)) => {
            if j.max_concurrent > MAX_REPLICAS {
                return Err(over("--max-concurrent", j.max_concurrent));
            }
            ("--replicas (a job's completions)", j.total_completions)
        }
        _ => return Ok(()),
    };
    if n > MAX_REPLICAS {
        return Err(over(what, n));
    }
    let task = spec.task.as_ref().map_or(0, |t| t.encoded_len()) as u64;
    if n.saturating_mul(task) > MAX_SERVICE_TASK_BYTES {
        return Err(format!(
            "{what}: {n} tasks of {} KiB each would make the managers keep {} MiB of task specs, above the limit of {} MiB per service: fewer replicas, or a smaller spec",
            task.div_ceil(1024),
            n.saturating_mul(task) >> 20,
            MAX_SERVICE_TASK_BYTES >> 20
        ));
    }
    Ok(())
}

fn over(what: &str, n: u64) -> String {
    format!("{what}: {n} is above the limit of {MAX_REPLICAS} tasks per service")
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ContainerSpec, ReplicatedService, TaskSpec};

    fn spec(replicas: u64, env_bytes: usize) -> ServiceSpec {
        ServiceSpec {
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox".into(),
                    env: vec![format!("BIG={}", "x".repeat(env_bytes))],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(Mode::Replicated(ReplicatedService { replicas })),
            ..Default::default()
        }
    }

    #[test]
    fn specs_replicas_and_their_product_are_bounded() {
        assert!(check_service(&spec(10_000, 10)).is_ok());
        let e = check_service(&spec(1_000_000_000_000, 10)).unwrap_err();
        assert!(
            e.contains("--replicas: 1000000000000 is above the limit of 10000"),
            "{e}"
        );
        let e = check_service(&spec(1, 200 << 10)).unwrap_err();
        assert!(e.contains("above the limit of 128 KiB"), "{e}");
        // each fine alone, too much together: 1000 copies of 100 KiB
        let e = check_service(&spec(1000, 100 << 10)).unwrap_err();
        assert!(e.contains("above the limit of 64 MiB per service"), "{e}");
        assert!(check_service(&spec(600, 100 << 10)).is_ok());
    }
}
