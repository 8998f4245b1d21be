//! `shoal container …`: containers on this host, run through the runtime and its keeper
//! with no cluster. What the agent does for a task, by hand.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;
use shoal_runtime::container::logs::{follow_logs, read_logs, LogQuery};
use shoal_runtime::container::spec::{ContainerSpec, LogConfig, MountKind, MountSpec};
use shoal_runtime::container::{ContainerRuntime, RuntimeConfig, Status};
use shoal_runtime::image::ImageStore;

use shoal_proto::{AttachContainerRequest, DetachContainerRequest};

use super::flags::{bad, bad_value, cpus, size, ContainerFlags};
use super::output::{self, Item, ListFlags, Listing};
use super::words::Words;
use super::Globals as Cli;
use crate::spec::docker::ago;
use crate::spec::units::{labels, parse_bytes};
use crate::spec::ServiceInput;

#[derive(Subcommand)]
pub enum ContainerCmd {
    /// Create and start a container; without -d, print its output and exit with its code.
    Run(RunArgs),
    /// Create a container without starting it.
    Create(RunArgs),
    /// Start a created container.
    Start { name: String },
    /// List containers.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        list: ListFlags,
    },
    /// Show a container as JSON.
    Inspect { name: String },
    /// Print a container's output.
    Logs {
        name: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        tail: Option<String>,
        #[arg(short, long)]
        timestamps: bool,
        /// Only stdout, or only stderr.
        #[arg(long, value_parser = ["stdout", "stderr"])]
        stream: Option<String>,
    },
    /// Wait for a container to exit and print its exit code.
    Wait { name: String },
    /// Stop a container: its stop signal, then SIGKILL after the grace period.
    Stop {
        name: String,
        /// Seconds to wait before SIGKILL (default: the container's stop grace period).
        #[arg(short, long)]
        time: Option<u64>,
    },
    /// Send a signal to a container's main process.
    Kill {
        name: String,
        #[arg(short, long, default_value = "KILL")]
        signal: String,
    },
    /// Run a command in a running container.
    Exec {
        name: String,
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Remove containers (-f stops running ones first).
    #[command(alias = "remove")]
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args, Clone)]
pub struct RunArgs {
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    container: ContainerFlags,
    #[arg(short, long = "label")]
    label: Vec<String>,
    #[arg(long)]
    read_only: bool,
    #[arg(short, long)]
    memory: Option<String>,
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    pids_limit: Option<i64>,
    /// Seconds.
    #[arg(long)]
    stop_timeout: Option<u64>,
    #[arg(long)]
    cap_add: Vec<String>,
    #[arg(long)]
    cap_drop: Vec<String>,
    /// Rotate the log at this size (e.g. 10m).
    #[arg(long)]
    log_max_size: Option<String>,
    /// Keep this many log files.
    #[arg(long)]
    log_max_file: Option<u32>,
    image: String,
    #[arg(trailing_var_arg = true)]
    command: Vec<String>,
}

/// The container `a` asks for: its flags made into a task spec by `crate::spec`, checked
/// by the one validation, and converted as the agent converts a task's.
fn spec_of(a: &RunArgs) -> anyhow::Result<ContainerSpec> {
    let mut i = ServiceInput::default();
    a.container.fill(&mut i, false)?;
    i.image = Some(a.image.clone());
    i.args = Some(a.command.clone());
    if !a.label.is_empty() {
        i.container_labels = Some(labels(&a.label).map_err(|(l, e)| bad_value("--label", &l, e))?);
    }
    i.read_only = Some(a.read_only);
    i.limit_memory = size("--memory", a.memory.as_deref())?;
    i.limit_cpu = cpus("--cpus", a.cpus)?;
    i.limit_pids = a.pids_limit;
    i.stop_grace_period = a.stop_timeout.map(Duration::from_secs);
    if !a.cap_add.is_empty() {
        i.cap_add = Some(a.cap_add.clone());
    }
    if !a.cap_drop.is_empty() {
        i.cap_drop = Some(a.cap_drop.clone());
    }
    // the attachment's networks are the managers' to check
    i.networks = None;
    let task = i.task_spec().map_err(|e| Words::Container.say(&e))?;
    let mut errs = crate::spec::SpecErrors::default();
    crate::spec::validate::container(&mut errs, &task);
    errs.into_result().map_err(|e| Words::Container.say(&e))?;
    let mut log = LogConfig::default();
    if let Some(s) = &a.log_max_size {
        log.max_size = parse_bytes(s).map_err(|e| bad("--log-max-size", e))?;
    }
    if let Some(n) = a.log_max_file {
        if n == 0 {
            bail!("--log-max-file must be at least 1");
        }
        log.max_files = n;
    }
    Ok(ContainerSpec {
        log,
        ..crate::spec::container::of_task_spec(&task)
    })
}

fn random_id() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    hex(&b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub async fn open_runtime(cli: &Cli) -> anyhow::Result<ContainerRuntime> {
    let data_root = cli.data_root();
    let images = ImageStore::open(&data_root)?;
    let exe = std::env::current_exe().context("finding the shoal binary for the keeper")?;
    let cfg = RuntimeConfig {
        data_root: data_root.clone(),
        cgroup_parent: cli.cgroup_parent(),
        keeper_cmd: vec![
            exe.into(),
            "keeper".into(),
            "--root".into(),
            data_root.join("containers").into(),
        ],
        pull: super::image::pull_options(&data_root, &cli.insecure_registries),
    };
    Ok(ContainerRuntime::open(cfg, images).await?)
}

async fn print_logs(
    rt: &ContainerRuntime,
    name: &str,
    q: &LogQuery,
    follow: bool,
    timestamps: bool,
) -> anyhow::Result<()> {
    let dir = rt.logs_dir(name);
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let mut emit = |e: shoal_runtime::container::logs::LogEntry| {
        let line = e.render(timestamps);
        let ok = match e.stream {
            shoal_runtime::container::logs::Stream::Stdout => {
                out.write_all(line.as_bytes()).and_then(|_| out.flush())
            }
            shoal_runtime::container::logs::Stream::Stderr => err.write_all(line.as_bytes()),
        };
        ok.is_ok()
    };
    if follow {
        let exit_file = rt.dir(name).join("exit.json");
        follow_logs(&dir, q, &|| exit_file.exists(), |e| {
            std::future::ready(emit(e))
        })
        .await?;
    } else {
        for e in read_logs(&dir, q)? {
            emit(e);
        }
    }
    Ok(())
}

pub async fn run(cli: &Cli, cmd: ContainerCmd) -> anyhow::Result<ExitCode> {
    let rt = open_runtime(cli).await?;
    match cmd {
        ContainerCmd::Run(a) => {
            let id = create(cli, &rt, &a).await?;
            rt.start(&id).await?;
            if a.container.detach {
                println!("{id}");
                return Ok(ExitCode::SUCCESS);
            }
            print_logs(&rt, &id, &LogQuery::default(), true, false).await?;
            let x = rt.wait(&id).await?;
            return Ok(ExitCode::from(x.code.clamp(0, 255) as u8));
        }
        ContainerCmd::Create(a) => {
            let id = create(cli, &rt, &a).await?;
            println!("{id}");
        }
        ContainerCmd::Start { name } => {
            rt.start(&name).await?;
            println!("{name}");
        }
        ContainerCmd::Ls { list } => {
            let now = chrono::Utc::now();
            let items = rt
                .list()
                .await?
                .iter()
                .map(|c| {
                    let status = match (c.status, &c.exit) {
                        (Status::Exited, Some(x)) => format!(
                            "Exited ({}){}",
                            x.code,
                            if x.oom { " OOMKilled" } else { "" }
                        ),
                        (Status::Running, _) => match &c.health {
                            Some(h) => format!("Up ({:?})", h.status)
                                .to_lowercase()
                                .replace("up (", "Up ("),
                            None => "Up".into(),
                        },
                        (s, _) => format!("{s:?}"),
                    };
                    let json = json!({"ID": c.record.id, "Image": c.record.spec.image, "RunningFor": ago((now - c.record.created).num_seconds()), "Status": status});
                    Item::of(json, &c.record.id, &["ID", "Image", "RunningFor", "Status"])
                })
                .collect();
            output::print(
                &list,
                Listing {
                    header: &["CONTAINER ID", "IMAGE", "CREATED", "STATUS"],
                    items,
                },
            )?;
        }
        ContainerCmd::Inspect { name } => {
            let i = rt.inspect(&name).await?;
            println!("{}", serde_json::to_string_pretty(&i)?);
        }
        ContainerCmd::Logs {
            name,
            follow,
            tail,
            timestamps,
            stream,
        } => {
            rt.record(&name)?;
            let tail = match tail.as_deref() {
                None | Some("all") => None,
                Some(n) => Some(
                    n.parse::<usize>()
                        .map_err(|_| anyhow::anyhow!("--tail {n:?} is not a number or \"all\""))?,
                ),
            };
            let q = LogQuery {
                stdout: stream.as_deref() != Some("stderr"),
                stderr: stream.as_deref() != Some("stdout"),
                tail,
                since: None,
            };
            print_logs(&rt, &name, &q, follow, timestamps).await?;
        }
        ContainerCmd::Wait { name } => {
            let x = rt.wait(&name).await?;
            println!("{}", x.code);
        }
        ContainerCmd::Stop { name, time } => {
            rt.stop(&name, time.map(Duration::from_secs)).await?;
            println!("{name}");
        }
        ContainerCmd::Kill { name, signal } => {
            let sig = shoal_runtime::container::spec::parse_signal(&signal)?;
            rt.signal(&name, sig).await?;
            println!("{name}");
        }
        ContainerCmd::Exec { name, command } => {
            let (code, out, timed_out) = rt.exec(&name, command, Duration::from_secs(3600)).await?;
            print!("{out}");
            if timed_out {
                bail!("exec timed out");
            }
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        ContainerCmd::Rm { force, names } => {
            let mut failed = false;
            for n in names {
                let res = async {
                    let i = rt.inspect(&n).await?;
                    if matches!(i.status, Status::Running | Status::Created) && !force {
                        bail!("container {n} is running: stop it first or use rm -f");
                    }
                    // its network attachment first: the container keeps the
                    // attachment's ID, so it stays until the attachment is gone
                    if let Some(a) = i.record.spec.labels.get(ATTACHMENT_LABEL).cloned() {
                        if matches!(i.status, Status::Running | Status::Created) {
                            rt.stop(&n, Some(Duration::ZERO)).await?;
                        }
                        detach(cli, a).await.with_context(|| {
                            format!("container {n} is kept: its network attachment could not be let go (rm it again once the daemon and the managers answer)")
                        })?;
                    }
                    rt.remove(&n).await?;
                    Ok(())
                }
                .await;
                match res {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {}", super::error_text(&e));
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The label that names a container's network attachment (for `rm` to let it go).
const ATTACHMENT_LABEL: &str = "com.shoal.network.attachment";

async fn create(cli: &Cli, rt: &ContainerRuntime, a: &RunArgs) -> anyhow::Result<String> {
    let mut spec = spec_of(a)?;
    let networks = super::flags::each(
        "--network",
        &a.container.network,
        crate::spec::parse::parse_network,
    )?;
    let id = a.name.clone().unwrap_or_else(random_id);
    rt.ensure_image(
        &spec.image,
        &super::image::pull_options(&cli.data_root(), &cli.insecure_registries),
    )
    .await?;
    if rt.record(&id).is_ok() {
        bail!("a container named {id} already exists");
    }
    let attachment = if networks.is_empty() {
        None
    } else {
        let r = super::client::swarm(cli)
            .await?
            .attach_container(AttachContainerRequest {
                container_id: id.clone(),
                networks,
            })
            .await
            .map_err(|e| super::words::refusal(e, Words::Container))?
            .into_inner();
        spec.netns = Some(r.netns.into());
        spec.mounts.push(MountSpec {
            kind: MountKind::Bind,
            source: r.resolv_conf,
            target: "/etc/resolv.conf".into(),
            read_only: true,
            tmpfs_size: None,
        });
        spec.labels
            .insert(ATTACHMENT_LABEL.into(), r.attachment_id.clone());
        Some(r.attachment_id)
    };
    if let Err(e) = rt.prepare(&id, &spec).await {
        if let Some(a) = attachment {
            let _ = detach(cli, a).await;
        }
        return Err(e.into());
    }
    Ok(id)
}

/// Lets the container's network attachment go (the container is removed).
async fn detach(cli: &Cli, attachment_id: String) -> anyhow::Result<()> {
    super::client::swarm(cli)
        .await?
        .detach_container(DetachContainerRequest { attachment_id })
        .await
        .map_err(super::client::refusal)?;
    Ok(())
}
