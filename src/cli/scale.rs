//! `shoal bench-scale` (hidden): the simulation behind scripts/bench/scale.sh. One
//! process is a real leader (Raft on redb in a temporary directory, the real
//! orchestrator, scheduler and dispatcher behind the real gRPC service on a Unix socket);
//! a second one (`bench-scale-nodes`) holds N simulated nodes: real agents with the fake
//! executor, each with its own session, heartbeats, assignment stream and status
//! reports. It creates S services of R replicas and prints how long until every task is
//! RUNNING, and each process's peak resident memory.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use shoal_proto::dispatcher_server::DispatcherServer;
use shoal_proto::service_spec::Mode;
use shoal_proto::*;
use shoal_runtime::container::executor::FakeExecutor;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::manager::node::{Manager, ManagerOpts};

#[derive(Args)]
pub struct ScaleArgs {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 100)]
    services: usize,
    #[arg(long, default_value_t = 100)]
    replicas: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print the tasks' states every 100 ms while waiting (to standard error).
    #[arg(long)]
    progress: bool,
    /// Keep the Raft database's records plain, to measure what sealing them costs (the
    /// daemon always seals).
    #[arg(long)]
    unsealed: bool,
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// The simulated nodes' runtime, shut down without blocking however `run` ends (a
/// runtime dropped inside another one's task would panic).
struct NodesRuntime(Option<tokio::runtime::Runtime>);

impl NodesRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("runtime present until drop")
            .handle()
    }
}

impl Drop for NodesRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn running(m: &Manager) -> usize {
    m.store.view(|t| {
        t.tasks
            .values()
            .filter(|x| x.status.as_ref().map(|s| s.state) == Some(TaskState::Running as i32))
            .count()
    })
}

pub async fn run(a: ScaleArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let ca = crate::tls::RootCa::generate()?;
    let cluster = crate::manager::ca::new_cluster(&ca, crate::tls::DEFAULT_CERT_EXPIRY);
    let m = Arc::new(
        Manager::start(ManagerOpts {
            dir: &dir.path().join("swarm"),
            node_id: "simleader0000000",
            hostname: "leader",
            addr: "127.0.0.1:2377",
            raft_id: 1,
            init: Some(cluster),
            restore: None,
            tls: Default::default(),
            seal: if a.unsealed {
                crate::manager::raft::seal::Sealer::unsealed()
            } else {
                crate::manager::raft::seal::Sealer::load_or_create(
                    &dir.path().join(crate::manager::raft::seal::DEK_FILE),
                )?
            },
        })
        .await?,
    );
    // the dispatcher's gRPC service on a Unix socket, as a node's local agent uses it
    let sock = dir.path().join("dispatcher.sock");
    let listener = tokio::net::UnixListener::bind(&sock)?;
    let stop = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .add_service(DispatcherServer::new(m.dispatcher.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
    tokio::spawn(server);

    // The simulated nodes stand for other machines: they run in a process of their own
    // (so that the leader's memory is the leader's), on threads at the lowest CPU
    // priority (so that what is measured is the manager's work, not the manager's tasks
    // queued behind a thousand agents'; on a real cluster they use other machines' CPUs).
    let mut nodes = tokio::process::Command::new(std::env::current_exe()?)
        .arg("bench-scale-nodes")
        .arg("--socket")
        .arg(&sock)
        .arg("--nodes")
        .arg(a.nodes.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let t0 = Instant::now();
    let ready = || {
        m.store.view(|t| {
            t.nodes
                .values()
                .filter(|n| n.status.as_ref().map(|s| s.state) == Some(NodeState::Ready as i32))
                .count()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    while ready() < a.nodes {
        if Instant::now() > deadline {
            let states: std::collections::BTreeMap<String, usize> = m.store.view(|t| {
                let mut c = std::collections::BTreeMap::new();
                for n in t.nodes.values() {
                    let s = n.status.clone().unwrap_or_default();
                    *c.entry(format!("{:?} {}", NodeState::try_from(s.state), s.message))
                        .or_default() += 1;
                }
                c
            });
            anyhow::bail!("only {} of {} nodes ready: {states:?}", ready(), a.nodes);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joined = t0.elapsed();

    let t1 = Instant::now();
    for s in 0..a.services {
        let spec = ServiceSpec {
            annotations: Some(Annotations {
                name: format!("svc{s}"),
                ..Default::default()
            }),
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(Mode::Replicated(ReplicatedService {
                replicas: a.replicas,
            })),
            ..Default::default()
        };
        let tc = Instant::now();
        crate::manager::control::create_service(
            &m.store,
            spec,
            &crate::manager::images::ImageOptions::none(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        if std::env::var_os("SHOAL_SCALE_TRACE").is_some() {
            eprintln!("create {s}: {:.1} ms", tc.elapsed().as_secs_f64() * 1e3);
        }
    }
    let created = t1.elapsed();
    let want = a.services * a.replicas as usize;
    let mut last = Instant::now();
    while running(&m) < want {
        if std::env::var_os("SHOAL_SCALE_TRACE").is_some()
            && last.elapsed() > Duration::from_millis(100)
        {
            last = Instant::now();
            let c = m.store.view(|t| {
                let mut c = std::collections::BTreeMap::new();
                for x in t.tasks.values() {
                    *c.entry(format!("{:?}", crate::manager::tasks::state(x)))
                        .or_insert(0) += 1;
                }
                (c, m.store.applied_index())
            });
            eprintln!("{:.2} {:?}", t1.elapsed().as_secs_f64(), c);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {want} tasks running after {:?}",
            running(&m),
            t1.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let converged = t1.elapsed();
    let leader_peak = peak_rss_mib();
    // closing its standard input ends the nodes' process, which prints its peak memory
    drop(nodes.stdin.take());
    let mut out = String::new();
    if let Some(mut o) = nodes.stdout.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut o, &mut out).await?;
    }
    nodes.wait().await?;
    let nodes_peak: f64 = out.trim().parse().unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({
            "nodes": a.nodes,
            "tasks": want,
            "nodes_ready_s": joined.as_secs_f64(),
            "creates_s": created.as_secs_f64(),
            "all_running_s": converged.as_secs_f64(),
            "peak_rss_mib": leader_peak,
            "nodes_peak_rss_mib": nodes_peak,
        })
    );
    stop.cancel();
    m.stop().await;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct NodesArgs {
    /// The leader's dispatcher socket.
    #[arg(long)]
    socket: std::path::PathBuf,
    #[arg(long)]
    nodes: usize,
}

/// `shoal bench-scale-nodes` (hidden): the simulated nodes of `bench-scale`, in a process
/// of their own. Runs until its standard input closes, then prints its peak resident
/// memory in MiB.
pub async fn run_nodes(a: NodesArgs) -> anyhow::Result<ExitCode> {
    let stop = CancellationToken::new();
    let sock = a.socket;
    let nodes_rt = NodesRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sim-node")
            .on_thread_start(|| {
                // SAFETY: plain syscall; on Linux, who = 0 is the calling thread
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
            })
            .enable_all()
            .build()?,
    ));
    for i in 0..a.nodes {
        let agent = Agent::new(
            Arc::new(FakeExecutor::default()),
            format!("simnode{i:08}"),
            NodeDescription {
                hostname: format!("sim{i}"),
                platform: Some(Platform {
                    architecture: "x86_64".into(),
                    os: "linux".into(),
                }),
                resources: Some(Resources {
                    nano_cpus: 4_000_000_000,
                    memory_bytes: 8 << 30,
                }),
                ..Default::default()
            },
        );
        let sock = sock.clone();
        nodes_rt.handle().spawn(agent.run(
            move || {
                let p = sock.clone();
                Box::pin(async move { crate::node::socket::connect(&p).await })
            },
            stop.clone(),
        ));
    }
    let mut sink = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await?;
    stop.cancel();
    drop(nodes_rt);
    println!("{}", peak_rss_mib());
    Ok(ExitCode::SUCCESS)
}
