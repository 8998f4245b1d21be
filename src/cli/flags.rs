//! The flags that describe a container or a service: those `container run` and `service
//! create` share, those of `service create` and `update`, and `service update`'s edits.
//! They become a [`ServiceInput`] or a [`ServiceEdit`], each value parsed with
//! `crate::spec`'s parsers and a bad one named by its flag.

use std::time::Duration;

use clap::Args;

use std::collections::HashMap;

use shoal_proto::Network;

use crate::spec::docker;
use crate::spec::parse::{parse_mount, parse_network, parse_publish, parse_published};
use crate::spec::service::{parse_endpoint_mode, parse_restart_condition};
use crate::spec::units::{key_value, label, labels, nano_cpus, parse_duration, parse_size};
use crate::spec::update::{parse_failure_action, parse_order, UpdateInput};
use crate::spec::{ServiceEdit, ServiceInput};

/// A value refused by its parser, named by the flag it came with; the parser's message
/// says the value already.
pub fn bad(flag: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{flag}: {e}")
}

/// The same, for a parser whose message does not repeat the value.
pub fn bad_value(flag: &str, v: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{flag} {v:?}: {e}")
}

/// A size flag (`64m`), as bytes.
pub fn size(flag: &str, v: Option<&str>) -> anyhow::Result<Option<i64>> {
    v.map(|s| parse_size(s).map_err(|e| bad(flag, e)))
        .transpose()
}

/// A CPUs flag (`0.5`), in billionths.
pub fn cpus(flag: &str, v: Option<f64>) -> anyhow::Result<Option<i64>> {
    v.map(|c| nano_cpus(c).map_err(|e| bad(flag, e)))
        .transpose()
}

/// Parses each value of a repeated flag.
pub fn each<T>(
    flag: &str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> anyhow::Result<Vec<T>> {
    values
        .iter()
        .map(|v| parse(v).map_err(|e| bad_value(flag, v, e)))
        .collect()
}

/// What a container is, the same for a standalone container and a service's tasks.
#[derive(Args, Clone, Default)]
pub struct ContainerFlags {
    /// Set an environment variable (KEY=VALUE).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(long)]
    pub entrypoint: Option<String>,
    #[arg(short, long)]
    pub workdir: Option<String>,
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// type=bind|volume|tmpfs,source=…,target=…[,readonly][,tmpfs-size=…]
    #[arg(long)]
    pub mount: Vec<String>,
    #[arg(long)]
    pub stop_signal: Option<String>,
    #[arg(long)]
    pub health_cmd: Option<String>,
    #[arg(long, value_parser = parse_duration)]
    pub health_interval: Option<Duration>,
    #[arg(long, value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    #[arg(long)]
    pub health_retries: Option<i32>,
    #[arg(long, value_parser = parse_duration)]
    pub health_start_period: Option<Duration>,
    /// How often the health check runs during its start period.
    #[arg(long, value_parser = parse_duration)]
    pub health_start_interval: Option<Duration>,
    /// No health check, not even the image's.
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Attach to an overlay network: NAME[,alias=A…] or name=NAME[,alias=A…] (a
    /// standalone container: an attachable one, on a node of the swarm).
    #[arg(long)]
    pub network: Vec<String>,
    /// Return at once (a container: print its ID; a service: do not wait for it to
    /// converge).
    #[arg(short, long)]
    pub detach: bool,
}

impl ContainerFlags {
    /// Fills `i` with what was given. `--entrypoint` is one word for a container (as
    /// `docker run`'s) and split into words for a service (as `docker service create`'s).
    pub fn fill(&self, i: &mut ServiceInput, split_entrypoint: bool) -> anyhow::Result<()> {
        if !self.env.is_empty() {
            i.env = Some(self.env.clone());
        }
        i.entrypoint = self.entrypoint.as_ref().map(|e| {
            if split_entrypoint {
                e.split_whitespace().map(String::from).collect()
            } else {
                vec![e.clone()]
            }
        });
        i.workdir.clone_from(&self.workdir);
        i.user.clone_from(&self.user);
        i.hostname.clone_from(&self.hostname);
        if !self.mount.is_empty() {
            i.mounts = Some(each("--mount", &self.mount, parse_mount)?);
        }
        i.stop_signal.clone_from(&self.stop_signal);
        i.health.test = self
            .health_cmd
            .as_ref()
            .map(|c| vec!["CMD-SHELL".into(), c.clone()]);
        i.health.interval = self.health_interval;
        i.health.timeout = self.health_timeout;
        i.health.retries = self.health_retries;
        i.health.start_period = self.health_start_period;
        i.health.start_interval = self.health_start_interval;
        if self.no_healthcheck {
            if self.health_cmd.is_some() {
                anyhow::bail!("--no-healthcheck conflicts with --health-cmd: give one of them");
            }
            i.health.test = Some(vec!["NONE".into()]);
        }
        if !self.network.is_empty() {
            i.networks = Some(each("--network", &self.network, parse_network)?);
        }
        Ok(())
    }
}

/// How `create` and `update` have the managers reach the image's registry.
#[derive(Args, Clone, Default)]
pub struct RegistryFlags {
    /// Do not ask the registry for the image's digest: each node pulls the tag on its
    /// own (and nodes may run different images).
    #[arg(long)]
    pub no_resolve_image: bool,
    /// Send this client's credentials for the image's registry (`shoal login`) to the
    /// swarm, so that every node pulls with them.
    #[arg(long)]
    pub with_registry_auth: bool,
}

impl RegistryFlags {
    /// The credentials to send for `image`, when `--with-registry-auth` asks for them:
    /// those `shoal login` keeps in the daemon's data root.
    pub async fn auth(
        &self,
        g: &super::Globals,
        image: &str,
    ) -> anyhow::Result<Option<shoal_proto::RegistryCredential>> {
        if !self.with_registry_auth {
            return Ok(None);
        }
        let r = shoal_runtime::image::ImageRef::parse(image)
            .map_err(|e| bad("--with-registry-auth", e))?;
        let registry = r.registry();
        let data_root = super::client::this_node(g).await?.data_root();
        let credentials = super::image::credentials_file(&data_root);
        let auth = shoal_runtime::image::Credentials::load(&credentials)?.get(registry);
        match crate::spec::image::credential(registry, &auth) {
            Some(c) => Ok(Some(c)),
            None => anyhow::bail!(
                "--with-registry-auth: no credentials for {registry} in {} (run `shoal login {registry}` first)",
                credentials.display()
            ),
        }
    }
}

/// Flags `create` and `update` share.
#[derive(Args, Clone, Default)]
pub struct SpecFlags {
    #[command(flatten)]
    pub container: ContainerFlags,
    #[arg(long)]
    limit_memory: Option<String>,
    #[arg(long)]
    limit_cpu: Option<f64>,
    #[arg(long)]
    reserve_memory: Option<String>,
    #[arg(long)]
    reserve_cpu: Option<f64>,
    /// none, on-failure or any
    #[arg(long)]
    restart_condition: Option<String>,
    #[arg(long, value_parser = parse_duration)]
    restart_delay: Option<Duration>,
    #[arg(long)]
    restart_max_attempts: Option<u64>,
    #[arg(long, value_parser = parse_duration)]
    restart_window: Option<Duration>,
    #[arg(long, value_parser = parse_duration)]
    stop_grace_period: Option<Duration>,
    /// Service labels.
    #[arg(short, long = "label")]
    label: Vec<String>,
    #[arg(long = "container-label")]
    container_label: Vec<String>,
    #[arg(long)]
    constraint: Vec<String>,
    /// spread=node.labels.NAME: spread tasks over the label's values first.
    #[arg(long)]
    placement_pref: Vec<String>,
    /// At most this many tasks of the service per node (0: no limit).
    #[arg(long)]
    replicas_max_per_node: Option<u64>,
    /// Publish a port: published=P,target=T[,mode=ingress|host][,protocol=tcp|udp], or
    /// P:T[/udp].
    #[arg(short = 'p', long)]
    publish: Vec<String>,
    /// vip (a virtual IP per network, the default) or dnsrr (DNS answers every task).
    #[arg(long)]
    endpoint_mode: Option<String>,
    #[command(flatten)]
    update: UpdateFlags,
    #[command(flatten)]
    rollback: RollbackFlags,
}

/// `--update-*`: how a change of the service rolls out.
#[derive(Args, Clone, Default)]
pub struct UpdateFlags {
    /// Tasks updated at once (0: all at once; default 1).
    #[arg(long)]
    update_parallelism: Option<u64>,
    /// Wait between each task's update (ns|us|ms|s|m|h; default 0s).
    #[arg(long, value_parser = parse_duration)]
    update_delay: Option<Duration>,
    /// How long a new task is watched for failure after it runs (default 5s).
    #[arg(long, value_parser = parse_duration)]
    update_monitor: Option<Duration>,
    /// Failures tolerated, as a share of the tasks updated (0 to 1; default 0).
    #[arg(long)]
    update_max_failure_ratio: Option<f32>,
    /// On failure: pause, continue or rollback (default pause).
    #[arg(long)]
    update_failure_action: Option<String>,
    /// stop-first or start-first (default stop-first).
    #[arg(long)]
    update_order: Option<String>,
}

/// `--rollback-*`: how a rollback rolls out.
#[derive(Args, Clone, Default)]
pub struct RollbackFlags {
    /// Tasks rolled back at once (0: all at once; default 1).
    #[arg(long)]
    rollback_parallelism: Option<u64>,
    /// Wait between each task's rollback (default 0s).
    #[arg(long, value_parser = parse_duration)]
    rollback_delay: Option<Duration>,
    /// How long a task is watched for failure after it runs (default 5s).
    #[arg(long, value_parser = parse_duration)]
    rollback_monitor: Option<Duration>,
    /// Failures tolerated, as a share of the tasks rolled back (0 to 1; default 0).
    #[arg(long)]
    rollback_max_failure_ratio: Option<f32>,
    /// On failure: pause or continue (default pause).
    #[arg(long)]
    rollback_failure_action: Option<String>,
    /// stop-first or start-first (default stop-first).
    #[arg(long)]
    rollback_order: Option<String>,
}

/// One set of update flags, named by their prefix (`--update` or `--rollback`).
#[allow(clippy::too_many_arguments)]
fn update_input(
    prefix: &str,
    parallelism: Option<u64>,
    delay: Option<Duration>,
    monitor: Option<Duration>,
    ratio: Option<f32>,
    action: Option<&str>,
    order: Option<&str>,
) -> anyhow::Result<UpdateInput> {
    Ok(UpdateInput {
        parallelism,
        delay,
        monitor,
        max_failure_ratio: ratio,
        failure_action: action
            .map(|a| {
                parse_failure_action(a)
                    .map_err(|e| bad_value(&format!("{prefix}-failure-action"), a, e))
            })
            .transpose()?,
        order: order
            .map(|o| parse_order(o).map_err(|e| bad_value(&format!("{prefix}-order"), o, e)))
            .transpose()?,
    })
}

impl UpdateFlags {
    fn input(&self) -> anyhow::Result<UpdateInput> {
        update_input(
            "--update",
            self.update_parallelism,
            self.update_delay,
            self.update_monitor,
            self.update_max_failure_ratio,
            self.update_failure_action.as_deref(),
            self.update_order.as_deref(),
        )
    }
}

impl RollbackFlags {
    fn input(&self) -> anyhow::Result<UpdateInput> {
        update_input(
            "--rollback",
            self.rollback_parallelism,
            self.rollback_delay,
            self.rollback_monitor,
            self.rollback_max_failure_ratio,
            self.rollback_failure_action.as_deref(),
            self.rollback_order.as_deref(),
        )
    }
}

/// Labels given with `flag`, or None when none were.
fn label_flags(flag: &str, list: &[String]) -> anyhow::Result<Option<HashMap<String, String>>> {
    if list.is_empty() {
        return Ok(None);
    }
    labels(list)
        .map(Some)
        .map_err(|(l, e)| bad_value(flag, &l, e))
}

impl SpecFlags {
    /// What was given, in the spec's vocabulary.
    pub fn input(&self) -> anyhow::Result<ServiceInput> {
        let mut i = ServiceInput::default();
        self.container.fill(&mut i, true)?;
        i.limit_memory = size("--limit-memory", self.limit_memory.as_deref())?;
        i.reserve_memory = size("--reserve-memory", self.reserve_memory.as_deref())?;
        i.limit_cpu = cpus("--limit-cpu", self.limit_cpu)?;
        i.reserve_cpu = cpus("--reserve-cpu", self.reserve_cpu)?;
        i.restart_condition = self
            .restart_condition
            .as_deref()
            .map(|c| parse_restart_condition(c).map_err(|e| bad_value("--restart-condition", c, e)))
            .transpose()?;
        i.restart_delay = self.restart_delay;
        i.restart_max_attempts = self.restart_max_attempts;
        i.restart_window = self.restart_window;
        i.stop_grace_period = self.stop_grace_period;
        i.labels = label_flags("--label", &self.label)?;
        i.container_labels = label_flags("--container-label", &self.container_label)?;
        if !self.constraint.is_empty() {
            i.constraints = Some(self.constraint.clone());
        }
        if !self.placement_pref.is_empty() {
            i.placement_prefs = Some(self.placement_pref.clone());
        }
        i.max_replicas_per_node = self.replicas_max_per_node;
        if !self.publish.is_empty() {
            i.ports = Some(each("--publish", &self.publish, parse_publish)?);
        }
        i.endpoint_mode = self
            .endpoint_mode
            .as_deref()
            .map(|m| parse_endpoint_mode(m).map_err(|e| bad_value("--endpoint-mode", m, e)))
            .transpose()?;
        i.update = self.update.input()?;
        i.rollback = self.rollback.input()?;
        Ok(i)
    }
}

/// Docker's `--*-add` / `--*-rm` edits.
#[derive(Args)]
pub struct EditFlags {
    /// Add or replace an environment variable (KEY=VALUE).
    #[arg(long)]
    env_add: Vec<String>,
    /// Remove an environment variable (KEY).
    #[arg(long)]
    env_rm: Vec<String>,
    /// Add or replace a service label (KEY=VALUE).
    #[arg(long)]
    label_add: Vec<String>,
    /// Remove a service label (KEY).
    #[arg(long)]
    label_rm: Vec<String>,
    /// Add a placement constraint.
    #[arg(long)]
    constraint_add: Vec<String>,
    /// Remove a placement constraint.
    #[arg(long)]
    constraint_rm: Vec<String>,
    /// Add or replace a mount (same syntax as --mount; replaces one at the same target).
    #[arg(long)]
    mount_add: Vec<String>,
    /// Remove the mount at this target path.
    #[arg(long)]
    mount_rm: Vec<String>,
    /// Add or replace a container label (KEY=VALUE).
    #[arg(long)]
    container_label_add: Vec<String>,
    /// Remove a container label (KEY).
    #[arg(long)]
    container_label_rm: Vec<String>,
    /// Attach to another network (same syntax as --network).
    #[arg(long)]
    network_add: Vec<String>,
    /// Detach from a network (name or ID).
    #[arg(long)]
    pub network_rm: Vec<String>,
    /// Publish another port (same syntax as --publish).
    #[arg(long)]
    publish_add: Vec<String>,
    /// Stop publishing a port: PUBLISHED[/PROTOCOL].
    #[arg(long)]
    publish_rm: Vec<String>,
    /// Add or replace a secret (same syntax as --secret; replaces one at the same path).
    #[arg(long)]
    secret_add: Vec<String>,
    /// Remove a secret (its name).
    #[arg(long)]
    secret_rm: Vec<String>,
    /// Add or replace a config (same syntax as --config; replaces one at the same path).
    #[arg(long)]
    config_add: Vec<String>,
    /// Remove a config (its name).
    #[arg(long)]
    config_rm: Vec<String>,
}

impl EditFlags {
    /// The edits; `networks` resolve `--network-rm`'s names (the spec holds IDs).
    pub fn edit(&self, networks: &[Network]) -> anyhow::Result<ServiceEdit> {
        let pairs = |flag: &str, l: &[String], p: fn(&str) -> Result<(String, String), String>| {
            each(flag, l, p)
        };
        each("--env-add", &self.env_add, key_value)?;
        for c in &self.constraint_add {
            crate::spec::placement::parse_constraint(c).map_err(|e| bad("--constraint-add", e))?;
        }
        let network_id = |n: &String| {
            let id = networks
                .iter()
                .find(|x| &x.id == n || docker::network_name(x) == n)
                .map_or_else(|| n.clone(), |x| x.id.clone());
            (id, n.clone())
        };
        Ok(ServiceEdit {
            env_add: self.env_add.clone(),
            env_rm: self.env_rm.clone(),
            label_add: pairs("--label-add", &self.label_add, label)?,
            label_rm: self.label_rm.clone(),
            container_label_add: pairs("--container-label-add", &self.container_label_add, label)?,
            container_label_rm: self.container_label_rm.clone(),
            constraint_add: self.constraint_add.clone(),
            constraint_rm: self.constraint_rm.clone(),
            mount_add: each("--mount-add", &self.mount_add, parse_mount)?,
            mount_rm: self.mount_rm.clone(),
            network_add: each("--network-add", &self.network_add, parse_network)?,
            network_rm: self.network_rm.iter().map(network_id).collect(),
            publish_add: each("--publish-add", &self.publish_add, parse_publish)?,
            publish_rm: each("--publish-rm", &self.publish_rm, parse_published)?,
            secret_add: each(
                "--secret-add",
                &self.secret_add,
                crate::spec::files::parse_reference,
            )?,
            secret_rm: self.secret_rm.clone(),
            config_add: each(
                "--config-add",
                &self.config_add,
                crate::spec::files::parse_reference,
            )?,
            config_rm: self.config_rm.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_fill_the_input_and_name_what_is_bad() {
        let f = ContainerFlags {
            env: vec!["A=1".into()],
            entrypoint: Some("/bin/sh -c".into()),
            mount: vec!["type=tmpfs,target=/t".into()],
            health_cmd: Some("true".into()),
            ..Default::default()
        };
        let mut i = ServiceInput::default();
        f.fill(&mut i, true).unwrap();
        assert_eq!(
            i.entrypoint.as_deref(),
            Some(&["/bin/sh".to_string(), "-c".into()][..])
        );
        assert_eq!(i.health.test.as_ref().unwrap()[0], "CMD-SHELL");
        f.fill(&mut i, false).unwrap();
        assert_eq!(
            i.entrypoint.as_deref(),
            Some(&["/bin/sh -c".to_string()][..])
        );
        let f = ContainerFlags {
            mount: vec!["type=nfs,target=/x".into()],
            ..Default::default()
        };
        let e = f.fill(&mut i, true).unwrap_err().to_string();
        assert_eq!(
            e,
            "--mount \"type=nfs,target=/x\": type \"nfs\" is not supported (bind, volume, tmpfs)"
        );
    }
}
