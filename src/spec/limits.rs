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
//! | restart max attempts with a restart window | 100 | each task carries the times of its slot's restarts within the window |
//!
//! A node's description (what it says of itself at join and in every session) is bounded
//! too: a hostname of up to 253 characters of `[A-Za-z0-9._-]`, a platform and engine
//! version of up to 64 printable characters, up to 64 engine labels, and an address that
//! is `IP[:port]` or `HOST[:port]`.
//!
//! Transactions are bounded too (`store::MAX_TX_BYTES`, `store::MAX_OBJECT_BYTES`), and
//! loops commit at most `store::TX_BATCH_CHANGES` changes (or `store::TX_BATCH_BYTES`)
//! at a time.

use prost::Message;
use shoal_proto::service_spec::Mode;
use shoal_proto::{NodeDescription, ServiceSpec};

use super::field::{Field, SpecError};
use super::service::restart_policy;

pub const MAX_SPEC_BYTES: usize = 128 << 10;
pub const MAX_REPLICAS: u64 = 10_000;
pub const MAX_SERVICE_TASK_BYTES: u64 = 64 << 20;
/// A restart policy's max attempts with a window: each task carries the times of its
/// slot's restarts within the window.
pub const MAX_WINDOW_RESTARTS: u64 = 100;
/// Specs a service keeps (`swarm update --service-history-limit`): each may be up to
/// [`MAX_SPEC_BYTES`], and the service, history and all, goes through Raft in one entry
/// (and in one gRPC message, 4 MiB at most).
pub const MAX_SERVICE_HISTORY: i64 = 20;

/// The first limit `spec` is over, naming the field and the limit (the whole spec's
/// size names no field).
pub fn check_service(spec: &ServiceSpec) -> Result<(), SpecError> {
    let size = spec.encoded_len();
    if size > MAX_SPEC_BYTES {
        return Err(SpecError::new(
            Field::default(),
            format!(
                "the service's spec is {} KiB, above the limit of {} KiB (environment, labels, command and mounts together)",
                size.div_ceil(1024),
                MAX_SPEC_BYTES >> 10
            ),
        ));
    }
    let restart = restart_policy(spec.task.as_ref().and_then(|t| t.restart.as_ref()));
    if !restart.window.is_zero() && restart.max_attempts > MAX_WINDOW_RESTARTS {
        return Err(SpecError::new(
            Field::new("task.restart.max_attempts"),
            format!(
                "{} with a restart window is above the limit of {MAX_WINDOW_RESTARTS} (each task keeps the time of every restart within its window); without a window there is no limit",
                restart.max_attempts
            ),
        ));
    }
    let (what, n) = match &spec.mode {
        Some(Mode::Replicated(r)) => ("replicated.replicas", r.replicas),
        Some(Mode::ReplicatedJob(j)) => {
            if j.max_concurrent > MAX_REPLICAS {
                return Err(over("replicated_job.max_concurrent", j.max_concurrent));
            }
            ("replicated_job.total_completions", j.total_completions)
        }
        _ => return Ok(()),
    };
    if n > MAX_REPLICAS {
        return Err(over(what, n));
    }
    let task = spec.task.as_ref().map_or(0, |t| t.encoded_len()) as u64;
    if n.saturating_mul(task) > MAX_SERVICE_TASK_BYTES {
        return Err(SpecError::new(
            Field::new(what),
            format!(
                "{n} tasks of {} KiB each would make the managers keep {} MiB of task specs, above the limit of {} MiB per service: fewer replicas, or a smaller spec",
                task.div_ceil(1024),
                n.saturating_mul(task) >> 20,
                MAX_SERVICE_TASK_BYTES >> 20
            ),
        ));
    }
    Ok(())
}

fn over(what: &str, n: u64) -> SpecError {
    SpecError::new(
        Field::new(what),
        format!("{n} is above the limit of {MAX_REPLICAS} tasks per service"),
    )
}

pub const MAX_HOSTNAME: usize = 253;
/// A label's key: Docker's are reverse-DNS names (`com.example.team`), far shorter.
pub const MAX_LABEL_KEY: usize = 256;
/// How many labels one object may have.
pub const MAX_LABELS: usize = 1000;

/// An object's labels: at most [`MAX_LABELS`], keys of 1 to [`MAX_LABEL_KEY`]
/// characters with no control characters (their values count in the object's size).
pub fn check_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    let mut n = 0;
    for (k, _) in labels {
        n += 1;
        if k.trim().is_empty() {
            return Err("a label needs a name".into());
        }
        if k.chars().count() > MAX_LABEL_KEY || k.chars().any(|c| c.is_control()) {
            return Err(format!(
                "label {:?} ({} characters): a label's name is up to {MAX_LABEL_KEY} printable characters",
                short(k),
                k.chars().count()
            ));
        }
    }
    if n > MAX_LABELS {
        return Err(format!("{n} labels: at most {MAX_LABELS}"));
    }
    Ok(())
}
const MAX_WORD: usize = 64;

/// A node's hostname: what `node ls` prints and `node.hostname` constraints match.
pub fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > MAX_HOSTNAME {
        return Err(format!(
            "hostname: {} characters (a hostname has 1 to {MAX_HOSTNAME})",
            h.chars().count()
        ));
    }
    if let Some(c) = h
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "hostname {:?}: {c:?} is not allowed in a hostname (letters, digits, '.', '-' and '_')",
            short(h)
        ));
    }
    Ok(())
}

/// The address a node says it is reached at: an IP or a host name, with a port (not 0)
/// or without.
pub fn check_node_addr(a: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "addr {:?}: a node's address is IP[:port] or HOST[:port] (such as 192.0.2.7:2377)",
            short(a)
        )
    };
    if a.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if let Ok(s) = a.parse::<std::net::SocketAddr>() {
        return if s.port() != 0 { Ok(()) } else { Err(bad()) };
    }
    let (host, port) = a.rsplit_once(':').unwrap_or((a, "1"));
    let host_ok = !host.is_empty()
        && host.len() <= MAX_HOSTNAME
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    match port.parse::<u16>() {
        Ok(p) if p != 0 && host_ok => Ok(()),
        _ => Err(bad()),
    }
}

/// What a node says of itself, checked before it is kept (at join and at every session).
pub fn check_node_description(d: &NodeDescription) -> Result<(), String> {
    check_hostname(&d.hostname)?;
    let word = |what: &str, v: &str| {
        if v.len() > MAX_WORD || v.chars().any(|c| c.is_control()) {
            Err(format!(
                "{what} {:?}: up to {MAX_WORD} printable characters",
                short(v)
            ))
        } else {
            Ok(())
        }
    };
    if let Some(p) = &d.platform {
        word("platform.architecture", &p.architecture)?;
        word("platform.os", &p.os)?;
    }
    if let Some(r) = &d.resources {
        if r.nano_cpus < 0 || r.memory_bytes < 0 {
            return Err("resources: a node's CPUs and memory cannot be negative".into());
        }
    }
    if let Some(e) = &d.engine {
        word("engine.version", &e.engine_version)?;
        if e.labels.len() > MAX_WORD {
            return Err(format!(
                "engine.labels: {} labels (up to {MAX_WORD})",
                e.labels.len()
            ));
        }
        for (k, v) in &e.labels {
            if k.is_empty() {
                return Err("engine.labels: a label needs a name".into());
            }
            word("engine label", k)?;
            word("engine label value", v)?;
        }
    }
    Ok(())
}

/// A value as an error message shows it: its first 64 characters.
fn short(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
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
        assert_eq!(e.field.path(), "replicated.replicas");
        assert!(
            e.problem
                .contains("1000000000000 is above the limit of 10000"),
            "{e}"
        );
        let e = check_service(&spec(1, 200 << 10)).unwrap_err();
        assert_eq!(e.field.path(), "", "the whole spec");
        assert!(e.problem.contains("above the limit of 128 KiB"), "{e}");
        // each fine alone, too much together: 1000 copies of 100 KiB
        let e = check_service(&spec(1000, 100 << 10)).unwrap_err();
        assert_eq!(e.field.path(), "replicated.replicas");
        assert!(
            e.problem.contains("above the limit of 64 MiB per service"),
            "{e}"
        );
        assert!(check_service(&spec(600, 100 << 10)).is_ok());
        // restart attempts: bounded only with a window (each task keeps their times)
        let mut s = spec(1, 10);
        let task = s.task.as_mut().unwrap();
        task.restart = Some(shoal_proto::RestartPolicy {
            max_attempts: 1_000_000,
            ..Default::default()
        });
        assert!(check_service(&s).is_ok());
        let r = s.task.as_mut().unwrap().restart.as_mut().unwrap();
        r.window = Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        });
        let e = check_service(&s).unwrap_err();
        assert_eq!(e.field.path(), "task.restart.max_attempts");
        assert!(
            e.problem
                .contains("1000000 with a restart window is above the limit of 100"),
            "{e}"
        );
        s.task
            .as_mut()
            .unwrap()
            .restart
            .as_mut()
            .unwrap()
            .max_attempts = 100;
        assert!(check_service(&s).is_ok());
    }

    #[test]
    fn node_descriptions_are_bounded_and_named() {
        let mut d = NodeDescription {
            hostname: "edge-01.example".into(),
            ..Default::default()
        };
        assert!(check_node_description(&d).is_ok());
        d.hostname = "h".repeat(100_000);
        let e = check_node_description(&d).unwrap_err();
        assert!(e.contains("100000 characters"), "{e}");
        assert!(
            e.len() < 200,
            "the message does not repeat the hostname: {e}"
        );
        d.hostname = "bad\nname".into();
        let e = check_node_description(&d).unwrap_err();
        assert!(e.contains("'\\n' is not allowed"), "{e}");
        d.hostname = String::new();
        assert!(check_node_description(&d).is_err());
        assert!(check_node_addr("192.0.2.7:2377").is_ok());
        assert!(check_node_addr("[2001:db8::1]:2377").is_ok());
        assert!(check_node_addr("192.0.2.7").is_ok());
        assert!(check_node_addr("manager-1.example:2377").is_ok());
        for bad in ["not an addr:99999", "host:99999", "192.0.2.7:0", "", "a b"] {
            let e = check_node_addr(bad).unwrap_err();
            assert!(e.contains("IP[:port] or HOST[:port]"), "{bad}: {e}");
        }
    }
}
