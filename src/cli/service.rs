//! `shoal service …`, with Docker's verbs, flags and output. The flags become a
//! `ServiceInput` or a `ServiceEdit` (`crate::spec`), checked by the one validation; this
//! file keeps clap and printing.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use shoal_proto::*;

use super::client::{self, control, refusal, Ctl};
use super::flags::{bad_value, EditFlags, RegistryFlags, SpecFlags};
use super::output::{self, Item, ListFlags, Listing};
use super::progress::{converge, follow_update};
use super::util::remove_each;
use super::words::{self, Words};
use super::Globals;
use crate::spec::docker::{self, service_name};
use crate::spec::service::scale;
use crate::spec::{validate, ModeKind};

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// Create a service.
    Create(Box<CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        list: ListFlags,
    },
    /// List a service's tasks.
    Ps {
        #[arg(required = true)]
        services: Vec<String>,
        #[command(flatten)]
        list: ListFlags,
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
    /// Roll a service back to its previous spec, or to a revision of its history.
    Rollback {
        service: String,
        /// The revision to go back to (see `service history`).
        #[arg(long)]
        to_revision: Option<u64>,
        #[arg(short, long)]
        detach: bool,
        #[arg(short, long)]
        quiet: bool,
    },
    /// A service's last specs: revision, when, what changed, and whether it was a
    /// rollback.
    History {
        service: String,
        #[command(flatten)]
        list: ListFlags,
    },
    /// Remove services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
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
    #[command(flatten)]
    registry: RegistryFlags,
    /// A secret's file in /run/secrets: NAME or
    /// source=NAME[,target=FILE][,uid=][,gid=][,mode=]
    #[arg(long)]
    secret: Vec<String>,
    /// A config's file: NAME or source=NAME[,target=PATH][,uid=][,gid=][,mode=]
    #[arg(long)]
    config: Vec<String>,
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
    /// Replace the tasks even if nothing changed (and run a job again).
    #[arg(long)]
    force: bool,
    /// Roll back to the previous spec (as `service rollback`; no other flag with it).
    #[arg(long)]
    rollback: bool,
    #[arg(long)]
    args: Option<String>,
    #[command(flatten)]
    edits: EditFlags,
    #[command(flatten)]
    flags: SpecFlags,
    #[command(flatten)]
    registry: RegistryFlags,
    service: String,
}

/// Node IDs to hostnames, for the NODE column and log prefixes.
async fn node_names(ctl: &mut Ctl) -> anyhow::Result<HashMap<String, String>> {
    let nodes = client::list_nodes(ctl).await?;
    Ok(nodes
        .iter()
        .map(|n| (n.id.clone(), docker::hostname(n).to_string()))
        .collect())
}

async fn get(ctl: &mut Ctl, what: &str) -> anyhow::Result<Service> {
    Ok(ctl
        .get_service(GetRequest {
            id_or_name: what.into(),
        })
        .await
        .map_err(refusal)?
        .into_inner())
}

/// Sends a changed spec, checked here first (the managers check it again).
async fn send_update(ctl: &mut Ctl, s: &Service, spec: ServiceSpec) -> anyhow::Result<Service> {
    send_update_with(ctl, s, spec, UpdateServiceRequest::default()).await
}

/// The same, with the request's other fields (`--no-resolve-image`, credentials) from
/// `with`; the managers' warnings go to stderr, as docker's do.
async fn send_update_with(
    ctl: &mut Ctl,
    s: &Service,
    spec: ServiceSpec,
    with: UpdateServiceRequest,
) -> anyhow::Result<Service> {
    validate::service(&spec).map_err(|e| Words::Service.say(&e))?;
    let after = ctl
        .update_service(UpdateServiceRequest {
            id_or_name: s.id.clone(),
            version: s.meta.map(|m| m.version).unwrap_or(0),
            spec: Some(spec),
            ..with
        })
        .await
        .map_err(|e| words::refusal(e, Words::Service))?
        .into_inner();
    after.warnings.iter().for_each(|w| eprintln!("{w}"));
    Ok(after)
}

/// Asks for a rollback, to the previous spec or to `to_revision`.
async fn send_rollback(ctl: &mut Ctl, s: &Service, to_revision: Option<u64>) -> anyhow::Result<()> {
    ctl.update_service(UpdateServiceRequest {
        id_or_name: s.id.clone(),
        version: s.meta.map(|m| m.version).unwrap_or(0),
        rollback: true,
        to_revision: to_revision.unwrap_or(0),
        ..Default::default()
    })
    .await
    .map_err(|e| words::refusal(e, Words::Service))?;
    Ok(())
}

/// Whether following a change of `before` into `after` is following an update: its
/// tasks are to be replaced, or an update is under way (else the change is followed
/// until the service converges).
fn rolls_out(before: &Service, after: &Service) -> bool {
    use update_status::State;
    if crate::spec::service::is_job(after.mode()) {
        return false; // a job runs again, all at once
    }
    before.spec_version != after.spec_version
        // a paused update resumed
        || before.update_state().is_some_and(State::is_paused)
        || after.update_state().is_some_and(State::is_rolling)
}

pub async fn run(g: &Globals, c: ServiceCmd) -> anyhow::Result<ExitCode> {
    let mut ctl = control(g).await?;
    match c {
        ServiceCmd::Create(a) => return create(g, &mut ctl, *a).await,
        ServiceCmd::Update(a) => return update(g, &mut ctl, *a).await,
        ServiceCmd::Ls { list } => ls(&mut ctl, &list).await?,
        ServiceCmd::Ps {
            services,
            list,
            filter,
        } => ps(&mut ctl, services, &list, filter).await?,
        ServiceCmd::Inspect { services, format } => {
            let mut out = Vec::new();
            for what in services {
                let s = get(&mut ctl, &what).await?;
                let mut j = docker::service(&s);
                let uses_files = s
                    .spec
                    .as_ref()
                    .and_then(|x| x.task.as_ref())
                    .and_then(|t| t.container.as_ref())
                    .is_some_and(|c| !c.secrets.is_empty() || !c.configs.is_empty());
                if uses_files {
                    let tasks =
                        client::list_tasks(&mut ctl, vec![format!("service={}", s.id)]).await?;
                    j["TaskFiles"] = docker::task_files(&tasks);
                }
                out.push(j);
            }
            match format.as_deref() {
                None => println!("{}", serde_json::to_string_pretty(&out)?),
                Some("json") | Some("{{json .}}") => out.iter().for_each(|o| println!("{o}")),
                Some(f) => anyhow::bail!("--format {f:?} is not supported: use json"),
            }
        }
        ServiceCmd::Logs {
            service,
            follow,
            tail,
            timestamps,
        } => logs(&mut ctl, service, follow, &tail, timestamps).await?,
        ServiceCmd::Scale { scales, detach } => {
            let mut ids = Vec::new();
            for sc in &scales {
                let (name, n) = sc
                    .split_once('=')
                    .ok_or_else(|| anyhow!("{sc:?}: use SERVICE=REPLICAS"))?;
                let n: u64 = n.parse().map_err(|_| {
                    anyhow!("{sc:?}: invalid replicas value {n:?}: a non-negative integer")
                })?;
                let s = get(&mut ctl, name).await?;
                let mut spec = s.spec.clone().unwrap_or_default();
                scale(&mut spec, n).map_err(|e| anyhow!("{name}: {}", e.problem))?;
                send_update(&mut ctl, &s, spec).await?;
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
        ServiceCmd::Rollback {
            service,
            to_revision,
            detach,
            quiet,
        } => {
            let s = get(&mut ctl, &service).await?;
            send_rollback(&mut ctl, &s, to_revision).await?;
            if !quiet {
                println!("{service}");
            }
            if !detach {
                if crate::spec::service::is_job(s.mode()) {
                    return converge(&mut ctl, &s.id).await; // it runs again
                }
                return follow_update(&mut ctl, &s.id, true).await;
            }
        }
        ServiceCmd::History { service, list } => history(&mut ctl, &service, &list).await?,
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

async fn create(g: &Globals, ctl: &mut Ctl, a: CreateArgs) -> anyhow::Result<ExitCode> {
    let mut input = a.flags.input()?;
    input.name = a.name.clone();
    input.mode = Some(ModeKind::parse(&a.mode).map_err(|e| bad_value("--mode", &a.mode, e))?);
    input.replicas = a.replicas;
    input.image = Some(a.image.clone());
    let refs = |flag: &str, v: &[String]| -> anyhow::Result<Option<Vec<FileReference>>> {
        if v.is_empty() {
            return Ok(None);
        }
        let parsed = v
            .iter()
            .map(|x| crate::spec::files::parse_reference(x).map_err(|e| bad_value(flag, x, e)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(parsed))
    };
    input.secrets = refs("--secret", &a.secret)?;
    input.configs = refs("--config", &a.config)?;
    input.args = Some(a.command.clone());
    let spec = input.into_spec().map_err(|e| Words::Service.say(&e))?;
    validate::service(&spec).map_err(|e| Words::Service.say(&e))?;
    let s = ctl
        .create_service(CreateServiceRequest {
            spec: Some(spec),
            no_resolve_image: a.registry.no_resolve_image,
            registry_auth: a.registry.auth(g, &a.image).await?,
        })
        .await
        .map_err(|e| words::refusal(e, Words::Service))?
        .into_inner();
    s.warnings.iter().for_each(|w| eprintln!("{w}"));
    println!("{}", s.id);
    if a.flags.container.detach {
        return Ok(ExitCode::SUCCESS);
    }
    converge(ctl, &s.id).await
}

async fn update(g: &Globals, ctl: &mut Ctl, a: UpdateArgs) -> anyhow::Result<ExitCode> {
    let s = get(ctl, &a.service).await?;
    let mut spec = s.spec.clone().unwrap_or_default();
    let mut input = a.flags.input()?;
    input.image.clone_from(&a.image);
    input.args = a
        .args
        .as_ref()
        .map(|x| x.split_whitespace().map(String::from).collect());
    input.replicas = a.replicas;
    input.force = a.force;
    input
        .apply_to(&mut spec)
        .map_err(|e| Words::Service.say(&e))?;
    let networks = if a.edits.network_rm.is_empty() {
        vec![]
    } else {
        client::list_networks(ctl).await?
    };
    a.edits
        .edit(&networks)?
        .apply(&mut spec)
        .map_err(|e| Words::Service.say(&e))?;
    if a.rollback {
        // a rollback restores a whole spec: a flag beside it would be lost
        if Some(&spec) != s.spec.as_ref()
            || a.force
            || a.registry.no_resolve_image
            || a.registry.with_registry_auth
        {
            anyhow::bail!(
                "--rollback cannot be combined with other flags: it restores the previous spec whole (use `shoal service rollback {}`, then update)",
                a.service
            );
        }
        send_rollback(ctl, &s, None).await?;
        println!("{}", a.service);
        if a.flags.container.detach {
            return Ok(ExitCode::SUCCESS);
        }
        if crate::spec::service::is_job(s.mode()) {
            return converge(ctl, &s.id).await; // it runs again
        }
        return follow_update(ctl, &s.id, true).await;
    }
    let image = crate::spec::docker::service_image(&s).to_string();
    let with = UpdateServiceRequest {
        no_resolve_image: a.registry.no_resolve_image,
        registry_auth: a
            .registry
            .auth(g, a.image.as_deref().unwrap_or(&image))
            .await?,
        ..Default::default()
    };
    let after = send_update_with(ctl, &s, spec, with).await?;
    println!("{}", a.service);
    if a.flags.container.detach {
        return Ok(ExitCode::SUCCESS);
    }
    if rolls_out(&s, &after) {
        follow_update(ctl, &s.id, false).await
    } else {
        converge(ctl, &s.id).await
    }
}

/// `service history`: the revisions kept, oldest first, the current one marked.
async fn history(ctl: &mut Ctl, what: &str, list: &ListFlags) -> anyhow::Result<()> {
    let s = get(ctl, what).await?;
    let items = s
        .history
        .iter()
        .map(|r| {
            let change: Vec<String> = r
                .change
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| words::field_flag(Words::Service, c))
                .collect();
            let mut note = String::new();
            if r.rollback_of > 0 {
                note = format!("rollback to {}", r.rollback_of);
            }
            let created = chrono::DateTime::from_timestamp_millis(r.at_ms)
                .map(|d| d.to_rfc3339())
                .unwrap_or_default();
            let json = serde_json::json!({
                "Revision": r.revision,
                "Current": if r.revision == s.revision { "*" } else { "" },
                "CreatedAt": created,
                "Image": r.spec.as_ref().and_then(|x| x.task.as_ref()).and_then(|t| t.container.as_ref()).map(|c| c.image.clone()).unwrap_or_default(),
                "Changes": if r.revision == 1 && r.parent == 0 && r.rollback_of == 0 { "created".to_string() } else { change.join(" ") },
                "Rollback": note,
            });
            Item::of(
                json,
                r.revision.to_string(),
                &["Revision", "Current", "CreatedAt", "Image", "Changes", "Rollback"],
            )
        })
        .collect();
    output::print(
        list,
        Listing {
            header: &[
                "REVISION", "CURRENT", "CREATED", "IMAGE", "CHANGES", "ROLLBACK",
            ],
            items,
        },
    )
}

async fn ls(ctl: &mut Ctl, list: &ListFlags) -> anyhow::Result<()> {
    let r = client::list_services(ctl).await?;
    let mut services = r.services.clone();
    services.sort_by(|a, b| service_name(a).cmp(service_name(b)));
    let count = |m: &HashMap<String, u64>, s: &Service| m.get(&s.id).copied().unwrap_or(0);
    let items = services
        .iter()
        .map(|s| {
            let json = docker::service_summary(s, count(&r.running, s), count(&r.desired, s));
            let mut item = Item::of(
                json,
                &s.id,
                &["ID", "Name", "Mode", "Replicas", "Image", "Ports"],
            );
            // an update under way, beside the counts: "2/3 (updating)"
            if let Some(u) = item.json["Update"].as_str().filter(|u| !u.is_empty()) {
                item.row[3] = format!("{} ({u})", item.row[3]);
            }
            item
        })
        .collect();
    output::print(
        list,
        Listing {
            header: &["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
            items,
        },
    )
}

async fn ps(
    ctl: &mut Ctl,
    services: Vec<String>,
    list: &ListFlags,
    filter: Vec<String>,
) -> anyhow::Result<()> {
    let nodes = node_names(ctl).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut items = Vec::new();
    for what in services {
        let s = get(ctl, &what).await?;
        let mut filters = filter.clone();
        filters.push(format!("service={}", s.id));
        let tasks = client::list_tasks(ctl, filters).await?;
        let mut seen = HashSet::new();
        for t in tasks {
            let slot = if t.slot > 0 {
                t.slot.to_string()
            } else {
                t.node_id.clone()
            };
            // a slot's earlier tasks under its current one, as Docker shows them
            let first = seen.insert(slot.clone());
            let name = format!("{}.{slot}", service_name(&s));
            let node = nodes.get(&t.node_id).map_or("", String::as_str);
            let json = docker::task_summary(&t, &name, node, now);
            let mut item = Item::of(
                json,
                &t.id,
                &[
                    "ID",
                    "Name",
                    "Image",
                    "Node",
                    "DesiredState",
                    "CurrentState",
                    "Error",
                    "Ports",
                ],
            );
            if !first {
                item.row[1] = format!(" \\_ {name}");
            }
            items.push(item);
        }
    }
    let header = &[
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ];
    output::print(list, Listing { header, items })
}

async fn logs(
    ctl: &mut Ctl,
    service: String,
    follow: bool,
    tail: &str,
    timestamps: bool,
) -> anyhow::Result<()> {
    let tail = match tail {
        "all" => 0,
        n => n
            .parse::<u64>()
            .map_err(|_| anyhow!("--tail {n:?}: a number or \"all\""))?,
    };
    let tasks: HashMap<String, Task> = client::list_tasks(ctl, vec![])
        .await?
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    let nodes = node_names(ctl).await?;
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
        let name = tasks
            .get(&m.task_id)
            .and_then(|t| t.annotations.as_ref())
            .map_or(m.task_id.as_str(), |a| a.name.as_str());
        let node = nodes.get(&m.node_id).map_or("", String::as_str);
        let ts = if timestamps {
            let t = chrono::DateTime::from_timestamp_millis(m.time_ms)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                .unwrap_or_default();
            format!("{t} ")
        } else {
            String::new()
        };
        let line = format!(
            "{name}@{node}    | {ts}{}",
            String::from_utf8_lossy(&m.data)
        );
        if m.stream == "stderr" {
            eprint!("{line}");
        } else if out.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    Ok(())
}
