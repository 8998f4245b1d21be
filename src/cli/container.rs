//! `shoal container …`: containers on this host, run through the runtime and its keeper
//! with no cluster. What the agent does for a task, by hand.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;
use shoal_runtime::container::logs::{follow_logs, read_logs, LogQuery};
use shoal_runtime::container::spec::{
    parse_bytes, ContainerSpec, HealthCheck, LogConfig, MountKind, MountSpec,
};
use shoal_runtime::container::{ContainerRuntime, RuntimeConfig, Status};
use shoal_runtime::image::ImageStore;

use shoal_proto::{AttachContainerRequest, DetachContainerRequest};

use super::util::{ago, table};
use super::Globals as Cli;

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
        #[arg(long, default_value = "table")]
        format: String,
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
    #[arg(short, long)]
    detach: bool,
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
    #[arg(short, long = "label")]
    label: Vec<String>,
    /// type=bind|volume|tmpfs,source=…,target=…[,readonly][,tmpfs-size=…]
    #[arg(long)]
    mount: Vec<String>,
    #[arg(long)]
    read_only: bool,
    #[arg(short, long)]
    memory: Option<String>,
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    pids_limit: Option<i64>,
    #[arg(long)]
    stop_signal: Option<String>,
    /// Seconds.
    #[arg(long)]
    stop_timeout: Option<u64>,
    #[arg(long)]
    cap_add: Vec<String>,
    #[arg(long)]
    cap_drop: Vec<String>,
    #[arg(long)]
    health_cmd: Option<String>,
    #[arg(long, value_parser = parse_duration)]
    health_interval: Option<Duration>,
    #[arg(long, value_parser = parse_duration)]
    health_timeout: Option<Duration>,
    #[arg(long)]
    health_retries: Option<u32>,
    #[arg(long, value_parser = parse_duration)]
    health_start_period: Option<Duration>,
    /// Rotate the log at this size (e.g. 10m).
    #[arg(long)]
    log_max_size: Option<String>,
    /// Keep this many log files.
    #[arg(long)]
    log_max_file: Option<u32>,
    /// Join an attachable overlay network of the swarm: NAME[,alias=A…] (needs the shoal
    /// daemon, on a node of the swarm; the container resolves service names there).
    #[arg(long)]
    network: Vec<String>,
    image: String,
    #[arg(trailing_var_arg = true)]
    command: Vec<String>,
}

/// Go-style durations as Docker takes them: `300ms`, `5s`, `1m30s`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(n) = chars.peek().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(*n);
            chars.next();
        }
        let v: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 5s, 1m30s)"))?;
        let secs = match unit.as_str() {
            "ns" => v / 1e9,
            "us" | "µs" => v / 1e6,
            "ms" => v / 1e3,
            "s" => v,
            "m" => v * 60.0,
            "h" => v * 3600.0,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m, h)")),
        };
        total += Duration::from_secs_f64(secs);
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!("{s:?} has no unit (e.g. 5s)"));
    }
    Ok(total)
}

pub(super) fn parse_mount(s: &str) -> anyhow::Result<MountSpec> {
    let mut m = MountSpec {
        kind: MountKind::Volume,
        source: String::new(),
        target: String::new(),
        read_only: false,
        tmpfs_size: None,
    };
    for part in s.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k {
            "type" => {
                m.kind = match v {
                    "bind" => MountKind::Bind,
                    "volume" => MountKind::Volume,
                    "tmpfs" => MountKind::Tmpfs,
                    _ => bail!("--mount {s:?}: type {v:?} is not supported (bind, volume, tmpfs)"),
                }
            }
            "source" | "src" => m.source = v.into(),
            "target" | "destination" | "dst" => m.target = v.into(),
            "readonly" | "ro" => m.read_only = v.is_empty() || v == "true" || v == "1",
            "tmpfs-size" => {
                m.tmpfs_size = Some(
                    parse_bytes(v).map_err(|e| anyhow::anyhow!("--mount {s:?}: tmpfs-size {e}"))?,
                )
            }
            _ => bail!("--mount {s:?}: unknown key {k:?}"),
        }
    }
    if m.target.is_empty() {
        bail!("--mount {s:?}: target is required");
    }
    Ok(m)
}

fn spec_of(a: &RunArgs) -> anyhow::Result<ContainerSpec> {
    let mut labels = std::collections::BTreeMap::new();
    for l in &a.label {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let health = a.health_cmd.as_ref().map(|c| HealthCheck {
        test: vec!["CMD-SHELL".into(), c.clone()],
        interval: a.health_interval,
        timeout: a.health_timeout,
        retries: a.health_retries,
        start_period: a.health_start_period,
    });
    if health.is_none()
        && (a.health_interval.is_some() || a.health_timeout.is_some() || a.health_retries.is_some())
    {
        bail!("--health-interval, --health-timeout and --health-retries need --health-cmd");
    }
    let mut log = LogConfig::default();
    if let Some(s) = &a.log_max_size {
        log.max_size = parse_bytes(s).map_err(|e| anyhow::anyhow!("--log-max-size: {e}"))?;
    }
    if let Some(n) = a.log_max_file {
        if n == 0 {
            bail!("--log-max-file must be at least 1");
        }
        log.max_files = n;
    }
    Ok(ContainerSpec {
        image: a.image.clone(),
        entrypoint: a.entrypoint.as_ref().map(|e| vec![e.clone()]),
        command: (!a.command.is_empty()).then(|| a.command.clone()),
        env: a.env.clone(),
        user: a.user.clone(),
        workdir: a.workdir.clone(),
        hostname: a.hostname.clone(),
        labels,
        mounts: a
            .mount
            .iter()
            .map(|m| parse_mount(m))
            .collect::<anyhow::Result<_>>()?,
        read_only: a.read_only,
        memory_limit: a
            .memory
            .as_ref()
            .map(|m| {
                parse_bytes(m)
                    .map(|b| b as i64)
                    .map_err(|e| anyhow::anyhow!("--memory: {e}"))
            })
            .transpose()?,
        cpu_limit: a.cpus,
        pids_limit: a.pids_limit,
        stop_signal: a.stop_signal.clone(),
        stop_grace_period: a.stop_timeout.map(Duration::from_secs),
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        healthcheck: health,
        log,
        netns: None,
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
    let images = ImageStore::open(&cli.data_root)?;
    let exe = std::env::current_exe().context("finding the shoal binary for the keeper")?;
    let cfg = RuntimeConfig {
        data_root: cli.data_root.clone(),
        cgroup_parent: cli.cgroup_parent.clone(),
        keeper_cmd: vec![
            exe.into(),
            "keeper".into(),
            "--root".into(),
            cli.data_root.join("containers").into(),
        ],
        pull: super::image::pull_options(&cli.data_root, &cli.insecure_registries),
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
            if a.detach {
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
        ContainerCmd::Ls { format } => {
            let now = chrono::Utc::now();
            let list = rt.list().await?;
            let rows: Vec<Vec<String>> = list
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
                    vec![
                        c.record.id.clone(),
                        c.record.spec.image.clone(),
                        ago((now - c.record.created).num_seconds()),
                        status,
                    ]
                })
                .collect();
            match format.as_str() {
                "table" => table(&["CONTAINER ID", "IMAGE", "CREATED", "STATUS"], &rows),
                "json" => rows.iter().for_each(|r| {
                    println!(
                        "{}",
                        json!({"ID": r[0], "Image": r[1], "RunningFor": r[2], "Status": r[3]})
                    )
                }),
                other => bail!("--format {other:?} is not supported: use table or json"),
            }
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
    let networks = a
        .network
        .iter()
        .map(|n| super::service::parse_network(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let id = a.name.clone().unwrap_or_else(random_id);
    rt.ensure_image(
        &spec.image,
        &super::image::pull_options(&cli.data_root, &cli.insecure_registries),
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
            .map_err(super::client::refusal)?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn mounts() {
        let m = parse_mount("type=tmpfs,target=/t,tmpfs-size=1m").unwrap();
        assert_eq!((m.kind, m.tmpfs_size), (MountKind::Tmpfs, Some(1 << 20)));
        assert!(parse_mount("type=nfs,target=/x")
            .unwrap_err()
            .to_string()
            .contains("type \"nfs\" is not supported"));
        assert!(parse_mount("source=x")
            .unwrap_err()
            .to_string()
            .contains("target is required"));
    }
}
