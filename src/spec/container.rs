//! From a task spec to the runtime's container spec: the one conversion, which the agent
//! runs tasks with, `container run` runs standalone containers with, and the validation
//! checks (so that the managers refuse what a node would).

use shoal_proto::{mount, Task, TaskSpec};
use shoal_runtime::container::spec::{ContainerSpec, HealthCheck, LogConfig, MountKind, MountSpec};

fn dur(d: &Option<prost_types::Duration>) -> Option<std::time::Duration> {
    d.as_ref().map(super::units::from_proto)
}

/// The container a task runs. Its labels say which task, service and node it is for,
/// as Swarm's do (`com.docker.swarm.task.id` …).
pub fn container_spec(t: &Task) -> ContainerSpec {
    let mut c = of_task_spec(&t.spec.clone().unwrap_or_default());
    c.labels
        .insert("com.docker.swarm.task.id".into(), t.id.clone());
    c.labels
        .insert("com.docker.swarm.service.id".into(), t.service_id.clone());
    c.labels
        .insert("com.docker.swarm.node.id".into(), t.node_id.clone());
    c
}

/// The container a task spec describes, with no task's labels (a standalone
/// container's, or one the validation checks).
pub fn of_task_spec(ts: &TaskSpec) -> ContainerSpec {
    let c = ts.container.clone().unwrap_or_default();
    let limits = ts.resources.as_ref().and_then(|r| r.limits.as_ref());
    let labels: std::collections::BTreeMap<String, String> = c.labels.clone().into_iter().collect();
    ContainerSpec {
        image: c.image.clone(),
        entrypoint: (!c.command.is_empty()).then(|| c.command.clone()),
        command: (!c.args.is_empty()).then(|| c.args.clone()),
        env: c.env.clone(),
        user: (!c.user.is_empty()).then(|| c.user.clone()),
        workdir: (!c.dir.is_empty()).then(|| c.dir.clone()),
        hostname: (!c.hostname.is_empty()).then(|| c.hostname.clone()),
        labels,
        mounts: c
            .mounts
            .iter()
            .map(|m| MountSpec {
                kind: match mount::Type::try_from(m.r#type).unwrap_or(mount::Type::Volume) {
                    mount::Type::Bind => MountKind::Bind,
                    mount::Type::Volume => MountKind::Volume,
                    mount::Type::Tmpfs => MountKind::Tmpfs,
                },
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
                tmpfs_size: (m.tmpfs_size_bytes > 0).then_some(m.tmpfs_size_bytes as u64),
            })
            .collect(),
        read_only: c.read_only,
        memory_limit: limits.map(|l| l.memory_bytes).filter(|m| *m > 0),
        cpu_limit: limits
            .map(|l| l.nano_cpus)
            .filter(|c| *c > 0)
            .map(|c| c as f64 / 1e9),
        pids_limit: (c.pids_limit > 0).then_some(c.pids_limit),
        stop_signal: (!c.stop_signal.is_empty()).then(|| c.stop_signal.clone()),
        stop_grace_period: dur(&c.stop_grace_period),
        cap_add: c.cap_add.clone(),
        cap_drop: c.cap_drop.clone(),
        healthcheck: c
            .healthcheck
            .as_ref()
            .filter(|h| !h.test.is_empty())
            .map(|h| HealthCheck {
                test: h.test.clone(),
                interval: dur(&h.interval),
                timeout: dur(&h.timeout),
                retries: (h.retries > 0).then_some(h.retries as u32),
                start_period: dur(&h.start_period),
                start_interval: dur(&h.start_interval),
            }),
        log: LogConfig::default(),
        netns: None,
    }
}
