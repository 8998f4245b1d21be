//! Rolling updates and rollbacks, as a spec says them: Swarm's `UpdateConfig` with its
//! defaults filled in, what `--update-*` / `--rollback-*` give, and which fields of a
//! service two specs differ in (what `service history` shows).

use std::time::Duration;

use shoal_proto::update_config::{FailureAction, Order};
use shoal_proto::{ServiceSpec, UpdateConfig};

use super::units::{from_proto, to_proto};

/// Swarm's defaults (swarmkit's `api/defaults`): one task at a time, no delay, a 5 s
/// monitor, no failure tolerated, pause on failure, stop-first.
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

/// A task the update made that has not reached RUNNING (healthy, with a health check)
/// this long after it was made counts as a failure: Swarm waits for it forever
/// (moby#36934), which hangs the update. Five minutes, as Nomad's `healthy_deadline`:
/// long enough for a large image's pull and a slow start period.
pub const TASK_DEADLINE: Duration = Duration::from_secs(300);

/// An update (or rollback) config with Swarm's defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Update {
    /// 0: every out-of-date task at once.
    pub parallelism: u64,
    pub delay: Duration,
    pub monitor: Duration,
    pub max_failure_ratio: f32,
    pub failure_action: FailureAction,
    pub order: Order,
}

/// `c` with Swarm's defaults for what it leaves unset (and all of them without one).
pub fn update_config(c: Option<&UpdateConfig>) -> Update {
    match c {
        None => Update {
            parallelism: 1,
            delay: Duration::ZERO,
            monitor: DEFAULT_MONITOR,
            max_failure_ratio: 0.0,
            failure_action: FailureAction::Pause,
            order: Order::StopFirst,
        },
        Some(c) => Update {
            parallelism: c.parallelism,
            delay: c.delay.as_ref().map(from_proto).unwrap_or_default(),
            monitor: c.monitor.as_ref().map_or(DEFAULT_MONITOR, from_proto),
            max_failure_ratio: c.max_failure_ratio,
            failure_action: FailureAction::try_from(c.failure_action)
                .unwrap_or(FailureAction::Pause),
            order: Order::try_from(c.order).unwrap_or(Order::StopFirst),
        },
    }
}

/// The config a new one starts from when only some of its flags are given: Swarm's
/// defaults, written out (parallelism 0 in a stored config means "all at once").
fn default_config() -> UpdateConfig {
    UpdateConfig {
        parallelism: 1,
        monitor: Some(to_proto(DEFAULT_MONITOR)),
        ..Default::default()
    }
}

pub fn parse_order(s: &str) -> Result<Order, String> {
    match s {
        "stop-first" => Ok(Order::StopFirst),
        "start-first" => Ok(Order::StartFirst),
        _ => Err("the order is stop-first or start-first".into()),
    }
}

pub fn parse_failure_action(s: &str) -> Result<FailureAction, String> {
    match s {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        "rollback" => Ok(FailureAction::Rollback),
        _ => Err("the failure action is pause, continue or rollback".into()),
    }
}

pub fn order_name(o: i32) -> &'static str {
    if o == Order::StartFirst as i32 {
        "start-first"
    } else {
        "stop-first"
    }
}

pub fn failure_action_name(a: i32) -> &'static str {
    match FailureAction::try_from(a) {
        Ok(FailureAction::Continue) => "continue",
        Ok(FailureAction::Rollback) => "rollback",
        _ => "pause",
    }
}

/// What `--update-*` (or `--rollback-*`) gave; None: not given.
#[derive(Clone, Debug, Default)]
pub struct UpdateInput {
    pub parallelism: Option<u64>,
    pub delay: Option<Duration>,
    pub monitor: Option<Duration>,
    pub max_failure_ratio: Option<f32>,
    pub failure_action: Option<FailureAction>,
    pub order: Option<Order>,
}

impl UpdateInput {
    fn given(&self) -> bool {
        self.parallelism.is_some()
            || self.delay.is_some()
            || self.monitor.is_some()
            || self.max_failure_ratio.is_some()
            || self.failure_action.is_some()
            || self.order.is_some()
    }

    /// Lays what was given over `cfg` (a new config starts from Swarm's defaults).
    pub fn apply(&self, cfg: &mut Option<UpdateConfig>) {
        if !self.given() {
            return;
        }
        let c = cfg.get_or_insert_with(default_config);
        if let Some(n) = self.parallelism {
            c.parallelism = n;
        }
        if let Some(d) = self.delay {
            c.delay = Some(to_proto(d));
        }
        if let Some(d) = self.monitor {
            c.monitor = Some(to_proto(d));
        }
        if let Some(r) = self.max_failure_ratio {
            c.max_failure_ratio = r;
        }
        if let Some(a) = self.failure_action {
            c.failure_action = a as i32;
        }
        if let Some(o) = self.order {
            c.order = o as i32;
        }
    }
}

/// The fields of a service spec that differ between `old` and `new`, as field paths
/// (`task.container.image`, `mode.replicas`), in a fixed order: what a revision changed.
pub fn changed_fields(old: &ServiceSpec, new: &ServiceSpec) -> Vec<&'static str> {
    let mut out = Vec::new();
    let (ot, nt) = (
        old.task.clone().unwrap_or_default(),
        new.task.clone().unwrap_or_default(),
    );
    let (oc, nc) = (
        ot.container.clone().unwrap_or_default(),
        nt.container.clone().unwrap_or_default(),
    );
    let mut diff = |changed: bool, path: &'static str| {
        if changed {
            out.push(path);
        }
    };
    diff(oc.image != nc.image, "task.container.image");
    diff(oc.command != nc.command, "task.container.command");
    diff(oc.args != nc.args, "task.container.args");
    diff(oc.env != nc.env, "task.container.env");
    diff(oc.labels != nc.labels, "task.container.labels");
    diff(oc.mounts != nc.mounts, "task.container.mounts");
    diff(
        oc.healthcheck != nc.healthcheck,
        "task.container.healthcheck",
    );
    diff(oc.user != nc.user, "task.container.user");
    diff(oc.dir != nc.dir, "task.container.dir");
    diff(oc.hostname != nc.hostname, "task.container.hostname");
    let rest_of_container = ContainerRest::of(&oc) != ContainerRest::of(&nc);
    diff(rest_of_container, "task.container");
    diff(ot.resources != nt.resources, "task.resources");
    diff(ot.restart != nt.restart, "task.restart");
    diff(ot.placement != nt.placement, "task.placement");
    diff(ot.networks != nt.networks, "task.networks");
    diff(ot.force_update != nt.force_update, "task.force_update");
    use shoal_proto::service_spec::Mode;
    match (&old.mode, &new.mode) {
        (Some(Mode::Replicated(a)), Some(Mode::Replicated(b))) => {
            diff(a != b, "replicated.replicas")
        }
        (a, b) => diff(a != b, "mode"),
    }
    diff(old.endpoint != new.endpoint, "endpoint");
    diff(old.annotations != new.annotations, "annotations.labels");
    diff(old.update != new.update, "update");
    diff(old.rollback != new.rollback, "rollback");
    out
}

/// The container fields `changed_fields` does not name one by one.
#[derive(PartialEq)]
struct ContainerRest {
    stop_grace_period: Option<prost_types::Duration>,
    stop_signal: String,
    read_only: bool,
    cap_add: Vec<String>,
    cap_drop: Vec<String>,
    pids_limit: i64,
}

impl ContainerRest {
    fn of(c: &shoal_proto::ContainerSpec) -> ContainerRest {
        ContainerRest {
            stop_grace_period: c.stop_grace_period,
            stop_signal: c.stop_signal.clone(),
            read_only: c.read_only,
            cap_add: c.cap_add.clone(),
            cap_drop: c.cap_drop.clone(),
            pids_limit: c.pids_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarms_defaults_fill_what_is_unset() {
        let d = update_config(None);
        assert_eq!(d.parallelism, 1);
        assert_eq!(d.monitor, DEFAULT_MONITOR);
        assert_eq!(d.failure_action, FailureAction::Pause);
        assert_eq!(d.order, Order::StopFirst);
        // a stored config's parallelism 0 is "all at once"; its unset monitor is 5 s
        let c = update_config(Some(&UpdateConfig::default()));
        assert_eq!(c.parallelism, 0);
        assert_eq!(c.monitor, DEFAULT_MONITOR);
        // flags given alone start from the defaults
        let mut cfg = None;
        UpdateInput {
            delay: Some(Duration::from_secs(2)),
            ..Default::default()
        }
        .apply(&mut cfg);
        let u = update_config(cfg.as_ref());
        assert_eq!((u.parallelism, u.delay), (1, Duration::from_secs(2)));
        UpdateInput::default().apply(&mut cfg);
        assert_eq!(
            update_config(cfg.as_ref()),
            u,
            "nothing given, nothing changed"
        );
        assert!(parse_order("first").is_err());
        assert!(parse_failure_action("rollback").is_ok());
        assert!(parse_failure_action("stop").is_err());
    }

    #[test]
    fn changed_fields_name_what_differs() {
        let mut a = ServiceSpec::default();
        a.task.get_or_insert_with(Default::default).container = Some(Default::default());
        let mut b = a.clone();
        assert!(changed_fields(&a, &b).is_empty());
        let c = b.task.as_mut().unwrap().container.as_mut().unwrap();
        c.image = "busybox:2".into();
        c.read_only = true;
        b.mode = Some(shoal_proto::service_spec::Mode::Replicated(
            shoal_proto::ReplicatedService { replicas: 3 },
        ));
        assert_eq!(
            changed_fields(&a, &b),
            ["task.container.image", "task.container", "mode"]
        );
        let mut c = b.clone();
        c.mode = Some(shoal_proto::service_spec::Mode::Replicated(
            shoal_proto::ReplicatedService { replicas: 5 },
        ));
        assert_eq!(changed_fields(&b, &c), ["replicated.replicas"]);
    }
}
