//! Docker-shaped JSON views of services, tasks, nodes and networks, with Docker's field
//! names: what `inspect` prints, and the objects the list commands print one per line
//! (and fill `--format` templates from).

use serde_json::{json, Value};
use shoal_proto::service_spec::Mode;
use shoal_proto::*;

use super::service::{is_job, mode_name};
use super::units::nanos;

pub fn service_name(s: &Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|x| x.annotations.as_ref())
        .map(|a| a.name.as_str())
        .unwrap_or("")
}

pub fn service_image(s: &Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|x| x.task.as_ref())
        .and_then(|t| t.container.as_ref())
        .map(|c| c.image.as_str())
        .unwrap_or("")
}

/// The first 12 characters of an ID, as Docker's lists show it.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub fn time(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339())
}

const MOUNT_TYPES: [&str; 3] = ["bind", "volume", "tmpfs"];
const CONDITIONS: [&str; 3] = ["any", "none", "on-failure"];

/// Docker's `EndpointSpec` shape: `Mode` and `Ports`.
fn endpoint(mode: i32, ports: &[PortConfig]) -> Value {
    let mode = if mode == endpoint_spec::ResolutionMode::Dnsrr as i32 {
        "dnsrr"
    } else {
        "vip"
    };
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            json!({
                "Protocol": super::parse::protocol_name(p.protocol),
                "TargetPort": p.target_port,
                "PublishedPort": p.published_port,
                "PublishMode": if p.publish_mode == port_config::PublishMode::Host as i32 { "host" } else { "ingress" },
            })
        })
        .collect();
    json!({"Mode": mode, "Ports": ports})
}

/// Docker's `UpdateConfig` / `RollbackConfig` shape, with Swarm's defaults for what is
/// unset (as `docker service inspect` shows them).
fn update_config(c: Option<&UpdateConfig>) -> Value {
    let u = super::update::update_config(c);
    json!({
        "Parallelism": u.parallelism,
        "Delay": u.delay.as_nanos() as i64,
        "FailureAction": super::update::failure_action_name(u.failure_action as i32),
        "Monitor": u.monitor.as_nanos() as i64,
        "MaxFailureRatio": u.max_failure_ratio,
        "Order": super::update::order_name(u.order as i32),
    })
}

/// Docker's `UpdateStatus`: its state's name, when it started and ended, and why.
fn update_status(u: &UpdateStatus) -> Value {
    use update_status::State;
    let state = match State::try_from(u.state) {
        Ok(State::Updating) => "updating",
        Ok(State::Paused) => "paused",
        Ok(State::Completed) => "completed",
        Ok(State::RollbackStarted) => "rollback_started",
        Ok(State::RollbackPaused) => "rollback_paused",
        Ok(State::RollbackCompleted) => "rollback_completed",
        _ => "",
    };
    let mut j = json!({"State": state, "StartedAt": time(u.started_at_ms), "Message": u.message});
    if u.completed_at_ms > 0 {
        j["CompletedAt"] = json!(time(u.completed_at_ms));
    }
    j
}

/// A service spec in Docker's shape (`Spec`, and `PreviousSpec`).
fn service_spec(spec: &ServiceSpec) -> Value {
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
        nanos(&r.delay)
    } else {
        super::service::DEFAULT_RESTART_DELAY.as_nanos() as i64
    };
    let rj = |r: &Option<Resources>| {
        r.as_ref()
            .map(|r| json!({"NanoCPUs": r.nano_cpus, "MemoryBytes": r.memory_bytes}))
            .unwrap_or(json!({}))
    };
    let mut j = json!({
        "Name": spec.annotations.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
        "Labels": spec.annotations.as_ref().map(|a| a.labels.clone()).unwrap_or_default(),
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": c.image, "Labels": c.labels, "Command": c.command, "Args": c.args, "Hostname": c.hostname,
                "Env": c.env, "Dir": c.dir, "User": c.user, "StopSignal": c.stop_signal, "StopGracePeriod": nanos(&c.stop_grace_period),
                "Mounts": c.mounts.iter().map(|m| json!({"Type": MOUNT_TYPES.get(m.r#type as usize).copied().unwrap_or("volume"), "Source": m.source, "Target": m.target, "ReadOnly": m.read_only})).collect::<Vec<_>>(),
                "Healthcheck": c.healthcheck.as_ref().map(|h| json!({"Test": h.test, "Interval": nanos(&h.interval), "Timeout": nanos(&h.timeout), "Retries": h.retries, "StartPeriod": nanos(&h.start_period), "StartInterval": nanos(&h.start_interval)})),
                "Secrets": c.secrets.iter().map(|r| file_reference(r, "Secret")).collect::<Vec<_>>(),
                "Configs": c.configs.iter().map(|r| file_reference(r, "Config")).collect::<Vec<_>>(),
            },
            "Resources": {"Limits": rj(&res.limits), "Reservations": rj(&res.reservations)},
            "RestartPolicy": {"Condition": CONDITIONS.get(r.condition as usize).copied().unwrap_or("any"), "Delay": delay, "MaxAttempts": r.max_attempts, "Window": nanos(&r.window)},
            "Placement": {"Constraints": task.placement.as_ref().map(|p| p.constraints.clone()).unwrap_or_default()},
            "ForceUpdate": task.force_update,
            "Networks": task.networks.iter().map(|n| json!({"Target": n.target, "Aliases": n.aliases})).collect::<Vec<_>>(),
        },
        "Mode": mode,
        "EndpointSpec": endpoint(spec.endpoint.as_ref().map(|e| e.mode).unwrap_or(0), spec.endpoint.as_ref().map(|e| &e.ports[..]).unwrap_or(&[])),
    });
    if !is_job(spec.mode.as_ref()) {
        j["UpdateConfig"] = update_config(spec.update.as_ref());
        j["RollbackConfig"] = update_config(spec.rollback.as_ref());
    }
    j
}

/// A secret's or config's reference as Docker shows it (`SecretID`, `SecretName`,
/// `File`), with the version of its data the tasks get (shoal's).
fn file_reference(r: &shoal_proto::FileReference, kind: &str) -> Value {
    let or0 = |s: &str| {
        if s.is_empty() {
            "0".to_string()
        } else {
            s.to_string()
        }
    };
    json!({
        format!("{kind}ID"): r.source_id,
        format!("{kind}Name"): r.source_name,
        "File": {
            "Name": if r.target.is_empty() { &r.source_name } else { &r.target },
            "UID": or0(&r.uid),
            "GID": or0(&r.gid),
            "Mode": if r.mode == 0 { 0o444 } else { r.mode },
        },
        "Version": r.version.max(1),
    })
}

/// Which version of each secret and config the service's tasks that may still run have
/// (shoal's, in `service inspect`: a rotation shows here as it rolls).
pub fn task_files(tasks: &[shoal_proto::Task]) -> Value {
    let mut live: Vec<&shoal_proto::Task> = tasks.iter().filter(|t| t.may_run()).collect();
    live.sort_by(|a, b| (a.slot, &a.node_id, &a.id).cmp(&(b.slot, &b.node_id, &b.id)));
    live.iter()
        .map(|t| {
            let c = t.spec.as_ref().and_then(|s| s.container.as_ref());
            let versions = |refs: &[shoal_proto::FileReference]| {
                refs.iter()
                    .map(|r| (r.source_name.clone(), json!(r.version.max(1))))
                    .collect::<serde_json::Map<_, _>>()
            };
            json!({
                "ID": t.id,
                "Slot": t.slot,
                "NodeID": t.node_id,
                "Secrets": versions(c.map(|c| &c.secrets[..]).unwrap_or_default()),
                "Configs": versions(c.map(|c| &c.configs[..]).unwrap_or_default()),
            })
        })
        .collect()
}

/// `service inspect`, in Docker's shape (the parts shoal has).
pub fn service(s: &Service) -> Value {
    let spec = s.spec.clone().unwrap_or_default();
    let meta = s.meta.unwrap_or_default();
    let mut j = json!({
        "ID": s.id,
        "Version": {"Index": meta.version},
        "CreatedAt": time(meta.created_at_ms),
        "UpdatedAt": time(meta.updated_at_ms),
        "Spec": service_spec(&spec),
        "Endpoint": s.endpoint.as_ref().map(|e| {
            let mut j = endpoint(e.spec.as_ref().map(|x| x.mode).unwrap_or(0), &e.ports);
            j["VirtualIPs"] = e.virtual_ips.iter().map(|v| json!({"NetworkID": v.network_id, "Addr": v.addr})).collect();
            j
        }),
    });
    if let Some(p) = &s.previous_spec {
        j["PreviousSpec"] = service_spec(p);
    }
    if let Some(u) = &s.update_status {
        j["UpdateStatus"] = update_status(u);
    }
    j
}

/// A `service ls` line: `running/desired`, with `(completed)` for a job.
pub fn service_summary(s: &Service, running: u64, desired: u64) -> Value {
    let job = is_job(s.mode());
    use update_status::State;
    // an update under way or stopped half-way, as `service ls` says it beside the counts
    let update = match s.update_state() {
        Some(State::Updating) => "updating",
        Some(State::Paused) => "update paused",
        Some(State::RollbackStarted) => "rolling back",
        Some(State::RollbackPaused) => "rollback paused",
        _ => "",
    };
    let replicas = if job {
        format!("{running}/{desired} (completed)")
    } else {
        format!("{running}/{desired}")
    };
    json!({"ID": short_id(&s.id), "Name": service_name(s), "Mode": mode_name(s.mode()), "Replicas": replicas, "Image": super::image::display(service_image(s)), "Ports": "", "Update": update})
}

/// Docker's "3 seconds ago".
pub fn ago(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=1 => "Less than a second ago".into(),
        2..=59 => format!("{s} seconds ago"),
        60..=119 => "About a minute ago".into(),
        120..=3599 => format!("{} minutes ago", s / 60),
        3600..=7199 => "About an hour ago".into(),
        7200..=172_799 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// A `service ps` line: the task as `name` (`web.1`), on the node `node` (its
/// hostname), at `now_ms`.
pub fn task_summary(t: &Task, name: &str, node: &str, now_ms: i64) -> Value {
    let st = t.status.as_ref();
    let current = format!(
        "{} {}",
        t.observed_state().display(),
        ago((now_ms - st.map(|s| s.timestamp_ms).unwrap_or(now_ms)) / 1000)
    );
    let desired = TaskState::try_from(t.desired_state)
        .unwrap_or(TaskState::New)
        .display();
    let image = t
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| super::image::display(&c.image))
        .unwrap_or("");
    let created = t.meta.as_ref().and_then(|m| time(m.created_at_ms));
    json!({"ID": short_id(&t.id), "Name": name, "Image": image, "Node": node, "DesiredState": desired, "CurrentState": current, "Error": st.map(|s| s.err.as_str()).unwrap_or(""), "Ports": "", "CreatedAt": created})
}

pub fn hostname(n: &Node) -> &str {
    n.description
        .as_ref()
        .map(|d| d.hostname.as_str())
        .unwrap_or("")
}

fn node_state(n: &Node) -> &'static str {
    match n
        .status
        .as_ref()
        .and_then(|s| NodeState::try_from(s.state).ok())
        .unwrap_or(NodeState::Unknown)
    {
        NodeState::Ready => "Ready",
        NodeState::Down => "Down",
        NodeState::Disconnected => "Disconnected",
        NodeState::Unknown => "Unknown",
    }
}

fn availability(n: &Node) -> &'static str {
    match n
        .spec
        .as_ref()
        .and_then(|s| NodeAvailability::try_from(s.availability).ok())
        .unwrap_or(NodeAvailability::Active)
    {
        NodeAvailability::Active => "Active",
        NodeAvailability::Pause => "Pause",
        NodeAvailability::Drain => "Drain",
    }
}

fn manager_status(n: &Node) -> &'static str {
    match &n.manager_status {
        Some(m) if m.leader => "Leader",
        Some(m) if m.reachability == Reachability::Unreachable as i32 => "Unreachable",
        Some(_) => "Reachable",
        None => "",
    }
}

/// A `node ls` line; `me` is the node the command runs on.
pub fn node_summary(n: &Node, me: &str) -> Value {
    let engine = n
        .description
        .as_ref()
        .and_then(|d| d.engine.as_ref())
        .map(|e| e.engine_version.as_str())
        .unwrap_or("");
    json!({"ID": n.id, "Self": n.id == me, "Hostname": hostname(n), "Status": node_state(n), "Availability": availability(n), "ManagerStatus": manager_status(n), "EngineVersion": engine})
}

/// `node inspect`, in Docker's shape.
pub fn node(n: &Node) -> Value {
    let d = n.description.as_ref();
    json!({
        "ID": n.id,
        "Version": {"Index": n.meta.map(|m| m.version).unwrap_or(0)},
        "Spec": {"Role": if n.role == NodeRole::Manager as i32 { "manager" } else { "worker" }, "Availability": availability(n).to_lowercase(),
                  "Labels": n.spec.as_ref().and_then(|s| s.annotations.as_ref()).map(|a| a.labels.clone()).unwrap_or_default()},
        "Description": {"Hostname": hostname(n),
                        "Platform": d.and_then(|d| d.platform.as_ref()).map(|p| json!({"Architecture": p.architecture, "OS": p.os})),
                        "Resources": d.and_then(|d| d.resources.as_ref()).map(|r| json!({"NanoCPUs": r.nano_cpus, "MemoryBytes": r.memory_bytes}))},
        "Status": {"State": node_state(n).to_lowercase(), "Addr": n.status.as_ref().map(|s| s.addr.clone()).unwrap_or_default()},
        "ManagerStatus": n.manager_status.as_ref().map(|m| json!({"Leader": m.leader, "Reachability": "reachable", "Addr": m.addr})),
    })
}

pub fn network_name(n: &Network) -> &str {
    n.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map(|a| a.name.as_str())
        .unwrap_or("")
}

/// A `network ls` line.
pub fn network_summary(n: &Network) -> Value {
    let driver = n.spec.as_ref().map(|s| s.driver.as_str()).unwrap_or("");
    json!({"ID": short_id(&n.id), "Name": network_name(n), "Driver": driver, "Scope": "swarm"})
}

/// `network inspect`, in Docker's shape.
pub fn network(n: &Network) -> Value {
    let spec = n.spec.clone().unwrap_or_default();
    let labels = spec
        .annotations
        .as_ref()
        .map(|a| a.labels.clone())
        .unwrap_or_default();
    json!({
        "Name": network_name(n),
        "Id": n.id,
        "Created": n.meta.as_ref().map(|m| m.created_at_ms).unwrap_or(0),
        "Scope": "swarm",
        "Driver": spec.driver,
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Config": n.ipam.iter().map(|c| {
                let mut m = serde_json::Map::new();
                m.insert("Subnet".into(), json!(c.subnet));
                if !c.range.is_empty() {
                    m.insert("IPRange".into(), json!(c.range));
                }
                m.insert("Gateway".into(), json!(c.gateway));
                Value::Object(m)
            }).collect::<Vec<_>>(),
        },
        "Internal": spec.internal,
        "Attachable": spec.attachable,
        "Ingress": spec.ingress,
        "Options": {"com.docker.network.driver.overlay.vxlanid_list": n.vni.to_string()},
        "Labels": labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_in_dockers_shape() {
        let s = Service {
            id: "0123456789abcdef".into(),
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: "web".into(),
                    ..Default::default()
                }),
                mode: Some(Mode::ReplicatedJob(ReplicatedJob {
                    max_concurrent: 2,
                    total_completions: 4,
                })),
                task: Some(TaskSpec {
                    container: Some(ContainerSpec {
                        image: "busybox".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                endpoint: Some(EndpointSpec {
                    mode: endpoint_spec::ResolutionMode::Dnsrr as i32,
                    ports: vec![PortConfig {
                        target_port: 80,
                        published_port: 8080,
                        protocol: port_config::Protocol::Udp as i32,
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = service(&s);
        assert_eq!(v["Spec"]["Name"], "web");
        assert_eq!(v["Spec"]["Mode"]["ReplicatedJob"]["TotalCompletions"], 4);
        assert_eq!(
            v["Spec"]["TaskTemplate"]["RestartPolicy"]["Delay"],
            5_000_000_000i64
        );
        assert_eq!(v["Spec"]["EndpointSpec"]["Mode"], "dnsrr");
        assert_eq!(v["Spec"]["EndpointSpec"]["Ports"][0]["Protocol"], "udp");
        let l = service_summary(&s, 1, 4);
        assert_eq!(l["ID"], "0123456789ab");
        assert_eq!(l["Replicas"], "1/4 (completed)");
        assert_eq!(l["Mode"], "replicated job");
    }

    #[test]
    fn tasks_nodes_and_networks() {
        let t = Task {
            id: "t".repeat(20),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: TaskState::Running as i32,
                timestamp_ms: 1_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = task_summary(&t, "web.1", "edge-1", 4_000);
        assert_eq!(v["CurrentState"], "Running 3 seconds ago");
        assert_eq!(
            (v["DesiredState"].as_str(), v["Node"].as_str()),
            (Some("Running"), Some("edge-1"))
        );
        let n = Node {
            id: "n1".into(),
            manager_status: Some(ManagerStatus {
                leader: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = node_summary(&n, "n1");
        assert_eq!(
            (v["Self"].as_bool(), v["ManagerStatus"].as_str()),
            (Some(true), Some("Leader"))
        );
        assert_eq!(node(&n)["Spec"]["Role"], "worker");
        let net = Network {
            id: "abcdefabcdefabcdef".into(),
            vni: 4097,
            ..Default::default()
        };
        assert_eq!(
            network(&net)["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
            "4097"
        );
        assert_eq!(network_summary(&net)["ID"], "abcdefabcdef");
        assert_eq!(ago(90), "About a minute ago");
        assert_eq!(ago(7300), "2 hours ago");
    }
}
