//! The one validation of what the managers are asked to keep: services, networks, node
//! specs and the cluster's settings. The managers run it before anything is committed;
//! a front end may run it early. It reports every problem it finds, each naming its
//! field; what only the store can tell (a network that does not exist, a port another
//! service publishes) the managers check against it, naming fields the same way.

use shoal_proto::*;

use super::field::{Field, SpecError, SpecErrors};
use super::limits;
use super::placement::{parse_constraint, parse_preference};

/// Names of services and networks: up to 63 of `[a-zA-Z0-9-_]`, starting with a letter
/// or digit.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn name_of(a: &Option<Annotations>) -> &str {
    a.as_ref().map(|a| a.name.as_str()).unwrap_or("")
}

/// A service spec, as `docker service create` would check it, and more: everything a
/// node would refuse is refused here, so that a task never fails and retries forever on
/// a value only a node refuses.
pub fn service(spec: &ServiceSpec) -> Result<(), SpecErrors> {
    let mut errs = SpecErrors::default();
    let name = name_of(&spec.annotations);
    if !valid_name(name) {
        errs.at(
            Field::new("annotations.name"),
            format!("{name:?} is not a valid service name: use up to 63 of [a-zA-Z0-9-_], starting with a letter or digit"),
        );
    }
    if let Some(a) = &spec.annotations {
        labels(&mut errs, Field::new("annotations.labels"), &a.labels);
    }
    match &spec.task {
        None => errs.at(Field::new("task"), "the service has no task spec"),
        Some(t) => task(&mut errs, t),
    }
    for (what, u) in [("update", &spec.update), ("rollback", &spec.rollback)] {
        if let Some(u) = u {
            let at = Field::new(what);
            duration(&mut errs, at.child("delay"), &u.delay);
            duration(&mut errs, at.child("monitor"), &u.monitor);
            if !(0.0..=1.0).contains(&u.max_failure_ratio) {
                errs.at(
                    at.child("max_failure_ratio"),
                    format!("{}: must be between 0 and 1", u.max_failure_ratio),
                );
            }
            update_config(&mut errs, spec, at, u, what == "rollback");
        }
    }
    if let Some(ep) = &spec.endpoint {
        endpoint(&mut errs, ep);
    }
    if let Err(e) = limits::check_service(spec) {
        errs.push(e);
    }
    if spec.mode.is_none() {
        errs.at(Field::new("mode"), "a service needs a mode");
    }
    errs.into_result()
}

/// What an update (or rollback) config may say: known actions and orders, no rollback
/// of a rollback, none for a job, and no start-first where the new task cannot start
/// beside the old one.
fn update_config(
    errs: &mut SpecErrors,
    spec: &ServiceSpec,
    at: Field,
    u: &UpdateConfig,
    rollback: bool,
) {
    use shoal_proto::port_config::PublishMode;
    use shoal_proto::update_config::{FailureAction, Order};
    if crate::spec::service::is_job(spec.mode.as_ref()) {
        errs.at(
            at,
            "a job has no rolling updates: every update runs it again, all at once",
        );
        return;
    }
    match FailureAction::try_from(u.failure_action) {
        Err(_) => errs.at(
            at.child("failure_action"),
            format!(
                "{} is not a failure action (pause, continue or rollback)",
                u.failure_action
            ),
        ),
        Ok(FailureAction::Rollback) if rollback => errs.at(
            at.child("failure_action"),
            "a rollback is never rolled back: use pause or continue",
        ),
        Ok(_) => {}
    }
    match Order::try_from(u.order) {
        Err(_) => errs.at(
            at.child("order"),
            format!("{} is not an order (stop-first or start-first)", u.order),
        ),
        Ok(Order::StartFirst) => {
            // Swarm's update hangs here for ever (moby#36934): the new task cannot take
            // the node's port while the old one holds it
            let host_port = spec
                .endpoint
                .iter()
                .flat_map(|e| &e.ports)
                .find(|p| p.publish_mode == PublishMode::Host as i32 && p.published_port != 0);
            if let Some(p) = host_port {
                errs.at(
                    at.child("order"),
                    format!(
                        "start-first cannot replace a task that publishes port {} in host mode: the new task cannot bind the port while the old one holds it; use stop-first, or publish the port on the routing mesh (mode=ingress)",
                        p.published_port
                    ),
                );
            }
        }
        Ok(Order::StopFirst) => {}
    }
}

/// Published ports: real port numbers, none twice, a published port in host mode, and
/// none on the routing mesh with DNS round robin (which has no VIP to take them).
fn endpoint(errs: &mut SpecErrors, ep: &EndpointSpec) {
    use shoal_proto::endpoint_spec::ResolutionMode;
    use shoal_proto::port_config::PublishMode;
    let at = Field::new("endpoint.ports");
    let ingress = |p: &PortConfig| p.publish_mode == PublishMode::Ingress as i32;
    if ep.mode == ResolutionMode::Dnsrr as i32 && ep.ports.iter().any(ingress) {
        errs.at(
            Field::new("endpoint.mode"),
            "dnsrr has no VIP, so it cannot publish ports in ingress mode (use mode=host)",
        );
    }
    let mut published = std::collections::BTreeSet::new();
    for (i, p) in ep.ports.iter().enumerate() {
        let proto = super::parse::protocol_name(p.protocol);
        if !ingress(p) && p.published_port == 0 {
            errs.at(
                at.at(i),
                format!("target={}: mode=host needs a published port", p.target_port),
            );
        }
        if p.target_port == 0 || p.target_port > 65535 {
            errs.at(
                at.at(i),
                format!("target port {} is not between 1 and 65535", p.target_port),
            );
        }
        if p.published_port > 65535 {
            errs.at(
                at.at(i),
                format!(
                    "published port {} is not between 1 and 65535",
                    p.published_port
                ),
            );
        }
        if p.published_port != 0 && !published.insert((p.published_port, p.protocol)) {
            errs.at(
                at.at(i),
                format!("port {}/{proto} is published twice", p.published_port),
            );
        }
    }
}

/// What may not change in a service's update: its name and its mode (as in Swarm).
pub fn service_update(old: &ServiceSpec, new: &ServiceSpec) -> Result<(), SpecErrors> {
    let mut errs = SpecErrors::default();
    let (was, is) = (name_of(&old.annotations), name_of(&new.annotations));
    if !was.is_empty() && was != is {
        errs.at(
            Field::new("annotations.name"),
            format!("service {was} cannot be renamed to {is:?} (as in Swarm): create a new service instead"),
        );
    }
    let kind = |s: &ServiceSpec| s.mode.as_ref().map(std::mem::discriminant);
    if kind(old) != kind(new) {
        errs.at(Field::new("mode"), "a service's mode cannot be changed");
    }
    errs.into_result()
}

/// A task spec: its container (what a node would check), its placement, resources and
/// restart policy.
fn task(errs: &mut SpecErrors, t: &TaskSpec) {
    let Some(c) = &t.container else {
        errs.at(
            Field::new("task.container"),
            "the service has no container spec",
        );
        return;
    };
    let image = Field::new("task.container.image");
    if c.image.trim().is_empty() {
        errs.at(image, "an image is required");
    } else if let Err(e) = shoal_runtime::image::reference::ImageRef::parse(&c.image) {
        errs.at(image, e.to_string());
    }
    container(errs, t);
    super::files::references(errs, &c.secrets, &c.configs);
    if let Some(p) = &t.placement {
        let at = Field::new("task.placement");
        for (i, k) in p.constraints.iter().enumerate() {
            if let Err(e) = parse_constraint(k) {
                errs.at(at.child("constraints").at(i), e);
            }
        }
        for (i, pref) in p.preferences.iter().enumerate() {
            if let Err(e) = parse_preference(&format!("spread={}", pref.spread_descriptor)) {
                errs.at(at.child("preferences").at(i), e);
            }
        }
    }
    if let Some(r) = &t.resources {
        for (what, res) in [("limits", &r.limits), ("reservations", &r.reservations)] {
            let at = Field::new("task.resources").child(what);
            if let Some(res) = res {
                if res.memory_bytes < 0 {
                    errs.at(at.child("memory_bytes"), "must not be negative");
                }
                if res.nano_cpus < 0 {
                    errs.at(at.child("nano_cpus"), "must not be negative");
                }
            }
        }
        if let Some(r) = &r.reservations {
            let cpus = r.nano_cpus as f64 / 1e9;
            let max = shoal_runtime::container::spec::MAX_CPUS;
            if cpus > max {
                errs.at(
                    Field::new("task.resources.reservations.nano_cpus"),
                    format!("{cpus}: more CPUs than a host has (at most {max})"),
                );
            }
        }
    }
    if let Some(r) = &t.restart {
        let at = Field::new("task.restart");
        duration(errs, at.child("delay"), &r.delay);
        duration(errs, at.child("window"), &r.window);
    }
}

/// A task's container, as the node will check it (the runtime's own validation, of
/// the container the agent would make of this task), plus what that conversion cannot
/// see: negative durations, bad environment entries by their index, labels.
pub fn container(errs: &mut SpecErrors, t: &TaskSpec) {
    let c = t.container.clone().unwrap_or_default();
    let at = Field::new("task.container");
    let found = errs.0.len();
    for (i, e) in c.env.iter().enumerate() {
        match e.split_once('=') {
            None => errs.at(at.child("env").at(i), format!("{e:?} is not KEY=VALUE")),
            Some(("", _)) => errs.at(at.child("env").at(i), format!("{e:?} has an empty name")),
            Some(_) => {}
        }
    }
    duration(errs, at.child("stop_grace_period"), &c.stop_grace_period);
    if let Some(h) = &c.healthcheck {
        let hc = at.child("healthcheck");
        duration(errs, hc.child("interval"), &h.interval);
        duration(errs, hc.child("timeout"), &h.timeout);
        duration(errs, hc.child("start_period"), &h.start_period);
        duration(errs, hc.child("start_interval"), &h.start_interval);
        if h.retries < 0 {
            errs.at(
                hc.child("retries"),
                format!("{}: must not be negative", h.retries),
            );
        }
    }
    labels(errs, at.child("labels"), &c.labels);
    // each capability on its own, to name the list and the entry
    let caps = shoal_runtime::container::spec::capabilities;
    for (i, cap) in c.cap_add.iter().enumerate() {
        if let Err(e) = caps(std::slice::from_ref(cap), &[]) {
            errs.at(at.child("cap_add").at(i), why(e));
        }
    }
    for (i, cap) in c.cap_drop.iter().enumerate() {
        if let Err(e) = caps(&[], std::slice::from_ref(cap)) {
            errs.at(at.child("cap_drop").at(i), why(e));
        }
    }
    if errs.0.len() > found {
        return; // the runtime's check would say the first of these again
    }
    if let Err(e) = shoal_runtime::container::spec::check(&super::container::of_task_spec(t)) {
        errs.push(match e {
            shoal_runtime::container::spec::SpecError::Invalid { field, why } => {
                SpecError::new(runtime_field(field), why)
            }
            other => SpecError::new(at, other.to_string()),
        });
    }
}

/// What the runtime says is wrong, without its own name for the field.
fn why(e: shoal_runtime::container::spec::SpecError) -> String {
    match e {
        shoal_runtime::container::spec::SpecError::Invalid { why, .. } => why,
        other => other.to_string(),
    }
}

/// The spec's path of a field the runtime names.
fn runtime_field(f: &str) -> Field {
    Field::new(match f {
        "hostname" => "task.container.hostname",
        "command" => "task.container.command",
        "env" => "task.container.env",
        "user" => "task.container.user",
        "workdir" => "task.container.dir",
        "cap_add/cap_drop" => "task.container.cap_add",
        "stop_signal" => "task.container.stop_signal",
        "mounts" => "task.container.mounts",
        "pids_limit" => "task.container.pids_limit",
        "limit_memory" => "task.resources.limits.memory_bytes",
        "limit_cpu" => "task.resources.limits.nano_cpus",
        "healthcheck.test" => "task.container.healthcheck.test",
        "health_interval" => "task.container.healthcheck.interval",
        "health_timeout" => "task.container.healthcheck.timeout",
        "health_start_interval" => "task.container.healthcheck.start_interval",
        _ => "task.container",
    })
}

/// A duration of a spec: not negative (a node would read it as 0).
pub fn duration(errs: &mut SpecErrors, at: Field, d: &Option<prost_types::Duration>) {
    if let Some(d) = d {
        if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
            errs.at(
                at,
                format!("{}s{}ns is not a duration (negative)", d.seconds, d.nanos),
            );
        }
    }
}

/// Labels of any object (see [`limits::check_labels`]).
pub fn labels<'a>(
    errs: &mut SpecErrors,
    at: Field,
    l: impl IntoIterator<Item = (&'a String, &'a String)>,
) {
    if let Err(e) = limits::check_labels(l) {
        errs.at(at, e);
    }
}

/// A network spec as `network create` gives it (the subnet's place among the others is
/// the managers' to check, against the store).
pub fn network(spec: &NetworkSpec) -> Result<(), SpecErrors> {
    let mut errs = SpecErrors::default();
    let name = name_of(&spec.annotations);
    if !valid_name(name) {
        errs.at(
            Field::new("annotations.name"),
            format!("{name:?} is not a valid network name: use up to 63 of [a-zA-Z0-9-_], starting with a letter or digit"),
        );
    }
    if let Some(a) = &spec.annotations {
        labels(&mut errs, Field::new("annotations.labels"), &a.labels);
    }
    if !matches!(spec.driver.as_str(), "" | "overlay") {
        errs.push(
            SpecError::new(
                Field::new("driver"),
                "a swarm has overlay networks only (bridge, host and macvlan networks are one node's, not the swarm's)",
            )
            .value(&spec.driver),
        );
    }
    if spec.ipam.len() > 1 {
        errs.at(
            Field::new("ipam"),
            "one subnet per network (IPv4 only: IPv6 is not supported yet)",
        );
    }
    if let Some(c) = spec.ipam.first() {
        if c.subnet.is_empty() && (!c.range.is_empty() || !c.gateway.is_empty()) {
            errs.at(
                Field::new("ipam[0].subnet"),
                "an IP range and a gateway need a subnet",
            );
        }
    }
    if spec.ingress && (spec.attachable || spec.internal) {
        errs.at(
            Field::new("ingress"),
            "the routing mesh's network cannot be attachable or internal",
        );
    }
    errs.into_result()
}

/// A node's spec as `node update` gives it.
pub fn node(spec: &NodeSpec) -> Result<(), SpecErrors> {
    let mut errs = SpecErrors::default();
    if let Some(a) = &spec.annotations {
        labels(&mut errs, Field::new("annotations.labels"), &a.labels);
    }
    errs.into_result()
}

/// The cluster's settings as `swarm update` gives them (not its CA or tokens). The
/// spec is replaced whole, so one that names no cluster is a client's mistake.
pub fn cluster(spec: &ClusterSpec) -> Result<(), SpecErrors> {
    let mut errs = SpecErrors::default();
    let at_least =
        |errs: &mut SpecErrors, at: &str, d: Option<prost_types::Duration>, min_ms: i64| {
            if let Some(d) = d {
                let ms = d.seconds.saturating_mul(1000) + i64::from(d.nanos) / 1_000_000;
                if ms < min_ms {
                    errs.at(Field::new(at), format!("at least {min_ms} ms"));
                }
            }
        };
    at_least(
        &mut errs,
        "dispatcher.heartbeat_period",
        spec.dispatcher.as_ref().and_then(|d| d.heartbeat_period),
        100,
    );
    at_least(
        &mut errs,
        "ca_config.node_cert_expiry",
        spec.ca_config.as_ref().and_then(|c| c.node_cert_expiry),
        3_600_000,
    );
    if spec
        .orchestration
        .as_ref()
        .is_some_and(|o| o.task_history_retention_limit < 0)
    {
        errs.at(
            Field::new("orchestration.task_history_retention_limit"),
            "must not be negative",
        );
    }
    let history = spec
        .orchestration
        .as_ref()
        .map_or(0, |o| o.service_history_limit);
    if !(0..=limits::MAX_SERVICE_HISTORY).contains(&history) {
        errs.at(
            Field::new("orchestration.service_history_limit"),
            format!(
                "{history}: must be between 1 and {} (0: the default, 10)",
                limits::MAX_SERVICE_HISTORY
            ),
        );
    }
    if spec.annotations.is_none() {
        errs.at(
            Field::new("annotations"),
            "the cluster spec is empty: an update replaces the whole spec, so send the current one (from swarm inspect) with the changes",
        );
    }
    errs.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::service::ServiceInput;
    use shoal_proto::service_spec::Mode;

    fn fields(r: Result<(), SpecErrors>) -> Vec<String> {
        r.err()
            .map(|e| e.0.iter().map(|e| e.field.path().to_string()).collect())
            .unwrap_or_default()
    }

    fn good() -> ServiceSpec {
        ServiceInput {
            name: Some("web".into()),
            image: Some("busybox".into()),
            ..Default::default()
        }
        .into_spec()
        .unwrap()
    }

    fn with(f: impl FnOnce(&mut ServiceSpec)) -> ServiceSpec {
        let mut s = good();
        f(&mut s);
        s
    }

    fn container(s: &mut ServiceSpec) -> &mut ContainerSpec {
        s.task.as_mut().unwrap().container.as_mut().unwrap()
    }

    #[test]
    fn every_problem_is_found_and_names_its_field() {
        assert_eq!(fields(service(&good())), Vec::<String>::new());
        let s = with(|s| {
            s.annotations.as_mut().unwrap().name = "bad name".into();
            container(s).env = vec!["OK=1".into(), "NOEQUALS".into(), "=x".into()];
            container(s).stop_grace_period = Some(prost_types::Duration {
                seconds: -5,
                nanos: 0,
            });
            s.task.as_mut().unwrap().placement = Some(Placement {
                constraints: vec!["node.role==worker".into(), "node.color==red".into()],
                ..Default::default()
            });
            s.update = Some(UpdateConfig {
                max_failure_ratio: 2.0,
                ..Default::default()
            });
            s.mode = None;
        });
        assert_eq!(
            fields(service(&s)),
            [
                "annotations.name",
                "task.container.env[1]",
                "task.container.env[2]",
                "task.container.stop_grace_period",
                "task.placement.constraints[1]",
                "update.max_failure_ratio",
                "mode",
            ]
        );
    }

    #[test]
    fn what_a_node_would_refuse_names_the_specs_field() {
        for (f, field) in [
            (
                (|s: &mut ServiceSpec| container(s).stop_signal = "SIGNOPE".into())
                    as fn(&mut ServiceSpec),
                "task.container.stop_signal",
            ),
            (
                |s| container(s).user = "a:b:c".into(),
                "task.container.user",
            ),
            (
                |s| container(s).dir = "relative".into(),
                "task.container.dir",
            ),
            (
                |s| container(s).cap_add = vec!["FLY".into()],
                "task.container.cap_add[0]",
            ),
            (
                |s| container(s).cap_drop = vec!["NET_RAW".into(), "SWIM".into()],
                "task.container.cap_drop[1]",
            ),
            (
                |s| container(s).image = "Not A Ref".into(),
                "task.container.image",
            ),
            (
                |s| {
                    container(s).mounts = vec![Mount {
                        target: "/proc".into(),
                        ..Default::default()
                    }]
                },
                "task.container.mounts",
            ),
            (
                |s| {
                    s.task.as_mut().unwrap().resources = Some(ResourceRequirements {
                        limits: Some(Resources {
                            memory_bytes: 1024,
                            nano_cpus: 0,
                        }),
                        reservations: Some(Resources {
                            memory_bytes: -1,
                            nano_cpus: 1_000_000_000_000_000,
                        }),
                    })
                },
                "task.resources.reservations.memory_bytes",
            ),
        ] {
            let got = fields(service(&with(f)));
            assert!(got.iter().any(|g| g == field), "{field}: {got:?}");
        }
        let mem = fields(service(&with(|s| {
            s.task.as_mut().unwrap().resources = Some(ResourceRequirements {
                limits: Some(Resources {
                    memory_bytes: 1024,
                    nano_cpus: 0,
                }),
                reservations: None,
            })
        })));
        assert_eq!(mem, ["task.resources.limits.memory_bytes"]);
    }

    #[test]
    fn updates_keep_name_and_mode() {
        let old = good();
        assert!(service_update(&old, &good()).is_ok());
        let renamed = with(|s| s.annotations.as_mut().unwrap().name = "other".into());
        assert_eq!(fields(service_update(&old, &renamed)), ["annotations.name"]);
        let global = with(|s| s.mode = Some(Mode::Global(GlobalService {})));
        assert_eq!(fields(service_update(&old, &global)), ["mode"]);
    }

    #[test]
    fn networks_nodes_and_clusters() {
        let net = |f: fn(&mut NetworkSpec)| {
            let mut n = NetworkSpec {
                annotations: Some(Annotations {
                    name: "front".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            f(&mut n);
            fields(network(&n))
        };
        assert!(net(|_| {}).is_empty());
        assert_eq!(net(|n| n.driver = "bridge".into()), ["driver"]);
        assert_eq!(
            net(|n| n.ipam = vec![IpamConfig::default(), IpamConfig::default()]),
            ["ipam"]
        );
        assert_eq!(
            net(|n| n.ipam = vec![IpamConfig {
                range: "10.0.0.0/25".into(),
                ..Default::default()
            }]),
            ["ipam[0].subnet"]
        );
        assert_eq!(
            net(|n| {
                n.ingress = true;
                n.attachable = true
            }),
            ["ingress"]
        );
        assert_eq!(
            net(|n| n.annotations.as_mut().unwrap().name = "".into()),
            ["annotations.name"]
        );
        let node_spec = NodeSpec {
            annotations: Some(Annotations {
                labels: [("".to_string(), "x".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(fields(node(&node_spec)), ["annotations.labels"]);
        let c = ClusterSpec {
            dispatcher: Some(DispatcherConfig {
                heartbeat_period: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1000,
                }),
            }),
            orchestration: Some(OrchestrationConfig {
                task_history_retention_limit: -1,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            fields(cluster(&c)),
            [
                "dispatcher.heartbeat_period",
                "orchestration.task_history_retention_limit",
                "annotations"
            ]
        );
    }
}
