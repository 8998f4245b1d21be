//! The CLI's words for the fields of a spec: a problem the validation (here or in the
//! managers) finds at `task.container.env[2]` is said as `--env`. The flag names live
//! here and nowhere below the CLI.

use crate::spec::{Edit, SpecError, SpecErrors};

/// Which command's flags name the fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Words {
    /// `service create` and `service update`.
    Service,
    /// `container run` and `container create`.
    Container,
    /// `network create`.
    Network,
    /// `node update`.
    Node,
    /// `swarm init` and `swarm update`.
    Swarm,
    /// `secret create` and `config create`.
    File,
}

impl Words {
    /// The flag (or argument) that sets the field at `base`, or None when this command
    /// has none for it.
    fn flag(self, base: &str) -> Option<&'static str> {
        use Words::*;
        let own = match (self, base) {
            (Container, "task.container.labels") => "--label",
            (Container, "task.resources.limits.memory_bytes") => "--memory",
            (Container, "task.resources.limits.nano_cpus") => "--cpus",
            (Container, "task.container.pids_limit") => "--pids-limit",
            (Container, "task.container.stop_grace_period") => "--stop-timeout",
            (Container, "networks" | "networks.aliases") => "--network",
            // what no flag sets (a spec from another front end): the problem alone
            (Service | Container, "task" | "task.container") => "",
            (Service | Container, _) => return service_flag(base),
            (Network, "annotations.name") => "NAME",
            (Network, "annotations.labels") => "--label",
            (Network, "driver") => "--driver",
            (Network, "ipam" | "ipam.subnet") => "--subnet",
            (Network, "ipam.range") => "--ip-range",
            (Network, "ipam.gateway") => "--gateway",
            (Network, "ingress") => "--ingress",
            (Node, "annotations.labels") => "--label-add",
            (Node, "availability") => "--availability",
            (Node, "desired_role") => "--role",
            (Swarm, "dispatcher.heartbeat_period") => "--dispatcher-heartbeat",
            (Swarm, "ca_config.node_cert_expiry") => "--cert-expiry",
            (Swarm, "orchestration.task_history_retention_limit") => "--task-history-limit",
            (Swarm, "orchestration.service_history_limit") => "--service-history-limit",
            (Swarm, "default_addr_pool") => "--default-addr-pool",
            (Swarm, "default_addr_pool_mask_length") => "--default-addr-pool-mask-length",
            (Swarm, "annotations" | "annotations.name") => "",
            (File, "annotations.name") => "NAME",
            (File, "annotations.labels") => "--label",
            (File, "data") => "FILE",
            _ => return None,
        };
        Some(own)
    }

    /// How this command names `e`'s field: its flag (with `-rm` for an edit),
    /// nothing for the whole spec, or the field's path when no flag sets it.
    pub fn name(self, e: &SpecError) -> String {
        let base = e.field.base();
        if base.is_empty() {
            return String::new();
        }
        match (self.flag(&base), e.edit) {
            (Some(""), _) => String::new(),
            (Some(f), None) => f.to_string(),
            (Some(f), Some(Edit::Rm)) => format!("{f}-rm"),
            (None, _) => e.field.path().to_string(),
        }
    }

    /// Every problem, each naming its flag.
    pub fn say(self, errs: &SpecErrors) -> anyhow::Error {
        anyhow::anyhow!("{}", errs.render(|e| self.name(e)))
    }
}

/// How `service history` names a field that changed: the flag that changes it.
pub fn field_flag(w: Words, path: &str) -> String {
    let own = match path {
        "task.container.image" => "--image",
        "task.container.args" => "--args",
        "task.container" => "container settings",
        "task.resources" => "--limit-*/--reserve-*",
        "task.restart" => "--restart-*",
        "task.placement" => "--constraint/--placement-pref",
        "task.force_update" => "--force",
        "endpoint" => "--publish/--endpoint-mode",
        "update" => "--update-*",
        "rollback" => "--rollback-*",
        p => match w.flag(p) {
            Some(f) if !f.is_empty() => f,
            _ => p,
        },
    };
    own.to_string()
}

/// `service create`'s flags, by the field each sets.
fn service_flag(base: &str) -> Option<&'static str> {
    Some(match base {
        "annotations.name" => "--name",
        "annotations.labels" => "--label",
        "mode" => "--mode",
        "replicated.replicas" | "replicated_job.total_completions" => "--replicas",
        // `--replicas` sets a job's completions and concurrency both
        "replicated_job.max_concurrent" => "--replicas",
        "task.container.image" => "IMAGE",
        "task.container.secrets"
        | "task.container.secrets.source"
        | "task.container.secrets.target"
        | "task.container.secrets.uid"
        | "task.container.secrets.gid"
        | "task.container.secrets.mode" => "--secret",
        "task.container.configs"
        | "task.container.configs.source"
        | "task.container.configs.target"
        | "task.container.configs.uid"
        | "task.container.configs.gid"
        | "task.container.configs.mode" => "--config",
        "task.container.command" => "--entrypoint",
        "task.container.args" => "COMMAND",
        "task.container.env" => "--env",
        "task.container.dir" => "--workdir",
        "task.container.user" => "--user",
        "task.container.hostname" => "--hostname",
        "task.container.mounts" => "--mount",
        "task.container.labels" => "--container-label",
        "task.container.stop_signal" => "--stop-signal",
        "task.container.stop_grace_period" => "--stop-grace-period",
        "task.container.healthcheck" | "task.container.healthcheck.test" => "--health-cmd",
        "task.container.healthcheck.interval" => "--health-interval",
        "task.container.healthcheck.timeout" => "--health-timeout",
        "task.container.healthcheck.retries" => "--health-retries",
        "task.container.healthcheck.start_period" => "--health-start-period",
        "task.container.healthcheck.start_interval" => "--health-start-interval",
        "task.container.read_only" => "--read-only",
        "task.container.cap_add" => "--cap-add",
        "task.container.cap_drop" => "--cap-drop",
        "task.container.pids_limit" => "--limit-pids",
        "task.resources.limits.memory_bytes" => "--limit-memory",
        "task.resources.limits.nano_cpus" => "--limit-cpu",
        "task.resources.reservations.memory_bytes" => "--reserve-memory",
        "task.resources.reservations.nano_cpus" => "--reserve-cpu",
        "task.restart.condition" => "--restart-condition",
        "task.restart.delay" => "--restart-delay",
        "task.restart.max_attempts" => "--restart-max-attempts",
        "task.restart.window" => "--restart-window",
        "task.placement.constraints" => "--constraint",
        "task.placement.preferences" => "--placement-pref",
        "task.placement.max_replicas" => "--replicas-max-per-node",
        "task.networks" | "task.networks.aliases" => "--network",
        "endpoint.ports" => "--publish",
        "endpoint.mode" => "--endpoint-mode",
        "update.parallelism" => "--update-parallelism",
        "update.delay" => "--update-delay",
        "update.monitor" => "--update-monitor",
        "update.max_failure_ratio" => "--update-max-failure-ratio",
        "update.failure_action" => "--update-failure-action",
        "update.order" => "--update-order",
        "rollback.parallelism" => "--rollback-parallelism",
        "rollback.delay" => "--rollback-delay",
        "rollback.monitor" => "--rollback-monitor",
        "rollback.max_failure_ratio" => "--rollback-max-failure-ratio",
        "rollback.failure_action" => "--rollback-failure-action",
        "rollback.order" => "--rollback-order",
        "filters" => "--filter",
        _ => return None,
    })
}

/// A refusal from the daemon: its spec problems in this command's words, or its message.
pub fn refusal(s: tonic::Status, words: Words) -> anyhow::Error {
    use prost::Message;
    if s.code() == tonic::Code::InvalidArgument && !s.details().is_empty() {
        if let Ok(p) = shoal_proto::SpecProblems::decode(s.details()) {
            return words.say(&SpecErrors::from_proto(p));
        }
    }
    anyhow::anyhow!("{}", s.message())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Field;

    #[test]
    fn fields_are_said_as_each_commands_flags() {
        let e = |p: &str| SpecError::new(Field::new(p), "x");
        let env = e("task.container.env[2]");
        assert_eq!(Words::Service.name(&env), "--env");
        assert_eq!(Words::Container.name(&env), "--env");
        let mem = e("task.resources.limits.memory_bytes");
        assert_eq!(Words::Service.name(&mem), "--limit-memory");
        assert_eq!(Words::Container.name(&mem), "--memory");
        assert_eq!(Words::Network.name(&e("ipam[0].range")), "--ip-range");
        assert_eq!(Words::Node.name(&e("annotations.labels")), "--label-add");
        assert_eq!(
            Words::Swarm.name(&e("default_addr_pool[1]")),
            "--default-addr-pool"
        );
        assert_eq!(Words::Service.name(&e("")), "");
        assert_eq!(
            Words::Service.name(&e("task.unknown[1]")),
            "task.unknown[1]"
        );
        let rm = e("task.container.mounts").edit(Edit::Rm);
        assert_eq!(Words::Service.name(&rm), "--mount-rm");
        let rm = e("endpoint.ports[0]").edit(Edit::Rm);
        assert_eq!(Words::Service.name(&rm), "--publish-rm");
        let errs = SpecErrors(vec![
            SpecError::new(
                Field::new("task.container.env[0]"),
                "\"X\" is not KEY=VALUE",
            ),
            SpecError::new(Field::new("task.container.mounts"), "no mount there")
                .value("/x")
                .edit(Edit::Rm),
        ]);
        assert_eq!(
            Words::Service.say(&errs).to_string(),
            "--env: \"X\" is not KEY=VALUE\n--mount-rm \"/x\": no mount there"
        );
    }

    #[test]
    fn the_daemons_spec_problems_are_said_in_the_clis_words() {
        let errs = SpecErrors::from(SpecError::new(
            Field::new("endpoint.ports[0]"),
            "port 80/tcp is already published by service api",
        ));
        let s = crate::manager::error::grpc_status(errs.into());
        let e = refusal(s, Words::Service).to_string();
        assert_eq!(
            e,
            "--publish: port 80/tcp is already published by service api"
        );
        let plain = refusal(
            tonic::Status::not_found("service x not found"),
            Words::Service,
        );
        assert_eq!(plain.to_string(), "service x not found");
    }
}
