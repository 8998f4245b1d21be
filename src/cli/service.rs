//! `shoal service …`, with Docker's verbs, flags and output.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use shoal_proto::service_spec::Mode;
use shoal_proto::*;

use super::client::{control, refusal};
use super::container::parse_duration;
use super::swarm::hostname;
use super::util::{ago, remove_each, table};
use super::Globals;

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// Create a service.
    Create(Box<CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls {
        #[arg(long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// List a service's tasks.
    Ps {
        #[arg(required = true)]
        services: Vec<String>,
        #[arg(long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
        #[arg(short, long = "filter")]
        filter: Vec<String>,
    },
    /// Show services in detail (JSON).
    Inspect {
        #[arg(required = true)]
        services: Vec<String>,
        #[arg(long)]
        format: Option<String>,
    },
    /// A service's (or task's) logs.
    Logs {
        service: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(long, default_value = "all")]
        tail: String,
        #[arg(short, long)]
        timestamps: bool,
    },
    /// Scale replicated services: NAME=REPLICAS …
    Scale {
        #[arg(required = true)]
        scales: Vec<String>,
        #[arg(short, long)]
        detach: bool,
    },
    /// Update a service.
    Update(Box<UpdateArgs>),
    /// Remove services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// Flags `create` and `update` share.
#[derive(Args, Clone, Default)]
pub struct SpecFlags {
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(long)]
    entrypoint: Option<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    #[arg(short, long)]
    user: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// type=bind|volume|tmpfs,source=…,target=…[,readonly]
    #[arg(long)]
    mount: Vec<String>,
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
    #[arg(long)]
    stop_signal: Option<String>,
    #[arg(long, value_parser = parse_duration)]
    stop_grace_period: Option<Duration>,
    #[arg(long)]
    health_cmd: Option<String>,
    #[arg(long, value_parser = parse_duration)]
    health_interval: Option<Duration>,
    #[arg(long, value_parser = parse_duration)]
    health_timeout: Option<Duration>,
    #[arg(long)]
    health_retries: Option<i32>,
    #[arg(long, value_parser = parse_duration)]
    health_start_period: Option<Duration>,
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
    /// Attach to an overlay network: NAME[,alias=A…] or name=NAME[,alias=A…].
    #[arg(long)]
    network: Vec<String>,
    /// Publish a port: published=P,target=T[,mode=ingress|host][,protocol=tcp|udp], or
    /// P:T[/udp].
    #[arg(short = 'p', long)]
    publish: Vec<String>,
    /// vip (a virtual IP per network, the default) or dnsrr (DNS answers every task).
    #[arg(long)]
    endpoint_mode: Option<String>,
    /// Return at once instead of showing progress until the service converges.
    #[arg(short, long)]
    detach: bool,
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    replicas: Option<u64>,
    /// replicated, global, replicated-job or global-job
    #[arg(long, default_value = "replicated")]
    mode: String,
    #[command(flatten)]
    flags: SpecFlags,
    image: String,
    #[arg(trailing_var_arg = true)]
    command: Vec<String>,
}

#[derive(Args)]
pub struct UpdateArgs {
    #[arg(long)]
    image: Option<String>,
    #[arg(long)]
    replicas: Option<u64>,
    /// Replace the tasks even if nothing changed.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    rollback: bool,
    #[arg(long)]
    args: Option<String>,
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
    network_rm: Vec<String>,
    /// Publish another port (same syntax as --publish).
    #[arg(long)]
    publish_add: Vec<String>,
    /// Stop publishing a port: PUBLISHED[/PROTOCOL].
    #[arg(long)]
    publish_rm: Vec<String>,
    #[command(flatten)]
    flags: SpecFlags,
    service: String,
}

/// Docker's `--*-add` / `--*-rm` edits on top of the current spec.
fn apply_edits(spec: &mut ServiceSpec, a: &UpdateArgs, networks: &[Network]) -> anyhow::Result<()> {
    let task = spec.task.get_or_insert_with(TaskSpec::default);
    let c = task.container.get_or_insert_with(ContainerSpec::default);
    for e in &a.env_add {
        let (k, _) = e
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| anyhow!("--env-add {e:?}: use KEY=VALUE"))?;
        c.env
            .retain(|x| x.split_once('=').map(|(xk, _)| xk) != Some(k));
        c.env.push(e.clone());
    }
    for k in &a.env_rm {
        c.env
            .retain(|x| x.split_once('=').map(|(xk, _)| xk).unwrap_or(x) != k);
    }
    for t in &a.mount_rm {
        if !c.mounts.iter().any(|m| &m.target == t) {
            bail!("--mount-rm {t:?}: the service has no mount at that target");
        }
        c.mounts.retain(|m| &m.target != t);
    }
    for m in &a.mount_add {
        let m = parse_mount(m).map_err(|e| anyhow!("--mount-add: {e}"))?;
        c.mounts.retain(|x| x.target != m.target);
        c.mounts.push(m);
    }
    for (k, v) in kv(&a.container_label_add, "--container-label-add")? {
        c.labels.insert(k, v);
    }
    for k in &a.container_label_rm {
        c.labels.remove(k);
    }
    for n in &a.network_rm {
        // the spec holds IDs
        let id = networks
            .iter()
            .find(|x| {
                &x.id == n
                    || x.spec
                        .as_ref()
                        .and_then(|s| s.annotations.as_ref())
                        .is_some_and(|an| &an.name == n)
            })
            .map(|x| x.id.clone())
            .unwrap_or_else(|| n.clone());
        if !task.networks.iter().any(|x| x.target == id) {
            bail!("--network-rm {n}: the service is not attached to that network");
        }
        task.networks.retain(|x| x.target != id);
    }
    for n in &a.network_add {
        task.networks
            .push(parse_network(n).map_err(|e| anyhow!("--network-add: {e}"))?);
    }
    if !a.publish_add.is_empty() || !a.publish_rm.is_empty() {
        let ep = spec.endpoint.get_or_insert_with(EndpointSpec::default);
        for r in &a.publish_rm {
            let (port, proto) = r.split_once('/').unwrap_or((r, "tcp"));
            let port: u32 = port
                .parse()
                .map_err(|_| anyhow!("--publish-rm {r:?}: use PUBLISHED[/tcp|udp]"))?;
            let proto = parse_protocol(proto)?;
            let before = ep.ports.len();
            ep.ports
                .retain(|p| !(p.published_port == port && p.protocol == proto as i32));
            if ep.ports.len() == before {
                bail!("--publish-rm {r}: the service does not publish that port");
            }
        }
        for p in &a.publish_add {
            let p = parse_publish(p).map_err(|e| anyhow!("--publish-add: {e}"))?;
            ep.ports.retain(|x| {
                !(x.published_port == p.published_port
                    && p.published_port != 0
                    && x.protocol == p.protocol)
            });
            ep.ports.push(p);
        }
    }
    // touch only what is edited: an untouched empty part must stay absent, or the task
    // spec would differ and every task be replaced
    if !a.constraint_add.is_empty() || !a.constraint_rm.is_empty() {
        let placement = task.placement.get_or_insert_with(Placement::default);
        for k in &a.constraint_add {
            crate::manager::scheduler::parse_constraint(k)
                .map_err(|e| anyhow!("--constraint-add: {e}"))?;
            if !placement.constraints.contains(k) {
                placement.constraints.push(k.clone());
            }
        }
        placement
            .constraints
            .retain(|x| !a.constraint_rm.contains(x));
    }
    if !a.label_add.is_empty() || !a.label_rm.is_empty() {
        let labels = &mut spec
            .annotations
            .get_or_insert_with(Annotations::default)
            .labels;
        for (k, v) in kv(&a.label_add, "--label-add")? {
            labels.insert(k, v);
        }
        for k in &a.label_rm {
            labels.remove(k);
        }
    }
    Ok(())
}

fn pd(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn kv(list: &[String], flag: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    for l in list {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        if k.is_empty() {
            bail!("{flag} {l:?}: a label needs a name");
        }
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

/// A number of CPUs as the spec keeps it (billionths); how many a host has is the
/// managers' to check.
fn nano_cpus(c: f64, flag: &str) -> anyhow::Result<i64> {
    if !(c > 0.0 && c.is_finite()) || c * 1e9 >= i64::MAX as f64 {
        bail!("{flag} {c}: must be a positive number of CPUs");
    }
    Ok((c * 1e9).round() as i64)
}

fn bytes(s: &str, flag: &str) -> anyhow::Result<i64> {
    shoal_runtime::container::spec::parse_bytes(s)
        .map(|b| b as i64)
        .map_err(|e| anyhow!("{flag}: {e}"))
}

/// `--mount` as `container run` parses it, in the API's terms.
fn parse_mount(s: &str) -> anyhow::Result<shoal_proto::Mount> {
    use shoal_runtime::container::spec::MountKind;
    let m = super::container::parse_mount(s)?;
    let kind = match m.kind {
        MountKind::Bind => mount::Type::Bind,
        MountKind::Volume => mount::Type::Volume,
        MountKind::Tmpfs => mount::Type::Tmpfs,
    };
    Ok(shoal_proto::Mount {
        r#type: kind as i32,
        source: m.source,
        target: m.target,
        read_only: m.read_only,
        tmpfs_size_bytes: m.tmpfs_size.unwrap_or(0) as i64,
    })
}

/// Applies the flags that were given onto a spec (create starts from an empty one).
fn apply_flags(spec: &mut ServiceSpec, f: &SpecFlags) -> anyhow::Result<()> {
    let task = spec.task.get_or_insert_with(TaskSpec::default);
    let c = task.container.get_or_insert_with(ContainerSpec::default);
    if !f.env.is_empty() {
        for e in &f.env {
            if !e.contains('=') || e.starts_with('=') {
                bail!("--env {e:?}: use KEY=VALUE");
            }
        }
        c.env = f.env.clone();
    }
    if let Some(e) = &f.entrypoint {
        c.command = e.split_whitespace().map(String::from).collect();
    }
    if let Some(w) = &f.workdir {
        c.dir = w.clone();
    }
    if let Some(u) = &f.user {
        c.user = u.clone();
    }
    if let Some(h) = &f.hostname {
        c.hostname = h.clone();
    }
    if !f.mount.is_empty() {
        c.mounts = f
            .mount
            .iter()
            .map(|m| parse_mount(m))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(s) = &f.stop_signal {
        shoal_runtime::container::spec::parse_signal(s)
            .map_err(|e| anyhow!("--stop-signal: {e}"))?;
        c.stop_signal = s.clone();
    }
    if let Some(d) = f.stop_grace_period {
        c.stop_grace_period = Some(pd(d));
    }
    if let Some(cmd) = &f.health_cmd {
        c.healthcheck = Some(HealthConfig {
            test: vec!["CMD-SHELL".into(), cmd.clone()],
            interval: f.health_interval.map(pd),
            timeout: f.health_timeout.map(pd),
            retries: f.health_retries.unwrap_or(0),
            start_period: f.health_start_period.map(pd),
        });
    } else if f.health_interval.is_some()
        || f.health_timeout.is_some()
        || f.health_retries.is_some()
        || f.health_start_period.is_some()
    {
        match c.healthcheck.as_mut() {
            Some(h) => {
                if let Some(d) = f.health_interval {
                    h.interval = Some(pd(d));
                }
                if let Some(d) = f.health_timeout {
                    h.timeout = Some(pd(d));
                }
                if let Some(r) = f.health_retries {
                    h.retries = r;
                }
                if let Some(d) = f.health_start_period {
                    h.start_period = Some(pd(d));
                }
            }
            None => bail!("--health-interval, --health-timeout, --health-retries and --health-start-period need --health-cmd"),
        }
    }
    if !f.container_label.is_empty() {
        c.labels = kv(&f.container_label, "--container-label")?;
    }
    let res = task
        .resources
        .get_or_insert_with(ResourceRequirements::default);
    if let Some(m) = &f.limit_memory {
        res.limits
            .get_or_insert_with(Resources::default)
            .memory_bytes = bytes(m, "--limit-memory")?;
    }
    if let Some(c) = f.limit_cpu {
        res.limits.get_or_insert_with(Resources::default).nano_cpus = nano_cpus(c, "--limit-cpu")?;
    }
    if let Some(m) = &f.reserve_memory {
        res.reservations
            .get_or_insert_with(Resources::default)
            .memory_bytes = bytes(m, "--reserve-memory")?;
    }
    if let Some(c) = f.reserve_cpu {
        res.reservations
            .get_or_insert_with(Resources::default)
            .nano_cpus = nano_cpus(c, "--reserve-cpu")?;
    }
    let restart = task.restart.get_or_insert_with(RestartPolicy::default);
    if let Some(c) = &f.restart_condition {
        restart.condition = match c.as_str() {
            "any" => restart_policy::Condition::Any,
            "none" => restart_policy::Condition::None,
            "on-failure" => restart_policy::Condition::OnFailure,
            _ => bail!("--restart-condition {c:?}: use none, on-failure or any"),
        } as i32;
    }
    if let Some(d) = f.restart_delay {
        restart.delay = Some(pd(d));
    }
    if let Some(n) = f.restart_max_attempts {
        restart.max_attempts = n;
    }
    if let Some(d) = f.restart_window {
        restart.window = Some(pd(d));
    }
    if !f.constraint.is_empty() {
        for c in &f.constraint {
            crate::manager::scheduler::parse_constraint(c)
                .map_err(|e| anyhow!("--constraint: {e}"))?;
        }
        task.placement
            .get_or_insert_with(Placement::default)
            .constraints = f.constraint.clone();
    }
    if !f.placement_pref.is_empty() {
        task.placement
            .get_or_insert_with(Placement::default)
            .preferences = f
            .placement_pref
            .iter()
            .map(|p| {
                crate::manager::scheduler::parse_preference(p).map(|d| PlacementPreference {
                    spread_descriptor: d,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!(e))?;
    }
    if let Some(n) = f.replicas_max_per_node {
        task.placement
            .get_or_insert_with(Placement::default)
            .max_replicas = n;
    }
    if !f.label.is_empty() {
        spec.annotations
            .get_or_insert_with(Annotations::default)
            .labels = kv(&f.label, "--label")?;
    }
    if !f.network.is_empty() {
        task.networks = f
            .network
            .iter()
            .map(|n| parse_network(n).map_err(|e| anyhow!("--network: {e}")))
            .collect::<anyhow::Result<_>>()?;
    }
    if !f.publish.is_empty() {
        spec.endpoint
            .get_or_insert_with(EndpointSpec::default)
            .ports = f
            .publish
            .iter()
            .map(|p| parse_publish(p).map_err(|e| anyhow!("--publish: {e}")))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(m) = &f.endpoint_mode {
        spec.endpoint.get_or_insert_with(EndpointSpec::default).mode = match m.as_str() {
            "vip" => endpoint_spec::ResolutionMode::Vip,
            "dnsrr" => endpoint_spec::ResolutionMode::Dnsrr,
            _ => bail!("--endpoint-mode {m:?}: use vip or dnsrr"),
        } as i32;
    }
    Ok(())
}

/// `--network NAME[,alias=A…]` or `name=NAME[,alias=A…]` (the manager resolves the name).
pub fn parse_network(s: &str) -> anyhow::Result<NetworkAttachmentConfig> {
    let mut a = NetworkAttachmentConfig::default();
    for (i, part) in s.split(',').enumerate() {
        match part.split_once('=') {
            Some(("name" | "target", v)) => a.target = v.to_string(),
            Some(("alias", v)) if !v.is_empty() => a.aliases.push(v.to_string()),
            Some((k, _)) if k == "driver-opt" || k == "ip" || k == "ip6" => {
                bail!("{s:?}: {k} is not supported yet")
            }
            Some((k, _)) => bail!("{s:?}: unknown option {k:?} (use name=NET and alias=NAME)"),
            None if i == 0 => a.target = part.to_string(),
            None => bail!("{s:?}: {part:?} is not KEY=VALUE"),
        }
    }
    if a.target.is_empty() {
        bail!("{s:?}: which network? (NAME or name=NAME)");
    }
    Ok(a)
}

fn parse_protocol(p: &str) -> anyhow::Result<port_config::Protocol> {
    match p {
        "tcp" => Ok(port_config::Protocol::Tcp),
        "udp" => Ok(port_config::Protocol::Udp),
        "sctp" => bail!("protocol sctp is not supported (tcp or udp)"),
        _ => bail!("protocol {p:?}: use tcp or udp"),
    }
}

fn parse_port(what: &str, v: &str) -> anyhow::Result<u32> {
    match v.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n),
        _ if v.contains('-') => bail!("{what} {v:?}: port ranges are not supported"),
        _ => bail!("{what} {v:?} is not a port between 1 and 65535"),
    }
}

/// `published=P,target=T[,mode=ingress|host][,protocol=tcp|udp]`, or `[P:]T[/udp]`.
pub fn parse_publish(s: &str) -> anyhow::Result<PortConfig> {
    let mut p = PortConfig::default();
    if s.contains('=') {
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| anyhow!("{s:?}: {part:?} is not KEY=VALUE"))?;
            match k {
                "published" => p.published_port = parse_port("published", v)?,
                "target" => p.target_port = parse_port("target", v)?,
                "mode" => {
                    p.publish_mode = match v {
                        "ingress" => port_config::PublishMode::Ingress,
                        "host" => port_config::PublishMode::Host,
                        _ => bail!("{s:?}: mode {v:?}: use ingress or host"),
                    } as i32
                }
                "protocol" => p.protocol = parse_protocol(v)? as i32,
                _ => bail!("{s:?}: unknown option {k:?} (published, target, mode, protocol)"),
            }
        }
    } else {
        let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        p.protocol = parse_protocol(proto)? as i32;
        match ports.split_once(':') {
            Some((pub_, t)) => {
                if t.contains(':') {
                    bail!("{s:?}: an address to bind to is not supported (use P:T)");
                }
                p.published_port = parse_port("published", pub_)?;
                p.target_port = parse_port("target", t)?;
            }
            None => p.target_port = parse_port("target", ports)?,
        }
    }
    if p.target_port == 0 {
        bail!("{s:?}: which target port? (target=T)");
    }
    if p.publish_mode == port_config::PublishMode::Host as i32 && p.published_port == 0 {
        bail!("{s:?}: mode=host needs a published port");
    }
    Ok(p)
}

fn is_job(s: &Service) -> bool {
    matches!(
        s.spec.as_ref().and_then(|x| x.mode.as_ref()),
        Some(Mode::ReplicatedJob(_)) | Some(Mode::GlobalJob(_))
    )
}

fn mode_name(s: &Service) -> &'static str {
    match s.spec.as_ref().and_then(|x| x.mode.as_ref()) {
        Some(Mode::Replicated(_)) => "replicated",
        Some(Mode::Global(_)) => "global",
        Some(Mode::ReplicatedJob(_)) => "replicated job",
        Some(Mode::GlobalJob(_)) => "global job",
        None => "",
    }
}

fn name_of(s: &Service) -> String {
    s.spec
        .as_ref()
        .and_then(|x| x.annotations.as_ref())
        .map(|a| a.name.clone())
        .unwrap_or_default()
}

fn image_of(s: &Service) -> String {
    s.spec
        .as_ref()
        .and_then(|x| x.task.as_ref())
        .and_then(|t| t.container.as_ref())
        .map(|c| c.image.clone())
        .unwrap_or_default()
}

/// Node IDs to hostnames, for the NODE column and log prefixes.
async fn node_names(
    ctl: &mut shoal_proto::control_client::ControlClient<tonic::transport::Channel>,
) -> anyhow::Result<HashMap<String, String>> {
    let nodes = super::client::list_nodes(ctl).await?;
    Ok(nodes.iter().map(|n| (n.id.clone(), hostname(n))).collect())
}

pub async fn run(g: &Globals, c: ServiceCmd) -> anyhow::Result<ExitCode> {
    let mut ctl = control(g).await?;
    match c {
        ServiceCmd::Create(a) => {
            let mut spec = ServiceSpec {
                annotations: Some(Annotations {
                    name: a.name.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            if a.name.is_none() {
                bail!("--name: a service needs a name");
            }
            spec.mode = Some(match a.mode.as_str() {
                "replicated" => Mode::Replicated(ReplicatedService {
                    replicas: a.replicas.unwrap_or(1),
                }),
                "global" if a.replicas.is_some() => {
                    bail!("--replicas can only be used with replicated or replicated-job mode")
                }
                "global" => Mode::Global(GlobalService {}),
                "replicated-job" => Mode::ReplicatedJob(ReplicatedJob {
                    max_concurrent: a.replicas.unwrap_or(1),
                    total_completions: a.replicas.unwrap_or(1),
                }),
                "global-job" => Mode::GlobalJob(GlobalJob {}),
                m => bail!("--mode {m:?}: use replicated, global, replicated-job or global-job"),
            });
            apply_flags(&mut spec, &a.flags)?;
            let task = spec.task.get_or_insert_with(TaskSpec::default);
            let c = task.container.get_or_insert_with(ContainerSpec::default);
            c.image = a.image.clone();
            c.args = a.command.clone();
            if matches!(
                spec.mode,
                Some(Mode::ReplicatedJob(_)) | Some(Mode::GlobalJob(_))
            ) && a.flags.restart_condition.is_none()
            {
                task.restart
                    .get_or_insert_with(RestartPolicy::default)
                    .condition = restart_policy::Condition::OnFailure as i32;
            }
            let s = ctl
                .create_service(CreateServiceRequest { spec: Some(spec) })
                .await
                .map_err(refusal)?
                .into_inner();
            println!("{}", s.id);
            if !a.flags.detach {
                return converge(&mut ctl, &s.id).await;
            }
        }
        ServiceCmd::Ls { format, quiet } => {
            let r = super::client::list_services(&mut ctl).await?;
            let mut services = r.services.clone();
            services.sort_by_key(name_of);
            let reps = |s: &Service| {
                let (run, want) = (
                    r.running.get(&s.id).copied().unwrap_or(0),
                    r.desired.get(&s.id).copied().unwrap_or(0),
                );
                if is_job(s) {
                    format!("{run}/{want} (completed)")
                } else {
                    format!("{run}/{want}")
                }
            };
            if quiet {
                services.iter().for_each(|s| println!("{}", s.id));
                return Ok(ExitCode::SUCCESS);
            }
            match format.as_str() {
                "table" => table(
                    &["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
                    &services
                        .iter()
                        .map(|s| {
                            vec![
                                s.id[..12.min(s.id.len())].to_string(),
                                name_of(s),
                                mode_name(s).into(),
                                reps(s),
                                image_of(s),
                                String::new(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
                "json" | "{{json .}}" => {
                    for s in &services {
                        println!(
                            "{}",
                            json!({"ID": s.id[..12.min(s.id.len())], "Name": name_of(s), "Mode": mode_name(s), "Replicas": reps(s), "Image": image_of(s), "Ports": ""})
                        );
                    }
                }
                other => bail!("--format {other:?} is not supported: use table or json"),
            }
        }
        ServiceCmd::Ps {
            services,
            format,
            quiet,
            filter,
        } => {
            let nodes = node_names(&mut ctl).await?;
            let mut rows = Vec::new();
            for what in services {
                let s = ctl
                    .get_service(GetRequest { id_or_name: what })
                    .await
                    .map_err(refusal)?
                    .into_inner();
                let mut filters = filter.clone();
                filters.push(format!("service={}", s.id));
                let tasks = super::client::list_tasks(&mut ctl, filters).await?;
                let mut seen = std::collections::HashSet::new();
                for t in tasks {
                    let slot_key = if t.slot > 0 {
                        t.slot.to_string()
                    } else {
                        t.node_id.clone()
                    };
                    let first = seen.insert(slot_key.clone());
                    let name = format!(
                        "{}{}.{}",
                        if first { "" } else { " \\_ " },
                        name_of(&s),
                        slot_key
                    );
                    rows.push((t, name, nodes.clone()));
                }
            }
            let now = chrono::Utc::now().timestamp_millis();
            let cur = |t: &Task| {
                let st = t.status.as_ref();
                let state = st
                    .and_then(|s| TaskState::try_from(s.state).ok())
                    .unwrap_or(TaskState::New)
                    .display();
                format!(
                    "{state} {}",
                    ago((now - st.map(|s| s.timestamp_ms).unwrap_or(now)) / 1000)
                )
            };
            let des = |t: &Task| {
                TaskState::try_from(t.desired_state)
                    .unwrap_or(TaskState::New)
                    .display()
                    .to_string()
            };
            let err = |t: &Task| t.status.as_ref().map(|s| s.err.clone()).unwrap_or_default();
            let img = |t: &Task| {
                t.spec
                    .as_ref()
                    .and_then(|s| s.container.as_ref())
                    .map(|c| c.image.clone())
                    .unwrap_or_default()
            };
            if quiet {
                rows.iter().for_each(|(t, _, _)| println!("{}", t.id));
                return Ok(ExitCode::SUCCESS);
            }
            match format.as_str() {
                "table" => table(
                    &[
                        "ID",
                        "NAME",
                        "IMAGE",
                        "NODE",
                        "DESIRED STATE",
                        "CURRENT STATE",
                        "ERROR",
                        "PORTS",
                    ],
                    &rows
                        .iter()
                        .map(|(t, n, nodes)| {
                            vec![
                                t.id[..12.min(t.id.len())].to_string(),
                                n.clone(),
                                img(t),
                                nodes.get(&t.node_id).cloned().unwrap_or_default(),
                                des(t),
                                cur(t),
                                err(t),
                                String::new(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
                "json" | "{{json .}}" => {
                    for (t, n, nodes) in &rows {
                        println!(
                            "{}",
                            json!({"ID": t.id[..12.min(t.id.len())], "Name": n.trim_start_matches(" \\_ "), "Image": img(t), "Node": nodes.get(&t.node_id).cloned().unwrap_or_default(), "DesiredState": des(t), "CurrentState": cur(t), "Error": err(t), "Ports": ""})
                        );
                    }
                }
                other => bail!("--format {other:?} is not supported: use table or json"),
            }
        }
        ServiceCmd::Inspect { services, format } => {
            let mut out = Vec::new();
            for what in services {
                let s = ctl
                    .get_service(GetRequest { id_or_name: what })
                    .await
                    .map_err(refusal)?
                    .into_inner();
                out.push(inspect_json(&s));
            }
            match format.as_deref() {
                None => println!("{}", serde_json::to_string_pretty(&out)?),
                Some("json") | Some("{{json .}}") => out.iter().for_each(|o| println!("{o}")),
                Some(f) => bail!("--format {f:?} is not supported: use json"),
            }
        }
        ServiceCmd::Logs {
            service,
            follow,
            tail,
            timestamps,
        } => {
            let tail = match tail.as_str() {
                "all" => 0,
                n => n
                    .parse::<u64>()
                    .map_err(|_| anyhow!("--tail {n:?}: a number or \"all\""))?,
            };
            let tasks: HashMap<String, Task> = super::client::list_tasks(&mut ctl, vec![])
                .await?
                .into_iter()
                .map(|t| (t.id.clone(), t))
                .collect();
            let nodes = node_names(&mut ctl).await?;
            let mut stream = ctl
                .service_logs(ServiceLogsRequest {
                    service_or_task: service,
                    follow,
                    tail,
                    timestamps,
                })
                .await
                .map_err(refusal)?
                .into_inner();
            let mut out = std::io::stdout();
            while let Some(m) = stream.message().await.map_err(refusal)? {
                let t = tasks.get(&m.task_id);
                let name = t
                    .and_then(|t| t.annotations.as_ref())
                    .map(|a| a.name.clone())
                    .unwrap_or_else(|| m.task_id.clone());
                let prefix = format!(
                    "{}@{}",
                    name,
                    nodes.get(&m.node_id).cloned().unwrap_or_default()
                );
                let ts = if timestamps {
                    format!(
                        "{} ",
                        chrono::DateTime::from_timestamp_millis(m.time_ms)
                            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                            .unwrap_or_default()
                    )
                } else {
                    String::new()
                };
                let line = format!("{prefix}    | {ts}{}", String::from_utf8_lossy(&m.data));
                if m.stream == "stderr" {
                    eprint!("{line}");
                } else if out.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
        }
        ServiceCmd::Scale { scales, detach } => {
            let mut ids = Vec::new();
            for sc in &scales {
                let (name, n) = sc
                    .split_once('=')
                    .ok_or_else(|| anyhow!("{sc:?}: use SERVICE=REPLICAS"))?;
                let n: u64 = n.parse().map_err(|_| {
                    anyhow!("{sc:?}: invalid replicas value {n:?}: a non-negative integer")
                })?;
                let s = ctl
                    .get_service(GetRequest {
                        id_or_name: name.into(),
                    })
                    .await
                    .map_err(refusal)?
                    .into_inner();
                let mut spec = s.spec.clone().unwrap_or_default();
                match spec.mode.as_mut() {
                    Some(Mode::Replicated(r)) => r.replicas = n,
                    _ => bail!(
                        "scale can only be used with replicated mode: {name} is {}",
                        mode_name(&s)
                    ),
                }
                ctl.update_service(UpdateServiceRequest {
                    id_or_name: s.id.clone(),
                    version: s.meta.map(|m| m.version).unwrap_or(0),
                    spec: Some(spec),
                    rollback: false,
                })
                .await
                .map_err(refusal)?;
                println!("{name} scaled to {n}");
                ids.push(s.id);
            }
            if !detach {
                for id in ids {
                    let code = converge(&mut ctl, &id).await?;
                    if code != ExitCode::SUCCESS {
                        return Ok(code);
                    }
                }
            }
        }
        ServiceCmd::Update(a) => {
            let s = ctl
                .get_service(GetRequest {
                    id_or_name: a.service.clone(),
                })
                .await
                .map_err(refusal)?
                .into_inner();
            let mut spec = s.spec.clone().unwrap_or_default();
            apply_flags(&mut spec, &a.flags)?;
            let networks = if a.network_rm.is_empty() {
                vec![]
            } else {
                super::client::list_networks(&mut ctl).await?
            };
            apply_edits(&mut spec, &a, &networks)?;
            let task = spec.task.get_or_insert_with(TaskSpec::default);
            if let Some(i) = &a.image {
                task.container
                    .get_or_insert_with(ContainerSpec::default)
                    .image = i.clone();
            }
            if let Some(args) = &a.args {
                task.container
                    .get_or_insert_with(ContainerSpec::default)
                    .args = args.split_whitespace().map(String::from).collect();
            }
            if a.force {
                task.force_update += 1;
            }
            if let Some(n) = a.replicas {
                match spec.mode.as_mut() {
                    Some(Mode::Replicated(r)) => r.replicas = n,
                    Some(Mode::ReplicatedJob(j)) => {
                        j.total_completions = n;
                        j.max_concurrent = n;
                    }
                    _ => {
                        bail!("--replicas can only be used with replicated or replicated-job mode")
                    }
                }
            }
            ctl.update_service(UpdateServiceRequest {
                id_or_name: s.id.clone(),
                version: s.meta.map(|m| m.version).unwrap_or(0),
                spec: Some(spec),
                rollback: a.rollback,
            })
            .await
            .map_err(refusal)?;
            println!("{}", a.service);
            if !a.flags.detach {
                return converge(&mut ctl, &s.id).await;
            }
        }
        ServiceCmd::Rm { services } => {
            return Ok(remove_each(services, |r| {
                let mut ctl = ctl.clone();
                async move { ctl.remove_service(r).await.map(|_| ()) }
            })
            .await);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows a service until it converges, as `docker service create` does without -d.
/// Fails with the reason when tasks keep failing or cannot be placed.
async fn converge(
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
        let r = super::client::list_services(ctl).await?;
        let tasks = super::client::list_tasks(ctl, vec![format!("service={id}")]).await?;
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
            println!("verify: Service {} converged", name_of(&s));
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
            eprintln!("service {} cannot converge: task failed: {e}", name_of(&s));
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
                    name_of(&s),
                    t.status.as_ref().map(|x| x.err.clone()).unwrap_or_default()
                );
                return Ok(ExitCode::FAILURE);
            }
            (None, _) => stuck_since = None,
            _ => {}
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("service {} did not converge within 10 minutes", name_of(&s));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

const MOUNT_TYPES: [&str; 3] = ["bind", "volume", "tmpfs"];
const CONDITIONS: [&str; 3] = ["any", "none", "on-failure"];

fn dur_ns(d: &Option<prost_types::Duration>) -> i64 {
    d.as_ref()
        .map(|d| d.seconds * 1_000_000_000 + d.nanos as i64)
        .unwrap_or(0)
}

/// `service inspect` in Docker's shape (the parts shoal has).
/// Docker's `EndpointSpec` shape: `Mode` and `Ports`.
fn endpoint_json(mode: i32, ports: &[PortConfig]) -> serde_json::Value {
    let mode = if mode == endpoint_spec::ResolutionMode::Dnsrr as i32 {
        "dnsrr"
    } else {
        "vip"
    };
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| {
            json!({
                "Protocol": if p.protocol == port_config::Protocol::Udp as i32 { "udp" } else { "tcp" },
                "TargetPort": p.target_port,
                "PublishedPort": p.published_port,
                "PublishMode": if p.publish_mode == port_config::PublishMode::Host as i32 { "host" } else { "ingress" },
            })
        })
        .collect();
    json!({"Mode": mode, "Ports": ports})
}

fn inspect_json(s: &Service) -> serde_json::Value {
    let spec = s.spec.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let c = task.container.clone().unwrap_or_default();
    let r = task.restart.unwrap_or_default();
    let mode = match &spec.mode {
        Some(Mode::Replicated(x)) => json!({"Replicated": {"Replicas": x.replicas}}),
        Some(Mode::Global(_)) => json!({"Global": {}}),
        Some(Mode::ReplicatedJob(x)) => {
            json!({"ReplicatedJob": {"MaxConcurrent": x.max_concurrent, "TotalCompletions": x.total_completions}})
        }
        Some(Mode::GlobalJob(_)) => json!({"GlobalJob": {}}),
        None => json!({}),
    };
    let res = task.resources.unwrap_or_default();
    let delay = if r.delay.is_some() {
        dur_ns(&r.delay)
    } else {
        5_000_000_000
    };
    let rj = |r: &Option<Resources>| {
        r.as_ref()
            .map(|r| json!({"NanoCPUs": r.nano_cpus, "MemoryBytes": r.memory_bytes}))
            .unwrap_or(json!({}))
    };
    json!({
        "ID": s.id,
        "Version": {"Index": s.meta.map(|m| m.version).unwrap_or(0)},
        "CreatedAt": chrono::DateTime::from_timestamp_millis(s.meta.map(|m| m.created_at_ms).unwrap_or(0)).map(|d| d.to_rfc3339()),
        "UpdatedAt": chrono::DateTime::from_timestamp_millis(s.meta.map(|m| m.updated_at_ms).unwrap_or(0)).map(|d| d.to_rfc3339()),
        "Spec": {
            "Name": name_of(s),
            "Labels": spec.annotations.as_ref().map(|a| a.labels.clone()).unwrap_or_default(),
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": c.image, "Labels": c.labels, "Command": c.command, "Args": c.args, "Hostname": c.hostname,
                    "Env": c.env, "Dir": c.dir, "User": c.user, "StopSignal": c.stop_signal, "StopGracePeriod": dur_ns(&c.stop_grace_period),
                    "Mounts": c.mounts.iter().map(|m| json!({"Type": MOUNT_TYPES.get(m.r#type as usize).copied().unwrap_or("volume"), "Source": m.source, "Target": m.target, "ReadOnly": m.read_only})).collect::<Vec<_>>(),
                    "Healthcheck": c.healthcheck.as_ref().map(|h| json!({"Test": h.test, "Interval": dur_ns(&h.interval), "Timeout": dur_ns(&h.timeout), "Retries": h.retries, "StartPeriod": dur_ns(&h.start_period)})),
                },
                "Resources": {"Limits": rj(&res.limits), "Reservations": rj(&res.reservations)},
                "RestartPolicy": {"Condition": CONDITIONS.get(r.condition as usize).copied().unwrap_or("any"), "Delay": delay, "MaxAttempts": r.max_attempts, "Window": dur_ns(&r.window)},
                "Placement": {"Constraints": task.placement.as_ref().map(|p| p.constraints.clone()).unwrap_or_default()},
                "ForceUpdate": task.force_update,
                "Networks": task.networks.iter().map(|n| json!({"Target": n.target, "Aliases": n.aliases})).collect::<Vec<_>>(),
            },
            "Mode": mode,
            "EndpointSpec": endpoint_json(spec.endpoint.as_ref().map(|e| e.mode).unwrap_or(0), spec.endpoint.as_ref().map(|e| &e.ports[..]).unwrap_or(&[])),
        },
        "Endpoint": s.endpoint.as_ref().map(|e| {
            let mut j = endpoint_json(e.spec.as_ref().map(|x| x.mode).unwrap_or(0), &e.ports);
            j["VirtualIPs"] = e.virtual_ips.iter().map(|v| json!({"NetworkID": v.network_id, "Addr": v.addr})).collect();
            j
        }),
        "PreviousSpec": s.previous_spec.as_ref().map(|p| json!({"Name": p.annotations.as_ref().map(|a| a.name.clone())})),
    })
}
