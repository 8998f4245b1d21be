//! The command line, in Swarm's (and Docker's) words. One module per command group, each
//! keeping clap and printing: flags become `crate::spec` types (`flags.rs`), problems the
//! validation names by field are said as flags (`words.rs`), lists print through one
//! helper (`output.rs`), and the daemon is called over its socket (`client.rs`).

mod bench;
mod client;
mod container;
mod daemon;
mod files;
mod flags;
mod image;
mod network;
mod node;
mod output;
mod progress;
mod scale;
mod service;
mod swarm;
mod system;
mod util;
mod words;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A container orchestrator with no container daemon"
)]
pub struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    cmd: Command,
}

/// Options every command takes.
#[derive(Args, Clone)]
pub struct Globals {
    /// Where shoal keeps images, containers and cluster state [default: /var/lib/shoal;
    /// with --host, the daemon's].
    #[arg(long, global = true, env = "SHOAL_DATA_ROOT")]
    data_root: Option<PathBuf>,
    /// Parent cgroup of every container shoal runs [default: /shoal; with --host, the
    /// daemon's].
    #[arg(long, global = true, env = "SHOAL_CGROUP_PARENT")]
    cgroup_parent: Option<String>,
    /// The daemon's socket (the CLI's and the daemon's alike), like DOCKER_HOST
    /// [default: unix:///run/shoal/shoal.sock].
    #[arg(long = "host", short = 'H', global = true, env = "SHOAL_HOST")]
    host: Option<String>,
    /// Registries (host:port) that may be reached over plain http; loopback always may.
    #[arg(
        long = "insecure-registry",
        global = true,
        env = "SHOAL_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
}

impl Globals {
    pub fn data_root(&self) -> PathBuf {
        self.data_root
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/shoal"))
    }

    pub fn cgroup_parent(&self) -> String {
        self.cgroup_parent
            .clone()
            .unwrap_or_else(|| "/shoal".into())
    }

    pub fn host(&self) -> &str {
        self.host
            .as_deref()
            .unwrap_or("unix:///run/shoal/shoal.sock")
    }
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Manage images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Manage containers on this host (without the cluster).
    #[command(subcommand)]
    Container(container::ContainerCmd),
    /// Log in to a registry; credentials are kept in DATA_ROOT/registry-auth.json (root only).
    Login(image::LoginArgs),
    /// Manage the swarm.
    #[command(subcommand)]
    Swarm(swarm::SwarmCmd),
    /// Manage swarm nodes.
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Manage the swarm's overlay networks.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Manage secrets (their data never comes back).
    #[command(subcommand)]
    Secret(files::FileCmd),
    /// Manage configs.
    #[command(subcommand)]
    Config(files::FileCmd),
    /// What this node is and holds.
    #[command(subcommand)]
    System(system::SystemCmd),
    /// Run the shoal daemon (as root): the node's runtime, agent and, once in a swarm, manager.
    Daemon(daemon::DaemonArgs),
    /// Times the runtime for scripts/bench/runtime.sh.
    #[command(hide = true)]
    BenchRuntime(bench::BenchArgs),
    /// Simulates a big cluster for scripts/bench/scale.sh.
    #[command(hide = true)]
    BenchScale(scale::ScaleArgs),
    /// The simulated nodes of bench-scale, in a process of their own.
    #[command(hide = true)]
    BenchScaleNodes(scale::NodesArgs),
    /// The per-node keeper process (started by shoal itself; not for direct use).
    #[command(hide = true)]
    Keeper {
        #[arg(long)]
        root: PathBuf,
    },
}

/// The umask the command was started with (what files it writes for the user get).
static USER_UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The mode a file written for the user (not under the data root) gets, as `cp` would.
pub fn user_file_mode() -> u32 {
    0o666 & !USER_UMASK.get().copied().unwrap_or(0o022)
}

pub fn main() -> ExitCode {
    // everything shoal makes under the data root is root's alone (see
    // shoal_runtime::files), whoever made it: the daemon, the keeper or a command
    let _ = USER_UMASK.set(shoal_runtime::files::private_umask());
    let cli = Cli::parse();
    if let Command::Keeper { root } = &cli.cmd {
        // before any runtime or thread exists: the keeper must stay single-threaded
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("SHOAL_LOG"))
            .with_writer(std::io::stderr)
            .init();
        return match shoal_runtime::container::keeper::run(root) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keeper: {}", error_text(&e));
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SHOAL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    // glibc gives every thread its own malloc arena, which keeps freed memory resident;
    // two arenas are plenty for a daemon that mostly waits
    // SAFETY: mallopt only tunes the allocator; no thread exists yet besides this one.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    // at least two workers, also on one CPU: a call that blocks its thread for a while
    // (an fsync of the Raft log on a slow disk) must not stop everything else with it
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let serves = matches!(
        cli.cmd,
        Command::Daemon(_) | Command::BenchScale(_) | Command::BenchScaleNodes(_)
    );
    if !serves {
        // a command's output piped into `head` ends the command quietly, as any Unix
        // tool's does (Rust ignores SIGPIPE, and then println! panics on the broken
        // pipe); what serves gRPC (the daemon, and the scale benchmark's leader and
        // nodes) keeps ignoring it: a client gone is no reason to stop
        // SAFETY: sets a signal's disposition to the default; no handler runs.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let res = rt.block_on(async {
        let g = cli.globals;
        // what works on this node's images and containers works where its daemon does
        let here = || client::this_node(&g);
        match cli.cmd {
            Command::Image(c) => {
                let g = here().await?;
                image::run(&g.data_root(), &g.insecure_registries, c).await
            }
            Command::Login(a) => {
                let g = here().await?;
                image::login(&g.data_root(), &g.insecure_registries, a).await
            }
            Command::Container(c) => container::run(&here().await?, c).await,
            Command::BenchRuntime(a) => bench::run(&g, a).await,
            Command::BenchScale(a) => scale::run(a).await,
            Command::BenchScaleNodes(a) => scale::run_nodes(a).await,
            Command::Daemon(a) => daemon::run(&g, a).await,
            Command::Swarm(c) => swarm::run_swarm(&g, c).await,
            Command::Node(c) => node::run(&g, c).await,
            Command::Service(c) => service::run(&g, c).await,
            Command::Network(c) => network::run(&g, c).await,
            Command::Secret(c) => files::run(&g, files::Kind::Secret, c).await,
            Command::Config(c) => files::run(&g, files::Kind::Config, c).await,
            Command::System(c) => system::run(&g, c).await,
            Command::Keeper { .. } => unreachable!("handled above"),
        }
    });
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, as a user reads them: a cause its error already
/// says (an error that both shows and chains its source) is not said twice, and
/// what is not text (a garbage archive's bytes, quoted by a parser) is escaped and cut.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    printable(&out, 1000)
}

/// `s` with control characters and undecodable bytes (U+FFFD) escaped, cut to at most
/// `max` characters.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push_str("...");
            break;
        }
        match c {
            '\u{fffd}' => out.push('?'),
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing /x: {source}")]
    struct ShowsAndChains {
        source: std::io::Error,
    }

    #[test]
    fn errors_say_each_cause_once_and_escape_what_is_not_text() {
        let e = anyhow::Error::new(ShowsAndChains {
            source: std::io::Error::from_raw_os_error(28),
        })
        .context("import a.tar");
        assert_eq!(
            error_text(&e),
            "import a.tar: writing /x: No space left on device (os error 28)"
        );
        let raw = anyhow::anyhow!(
            "bad field: {}\u{1b}[2J\u{0}",
            String::from_utf8_lossy(&[0xff, 0xfe])
        );
        assert_eq!(error_text(&raw), "bad field: ??\\u{1b}[2J\\u{0}");
        assert_eq!(printable(&"x".repeat(2000), 1000).len(), 1003);
    }
}
