//! A service in Docker's flat vocabulary ([`ServiceInput`]), with Swarm's defaults: made
//! into the spec the managers keep ([`ServiceInput::into_spec`]), or laid over one that
//! exists ([`ServiceInput::apply_to`]), as `service update` does with what it was given.
//! A front end fills it from its own words with the parsers of `units` and `parse`.

use std::collections::HashMap;
use std::time::Duration;

use shoal_proto::endpoint_spec::ResolutionMode;
use shoal_proto::restart_policy::Condition;
use shoal_proto::service_spec::Mode;
use shoal_proto::*;

use super::field::{Field, SpecError, SpecErrors};
use super::placement::parse_preference;
use super::units::to_proto;

/// Swarm's default restart delay.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);

/// A service's mode, as Docker names it (`--mode`, `deploy.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeKind {
    Replicated,
    Global,
    ReplicatedJob,
    GlobalJob,
}

impl ModeKind {
    pub fn parse(s: &str) -> Result<ModeKind, String> {
        match s {
            "replicated" => Ok(ModeKind::Replicated),
            "global" => Ok(ModeKind::Global),
            "replicated-job" => Ok(ModeKind::ReplicatedJob),
            "global-job" => Ok(ModeKind::GlobalJob),
            _ => Err("use replicated, global, replicated-job or global-job".into()),
        }
    }
}

/// `any`, `on-failure` or `none`.
pub fn parse_restart_condition(s: &str) -> Result<Condition, String> {
    match s {
        "any" => Ok(Condition::Any),
        "none" => Ok(Condition::None),
        "on-failure" => Ok(Condition::OnFailure),
        _ => Err("use none, on-failure or any".into()),
    }
}

/// `vip` or `dnsrr`.
pub fn parse_endpoint_mode(s: &str) -> Result<ResolutionMode, String> {
    match s {
        "vip" => Ok(ResolutionMode::Vip),
        "dnsrr" => Ok(ResolutionMode::Dnsrr),
        _ => Err("use vip or dnsrr".into()),
    }
}

/// A health check's settings; `test` is Docker's (`["CMD-SHELL", "curl …"]`).
#[derive(Clone, Debug, Default)]
pub struct HealthInput {
    pub test: Option<Vec<String>>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<i32>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
}

impl HealthInput {
    fn given(&self) -> bool {
        self.test.is_some()
            || self.interval.is_some()
            || self.timeout.is_some()
            || self.retries.is_some()
            || self.start_period.is_some()
            || self.start_interval.is_some()
    }
}

/// A service as Docker's flags, compose keys and Engine API fields describe it, flat.
/// `None` (or empty) is "not given": `into_spec` takes Swarm's default for it, `apply_to`
/// keeps what the spec has.
#[derive(Clone, Debug, Default)]
pub struct ServiceInput {
    pub name: Option<String>,
    pub mode: Option<ModeKind>,
    pub replicas: Option<u64>,
    pub labels: Option<HashMap<String, String>>,
    pub image: Option<String>,
    /// Docker's `--entrypoint`: replaces the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Docker's command after the image: replaces the image's cmd.
    pub args: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub mounts: Option<Vec<Mount>>,
    /// `--secret` and `--config`: files from secrets and configs.
    pub secrets: Option<Vec<FileReference>>,
    pub configs: Option<Vec<FileReference>>,
    pub container_labels: Option<HashMap<String, String>>,
    pub read_only: Option<bool>,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub limit_pids: Option<i64>,
    pub stop_signal: Option<String>,
    pub stop_grace_period: Option<Duration>,
    pub health: HealthInput,
    /// Bytes.
    pub limit_memory: Option<i64>,
    /// Billionths of a CPU.
    pub limit_cpu: Option<i64>,
    pub reserve_memory: Option<i64>,
    pub reserve_cpu: Option<i64>,
    pub restart_condition: Option<Condition>,
    pub restart_delay: Option<Duration>,
    pub restart_max_attempts: Option<u64>,
    pub restart_window: Option<Duration>,
    pub constraints: Option<Vec<String>>,
    /// `spread=node.labels.X`, as Docker writes them.
    pub placement_prefs: Option<Vec<String>>,
    pub max_replicas_per_node: Option<u64>,
    pub networks: Option<Vec<NetworkAttachmentConfig>>,
    pub ports: Option<Vec<PortConfig>>,
    pub endpoint_mode: Option<ResolutionMode>,
    /// `service update --force`: replace the tasks even if nothing changed.
    pub force: bool,
    /// `--update-*` and `--rollback-*`.
    pub update: super::update::UpdateInput,
    pub rollback: super::update::UpdateInput,
}

impl ServiceInput {
    /// A new service's spec, with Swarm's defaults for what was not given: one replica
    /// of a replicated service, a job's tasks restarted on failure only.
    pub fn into_spec(self) -> Result<ServiceSpec, SpecErrors> {
        let name = Field::new("annotations.name");
        let Some(n) = self.name.clone() else {
            return Err(SpecError::new(name, "a service needs a name").into());
        };
        let one = self.replicas.unwrap_or(1);
        let mode = match self.mode.unwrap_or(ModeKind::Replicated) {
            ModeKind::Replicated => Mode::Replicated(ReplicatedService { replicas: one }),
            ModeKind::ReplicatedJob => Mode::ReplicatedJob(ReplicatedJob {
                max_concurrent: one,
                total_completions: one,
            }),
            ModeKind::Global => Mode::Global(GlobalService {}),
            ModeKind::GlobalJob => Mode::GlobalJob(GlobalJob {}),
        };
        let mut spec = ServiceSpec {
            annotations: Some(Annotations {
                name: n,
                ..Default::default()
            }),
            mode: Some(mode),
            ..Default::default()
        };
        self.apply_to(&mut spec)?;
        let job = matches!(spec.mode, Some(Mode::ReplicatedJob(_) | Mode::GlobalJob(_)));
        let task = spec.task.get_or_insert_with(TaskSpec::default);
        if job && self.restart_condition.is_none() {
            task.restart
                .get_or_insert_with(RestartPolicy::default)
                .condition = Condition::OnFailure as i32;
        }
        Ok(spec)
    }

    /// The task part alone (a standalone container's: no name, mode or endpoint).
    pub fn task_spec(&self) -> Result<TaskSpec, SpecErrors> {
        let mut spec = ServiceSpec::default();
        self.apply_to(&mut spec)?;
        Ok(spec.task.unwrap_or_default())
    }

    /// Lays what was given over `spec`, as `service update` does.
    pub fn apply_to(&self, spec: &mut ServiceSpec) -> Result<(), SpecErrors> {
        let mut errs = SpecErrors::default();
        if let Some(n) = self.replicas {
            match spec.mode.as_mut() {
                Some(Mode::Replicated(r)) => r.replicas = n,
                Some(Mode::ReplicatedJob(j)) => {
                    j.total_completions = n;
                    j.max_concurrent = n;
                }
                _ => errs.at(
                    Field::new("replicated.replicas"),
                    "can only be used with replicated or replicated-job mode",
                ),
            }
        }
        if let Some(l) = &self.labels {
            spec.annotations
                .get_or_insert_with(Annotations::default)
                .labels = l.clone();
        }
        if let Some(m) = self.endpoint_mode {
            spec.endpoint.get_or_insert_with(EndpointSpec::default).mode = m as i32;
        }
        if let Some(p) = &self.ports {
            spec.endpoint
                .get_or_insert_with(EndpointSpec::default)
                .ports = p.clone();
        }
        let task = spec.task.get_or_insert_with(TaskSpec::default);
        self.apply_container(
            task.container.get_or_insert_with(ContainerSpec::default),
            &mut errs,
        );
        self.apply_resources(task);
        self.apply_restart(task);
        if let Some(c) = &self.constraints {
            task.placement
                .get_or_insert_with(Placement::default)
                .constraints = c.clone();
        }
        if let Some(prefs) = &self.placement_prefs {
            let field = Field::new("task.placement.preferences");
            let mut out = Vec::new();
            for (i, p) in prefs.iter().enumerate() {
                match parse_preference(p) {
                    Ok(d) => out.push(PlacementPreference {
                        spread_descriptor: d,
                    }),
                    Err(e) => errs.at(field.at(i), e),
                }
            }
            task.placement
                .get_or_insert_with(Placement::default)
                .preferences = out;
        }
        if let Some(n) = self.max_replicas_per_node {
            task.placement
                .get_or_insert_with(Placement::default)
                .max_replicas = n;
        }
        if let Some(n) = &self.networks {
            task.networks = n.clone();
        }
        if self.force {
            task.force_update += 1;
        }
        self.update.apply(&mut spec.update);
        self.rollback.apply(&mut spec.rollback);
        errs.into_result()
    }

    fn apply_container(&self, c: &mut ContainerSpec, errs: &mut SpecErrors) {
        let set = |to: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                v.clone_into(to);
            }
        };
        set(&mut c.image, &self.image);
        set(&mut c.dir, &self.workdir);
        set(&mut c.user, &self.user);
        set(&mut c.hostname, &self.hostname);
        set(&mut c.stop_signal, &self.stop_signal);
        let list = |to: &mut Vec<String>, v: &Option<Vec<String>>| {
            if let Some(v) = v {
                v.clone_into(to);
            }
        };
        list(&mut c.command, &self.entrypoint);
        list(&mut c.args, &self.args);
        list(&mut c.env, &self.env);
        list(&mut c.cap_add, &self.cap_add);
        list(&mut c.cap_drop, &self.cap_drop);
        if let Some(m) = &self.mounts {
            c.mounts = m.clone();
        }
        if let Some(r) = &self.secrets {
            c.secrets = r.clone();
        }
        if let Some(r) = &self.configs {
            c.configs = r.clone();
        }
        if let Some(l) = &self.container_labels {
            c.labels = l.clone();
        }
        if let Some(r) = self.read_only {
            c.read_only = r;
        }
        if let Some(p) = self.limit_pids {
            c.pids_limit = p;
        }
        if let Some(d) = self.stop_grace_period {
            c.stop_grace_period = Some(to_proto(d));
        }
        let h = &self.health;
        if let Some(test) = &h.test {
            c.healthcheck = Some(HealthConfig {
                test: test.clone(),
                interval: h.interval.map(to_proto),
                timeout: h.timeout.map(to_proto),
                retries: h.retries.unwrap_or(0),
                start_period: h.start_period.map(to_proto),
                start_interval: h.start_interval.map(to_proto),
            });
        } else if h.given() {
            match c.healthcheck.as_mut() {
                Some(hc) => {
                    if let Some(d) = h.interval {
                        hc.interval = Some(to_proto(d));
                    }
                    if let Some(d) = h.timeout {
                        hc.timeout = Some(to_proto(d));
                    }
                    if let Some(r) = h.retries {
                        hc.retries = r;
                    }
                    if let Some(d) = h.start_period {
                        hc.start_period = Some(to_proto(d));
                    }
                    if let Some(d) = h.start_interval {
                        hc.start_interval = Some(to_proto(d));
                    }
                }
                None => errs.at(
                    Field::new("task.container.healthcheck.test"),
                    "a health check's interval, timeout, retries and start period need its command",
                ),
            }
        }
    }

    fn apply_resources(&self, task: &mut TaskSpec) {
        let given = [
            self.limit_memory,
            self.limit_cpu,
            self.reserve_memory,
            self.reserve_cpu,
        ];
        if given.iter().all(Option::is_none) && task.resources.is_none() {
            return;
        }
        let res = task
            .resources
            .get_or_insert_with(ResourceRequirements::default);
        for (to, memory, cpu) in [
            (&mut res.limits, self.limit_memory, self.limit_cpu),
            (&mut res.reservations, self.reserve_memory, self.reserve_cpu),
        ] {
            if let Some(m) = memory {
                to.get_or_insert_with(Resources::default).memory_bytes = m;
            }
            if let Some(c) = cpu {
                to.get_or_insert_with(Resources::default).nano_cpus = c;
            }
        }
    }

    fn apply_restart(&self, task: &mut TaskSpec) {
        let given = self.restart_condition.is_some()
            || self.restart_delay.is_some()
            || self.restart_max_attempts.is_some()
            || self.restart_window.is_some();
        if !given && task.restart.is_none() {
            return;
        }
        let restart = task.restart.get_or_insert_with(RestartPolicy::default);
        if let Some(c) = self.restart_condition {
            restart.condition = c as i32;
        }
        if let Some(d) = self.restart_delay {
            restart.delay = Some(to_proto(d));
        }
        if let Some(n) = self.restart_max_attempts {
            restart.max_attempts = n;
        }
        if let Some(d) = self.restart_window {
            restart.window = Some(to_proto(d));
        }
    }
}

/// `service scale`: a replicated service's replicas (Docker scales no other mode).
pub fn scale(spec: &mut ServiceSpec, n: u64) -> Result<(), SpecError> {
    match spec.mode.as_mut() {
        Some(Mode::Replicated(r)) => {
            r.replicas = n;
            Ok(())
        }
        m => Err(SpecError::new(
            Field::new("replicated.replicas"),
            format!(
                "scale can only be used with replicated mode: the service is {}",
                mode_name(m.map(|m| &*m))
            ),
        )),
    }
}

/// A service's mode as Docker says it (`replicated job`).
pub fn mode_name(m: Option<&Mode>) -> &'static str {
    match m {
        Some(Mode::Replicated(_)) => "replicated",
        Some(Mode::Global(_)) => "global",
        Some(Mode::ReplicatedJob(_)) => "replicated job",
        Some(Mode::GlobalJob(_)) => "global job",
        None => "",
    }
}

/// Whether `mode` is a job's.
pub fn is_job(mode: Option<&Mode>) -> bool {
    matches!(mode, Some(Mode::ReplicatedJob(_) | Mode::GlobalJob(_)))
}

/// A restart policy with Swarm's defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Restart {
    pub condition: Condition,
    pub delay: Duration,
    /// 0: no limit.
    pub max_attempts: u64,
    /// Zero: every restart counts.
    pub window: Duration,
}

/// `p` with Swarm's defaults: any condition, 5 s apart, no limit.
pub fn restart_policy(p: Option<&RestartPolicy>) -> Restart {
    let d = |x: Option<&prost_types::Duration>| x.map(super::units::from_proto);
    Restart {
        condition: p
            .and_then(|p| Condition::try_from(p.condition).ok())
            .unwrap_or(Condition::Any),
        delay: p
            .and_then(|p| d(p.delay.as_ref()))
            .unwrap_or(DEFAULT_RESTART_DELAY),
        max_attempts: p.map(|p| p.max_attempts).unwrap_or(0),
        window: p.and_then(|p| d(p.window.as_ref())).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> ServiceInput {
        ServiceInput {
            name: Some("web".into()),
            image: Some("busybox".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_service_gets_swarms_defaults() {
        let s = web().into_spec().unwrap();
        assert_eq!(
            s.mode,
            Some(Mode::Replicated(ReplicatedService { replicas: 1 }))
        );
        let task = s.task.unwrap();
        assert_eq!(task.container.unwrap().image, "busybox");
        assert_eq!(task.restart, None, "nothing given, nothing set");
        assert_eq!(task.resources, None);
        // a job restarts on failure only, unless told otherwise
        let job = ServiceInput {
            mode: Some(ModeKind::ReplicatedJob),
            replicas: Some(3),
            ..web()
        }
        .into_spec()
        .unwrap();
        assert_eq!(
            job.mode,
            Some(Mode::ReplicatedJob(ReplicatedJob {
                max_concurrent: 3,
                total_completions: 3
            }))
        );
        assert_eq!(
            job.task.unwrap().restart.unwrap().condition,
            Condition::OnFailure as i32
        );
        let e = ServiceInput::default().into_spec().unwrap_err();
        assert_eq!(e.0[0].field.path(), "annotations.name");
        let e = ServiceInput {
            mode: Some(ModeKind::Global),
            replicas: Some(2),
            ..web()
        }
        .into_spec()
        .unwrap_err();
        assert_eq!(e.0[0].field.path(), "replicated.replicas");
        assert_eq!(ModeKind::parse("global-job"), Ok(ModeKind::GlobalJob));
        assert!(ModeKind::parse("sideways").is_err());
    }

    #[test]
    fn given_fields_replace_the_specs_and_the_rest_stays() {
        let mut s = ServiceInput {
            env: Some(vec!["A=1".into()]),
            health: HealthInput {
                test: Some(vec!["CMD-SHELL".into(), "true".into()]),
                retries: Some(2),
                ..Default::default()
            },
            limit_memory: Some(64 << 20),
            restart_delay: Some(Duration::from_secs(1)),
            placement_prefs: Some(vec!["spread=node.labels.zone".into()]),
            ..web()
        }
        .into_spec()
        .unwrap();
        ServiceInput {
            user: Some("nobody".into()),
            health: HealthInput {
                interval: Some(Duration::from_secs(2)),
                ..Default::default()
            },
            reserve_cpu: Some(500_000_000),
            force: true,
            ..Default::default()
        }
        .apply_to(&mut s)
        .unwrap();
        let task = s.task.unwrap();
        let c = task.container.unwrap();
        assert_eq!(
            (c.env, c.user.as_str()),
            (vec!["A=1".to_string()], "nobody")
        );
        let h = c.healthcheck.unwrap();
        assert_eq!((h.retries, h.interval.unwrap().seconds), (2, 2));
        let r = task.resources.unwrap();
        assert_eq!(r.limits.unwrap().memory_bytes, 64 << 20);
        assert_eq!(r.reservations.unwrap().nano_cpus, 500_000_000);
        assert_eq!(task.restart.unwrap().delay.unwrap().seconds, 1);
        assert_eq!(
            task.placement.unwrap().preferences[0].spread_descriptor,
            "node.labels.zone"
        );
        assert_eq!(task.force_update, 1);
    }

    #[test]
    fn what_cannot_be_applied_names_its_field() {
        let e = ServiceInput {
            health: HealthInput {
                retries: Some(3),
                ..Default::default()
            },
            placement_prefs: Some(vec!["binpack".into()]),
            ..web()
        }
        .into_spec()
        .unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|e| e.field.path()).collect();
        assert_eq!(
            fields,
            [
                "task.container.healthcheck.test",
                "task.placement.preferences[0]"
            ]
        );
    }

    #[test]
    fn scale_and_restart_defaults() {
        let mut s = web().into_spec().unwrap();
        scale(&mut s, 4).unwrap();
        assert_eq!(
            s.mode,
            Some(Mode::Replicated(ReplicatedService { replicas: 4 }))
        );
        s.mode = Some(Mode::Global(GlobalService {}));
        let e = scale(&mut s, 4).unwrap_err();
        assert!(e.problem.contains("the service is global"), "{e}");
        let r = restart_policy(None);
        assert_eq!(
            (r.condition, r.delay, r.max_attempts),
            (Condition::Any, DEFAULT_RESTART_DELAY, 0)
        );
        assert_eq!(
            parse_restart_condition("on-failure"),
            Ok(Condition::OnFailure)
        );
        assert!(parse_restart_condition("sometimes").is_err());
        assert_eq!(parse_endpoint_mode("dnsrr"), Ok(ResolutionMode::Dnsrr));
    }
}
