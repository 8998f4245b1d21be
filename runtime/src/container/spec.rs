//! A task's container spec, and the OCI runtime spec built from it plus the image config.
//!
//! Docker's rules apply: an entrypoint given by the task replaces the image's and drops
//! the image's command; a command given by the task replaces the image's command; task
//! env overrides image env by key; the user is `name`, `uid`, `name:group` or
//! `uid:gid`, resolved in the container's own /etc/passwd and /etc/group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("image config is invalid: {0}")]
    ImageConfig(String),
}

fn invalid(field: &'static str, why: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        why: why.into(),
    }
}

/// Everything about one container that a task asks for.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ContainerSpec {
    /// Image reference or ID, resolved in the image store.
    pub image: String,
    /// Replaces the image's entrypoint (and drops its command) when set.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command when set.
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE`, overriding the image's variables by key.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<MountSpec>,
    pub read_only: bool,
    /// Bytes.
    pub memory_limit: Option<i64>,
    /// CPUs, e.g. 0.5.
    pub cpu_limit: Option<f64>,
    pub pids_limit: Option<i64>,
    /// Signal name or number; SIGTERM by default (or the image's StopSignal).
    pub stop_signal: Option<String>,
    /// How long to wait after the stop signal before SIGKILL; 10 s by default.
    #[serde(with = "duration_ms")]
    pub stop_grace_period: Option<Duration>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub healthcheck: Option<HealthCheck>,
    pub log: LogConfig,
    /// Network namespace: `None` gives the container a new, empty one; a path joins it.
    pub netns: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Volume,
    Tmpfs,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MountSpec {
    pub kind: MountKind,
    /// Host path (bind) or volume name (volume); unused for tmpfs.
    #[serde(default)]
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// tmpfs size in bytes.
    #[serde(default)]
    pub tmpfs_size: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthCheck {
    /// `["CMD", prog, args…]` or `["CMD-SHELL", "command line"]`, as Docker writes it.
    pub test: Vec<String>,
    #[serde(with = "duration_ms")]
    pub interval: Option<Duration>,
    #[serde(with = "duration_ms")]
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    #[serde(with = "duration_ms")]
    pub start_period: Option<Duration>,
    /// How often it runs during the start period (Docker's `--health-start-interval`;
    /// default: the interval).
    #[serde(with = "duration_ms", default)]
    pub start_interval: Option<Duration>,
}

impl HealthCheck {
    /// The command to exec, refusing tests Docker would refuse.
    pub fn argv(&self) -> Result<Vec<String>, SpecError> {
        match self.test.split_first() {
            Some((k, rest)) if k == "CMD" && !rest.is_empty() => Ok(rest.to_vec()),
            Some((k, rest)) if k == "CMD-SHELL" && rest.len() == 1 => {
                Ok(vec!["/bin/sh".into(), "-c".into(), rest[0].clone()])
            }
            Some((k, _)) if k == "NONE" => Ok(vec![]),
            _ => Err(invalid(
                "healthcheck.test",
                "must be [\"CMD\", prog, args…], [\"CMD-SHELL\", \"command\"] or [\"NONE\"]",
            )),
        }
    }
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(Duration::from_secs(30))
    }
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs(30))
    }
    pub fn retries(&self) -> u32 {
        self.retries.unwrap_or(3)
    }
    pub fn start_period(&self) -> Duration {
        self.start_period.unwrap_or_default()
    }
    pub fn start_interval(&self) -> Duration {
        self.start_interval.unwrap_or_else(|| self.interval())
    }

    /// An image's `Healthcheck` (Docker's image config: `Test`, and durations in
    /// nanoseconds), or None when it has none or one that cannot run.
    pub fn of_image(v: &Value) -> Option<HealthCheck> {
        let test: Vec<String> = serde_json::from_value(v.get("Test")?.clone()).ok()?;
        let ns = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
                .map(Duration::from_nanos)
        };
        let h = HealthCheck {
            test,
            interval: ns("Interval"),
            timeout: ns("Timeout"),
            retries: v
                .get("Retries")
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
                .map(|n| n.min(u32::MAX as u64) as u32),
            start_period: ns("StartPeriod"),
            start_interval: ns("StartInterval"),
        };
        h.argv().ok().filter(|a| !a.is_empty())?;
        Some(h)
    }
}

/// Size-based log rotation, like Docker's json-file `max-size` / `max-file`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogConfig {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_size: 10 << 20,
            max_files: 3,
        }
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// The parts of an image config (`config` in the image JSON) that shape a container.
#[derive(Debug, Default, Deserialize, Clone)]
pub struct ImageConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
    #[serde(rename = "Healthcheck", default)]
    pub healthcheck: Option<Value>,
}

impl ImageConfig {
    /// Reads `config` out of an image config blob.
    pub fn from_blob(bytes: &[u8]) -> Result<ImageConfig, SpecError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| SpecError::ImageConfig(e.to_string()))?;
        match v.get("config") {
            None | Some(Value::Null) => Ok(ImageConfig::default()),
            Some(c) => {
                serde_json::from_value(c.clone()).map_err(|e| SpecError::ImageConfig(e.to_string()))
            }
        }
    }
}

/// Docker's default capability set.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability name the kernel here knows, for validating add/drop.
const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// System calls Docker's default profile refuses to a container without extra
/// capabilities. shoal's default profile allows everything else and answers these with
/// EPERM; `CAP_SYS_ADMIN` (via cap-add) lifts the mount/namespace ones, as in Docker.
const DENIED_SYSCALLS: [&str; 47] = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "move_pages",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "settimeofday",
    "stime",
    "swapon",
    "swapoff",
    "sysfs",
    "_sysctl",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
    "name_to_handle_at",
    "pivot_root",
    "fsopen",
    "fsmount",
    "open_tree",
];
const SYS_ADMIN_SYSCALLS: [&str; 5] = ["mount", "umount", "umount2", "unshare", "setns"];

fn normalize_cap(c: &str) -> Result<String, SpecError> {
    let up = c.trim().to_ascii_uppercase();
    let name = if up == "ALL" || up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if name != "ALL" && !ALL_CAPS.contains(&name.as_str()) {
        return Err(invalid(
            "cap_add/cap_drop",
            format!("unknown capability {c:?}"),
        ));
    }
    Ok(name)
}

/// The capability set after Docker's add/drop rules (drop first, then add; `ALL` works in both).
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>, SpecError> {
    let add = add
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<Vec<_>, _>>()?;
    let drop = drop
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<Vec<_>, _>>()?;
    let mut caps: Vec<String> = if drop.iter().any(|c| c == "ALL") {
        vec![]
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    caps.retain(|c| !drop.contains(c));
    if add.iter().any(|c| c == "ALL") {
        return Ok(ALL_CAPS.iter().map(|s| s.to_string()).collect());
    }
    for c in add {
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    Ok(caps)
}

/// Parses a signal given as a name (`TERM`, `SIGTERM`) or number.
pub fn parse_signal(s: &str) -> Result<i32, SpecError> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|x| x as i32)
            .map_err(|_| invalid("stop_signal", format!("{s} is not a signal number")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|x| x as i32)
        .map_err(|_| invalid("stop_signal", format!("{s:?} is not a signal name")))
}

/// What the builder needs besides the specs.
pub struct BuildInput<'a> {
    pub id: &'a str,
    pub spec: &'a ContainerSpec,
    pub image: &'a ImageConfig,
    /// The mounted rootfs (for resolving the user in /etc/passwd).
    pub rootfs: &'a Path,
    /// cgroup path relative to the cgroup mount root, e.g. `/shoal/<id>`.
    pub cgroup_path: &'a str,
    /// Host directories backing named volumes.
    pub volumes_dir: &'a Path,
    /// The host's cgroup hierarchies (mount points): libcontainer mounts them at the same
    /// paths in the container, and they are made read-only there.
    pub cgroupfs: &'a [PathBuf],
}

/// Where a mount may not go: the container's own /proc and /sys (and, for /proc,
/// anything in it), which would hide or replace what the kernel shows the container
/// (a bind of the host's /proc shows it the host's processes). runc refuses the same.
pub fn check_mount_target(target: &str) -> Result<(), String> {
    if !target.starts_with('/') || target.split('/').any(|c| c == "..") {
        return Err(format!(
            "target {target:?} must be an absolute path without '..'"
        ));
    }
    let norm: Vec<&str> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    match norm.as_slice() {
        [] => Err("a mount over the container's root (/) is not allowed".into()),
        ["proc", ..] => Err(format!(
            "{target} is in the container's /proc, which is of type proc: no mount may go there"
        )),
        ["sys"] => Err(format!(
            "{target} is the container's /sys, which is of type sysfs: no mount may replace it"
        )),
        _ => Ok(()),
    }
}

/// The process arguments by Docker's rules.
pub fn process_args(spec: &ContainerSpec, image: &ImageConfig) -> Result<Vec<String>, SpecError> {
    let (entry, cmd) = match (&spec.entrypoint, &spec.command) {
        (Some(e), Some(c)) => (e.clone(), c.clone()),
        (Some(e), None) => (e.clone(), vec![]),
        (None, Some(c)) => (image.entrypoint.clone().unwrap_or_default(), c.clone()),
        (None, None) => (
            image.entrypoint.clone().unwrap_or_default(),
            image.cmd.clone().unwrap_or_default(),
        ),
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(invalid(
            "command",
            "no command: the image has neither entrypoint nor cmd, and the task gives none",
        ));
    }
    Ok(args)
}

fn merge_env(image: &[String], task: &[String], hostname: &str) -> Result<Vec<String>, SpecError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |kv: &str, field| -> Result<(), SpecError> {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| invalid(field, format!("{kv:?} is not KEY=VALUE")))?;
        if k.is_empty() {
            return Err(invalid(field, format!("{kv:?} has an empty name")));
        }
        match out.iter_mut().find(|(x, _)| x == k) {
            Some(e) => e.1 = v.to_string(),
            None => out.push((k.to_string(), v.to_string())),
        }
        Ok(())
    };
    set(
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "env",
    )?;
    set(&format!("HOSTNAME={hostname}"), "env")?;
    for kv in image {
        set(kv, "image env")?;
    }
    for kv in task {
        set(kv, "env")?;
    }
    Ok(out.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// Resolves `user[:group]` against the container's /etc/passwd and /etc/group.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), SpecError> {
    if user.is_empty() {
        return Ok((0, 0, vec![]));
    }
    let read = |f: &str| std::fs::read_to_string(rootfs.join(f)).unwrap_or_default();
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read("etc/passwd");
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == u || f[2] == u));
    let (uid, mut gid) = match (u.parse::<u32>(), &entry) {
        (Ok(n), Some(f)) => (n, f[3].parse().unwrap_or(n)),
        (Ok(n), None) => (n, n),
        (Err(_), Some(f)) => (
            f[2].parse()
                .map_err(|_| invalid("user", format!("bad uid for {u} in /etc/passwd")))?,
            f[3].parse().unwrap_or(0),
        ),
        (Err(_), None) => {
            return Err(invalid(
                "user",
                format!("unable to find user {u}: no matching entries in the image's /etc/passwd"),
            ))
        }
    };
    let group = read("etc/group");
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| invalid("user", format!("unable to find group {g}: no matching entries in the image's /etc/group")))?,
        };
    }
    let uname = entry.as_ref().map(|f| f[0]).unwrap_or(u);
    let extra = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == uname))
        .filter_map(|f| f[2].parse().ok())
        .filter(|x| *x != gid)
        .collect();
    Ok((uid, gid, extra))
}

/// The shortest health-check interval: a check is a process started in the container,
/// and one every nanosecond would be a fork bomb through the keeper.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// More CPUs than any host has: a limit above it is a typo (`1e300`).
pub const MAX_CPUS: f64 = 10_000.0;
/// Docker's minimum memory limit: below it a container cannot start.
pub const MIN_MEMORY: i64 = 6 << 20;

/// Everything of a container spec that can be checked without its image or its host:
/// the managers check each service's task with this before anything is committed (a
/// value only a node would refuse would make its task fail and retry forever), and
/// [`build`] checks the same on the node. The first problem, naming its field.
pub fn check(spec: &ContainerSpec) -> Result<(), SpecError> {
    let nul = |field: &'static str, v: &str| {
        if v.contains('\0') {
            Err(invalid(field, format!("{v:?} holds a NUL byte")))
        } else {
            Ok(())
        }
    };
    if let Some(h) = &spec.hostname {
        if h.is_empty()
            || h.len() > 64
            || h.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(invalid(
                "hostname",
                format!("{h:?} is not a valid hostname (1 to 64 characters, no spaces, newlines or '/')"),
            ));
        }
    }
    for a in spec.entrypoint.iter().chain(&spec.command).flatten() {
        nul("command", a)?;
    }
    merge_env(&[], &spec.env, "x")?;
    for e in &spec.env {
        nul("env", e)?;
    }
    if let Some(u) = &spec.user {
        check_user(u)?;
    }
    if let Some(w) = spec.workdir.as_deref().filter(|w| !w.is_empty()) {
        nul("workdir", w)?;
        if !w.starts_with('/') {
            return Err(invalid("workdir", format!("{w:?} is not an absolute path")));
        }
    }
    capabilities(&spec.cap_add, &spec.cap_drop)?;
    if let Some(sig) = &spec.stop_signal {
        parse_signal(sig)?;
    }
    let mut targets = std::collections::HashSet::new();
    for m in &spec.mounts {
        check_mount_target(&m.target).map_err(|why| invalid("mounts", why))?;
        if !targets.insert(m.target.trim_end_matches('/')) {
            return Err(invalid(
                "mounts",
                format!("duplicate mount point {}", m.target),
            ));
        }
        match m.kind {
            MountKind::Bind if !Path::new(&m.source).is_absolute() => {
                return Err(invalid(
                    "mounts",
                    format!("bind source {:?} must be an absolute host path", m.source),
                ))
            }
            MountKind::Volume
                if m.source.is_empty()
                    || m.source.starts_with('.')
                    || !m
                        .source
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) =>
            {
                return Err(invalid(
                    "mounts",
                    format!(
                        "volume name {:?} must be [a-zA-Z0-9][a-zA-Z0-9_.-]*",
                        m.source
                    ),
                ))
            }
            _ => {}
        }
    }
    if let Some(m) = spec.memory_limit {
        if m < MIN_MEMORY {
            return Err(invalid(
                "limit_memory",
                format!("{m} bytes is below the minimum of 6MiB"),
            ));
        }
    }
    if let Some(c) = spec.cpu_limit {
        if !(c > 0.0 && c <= MAX_CPUS) {
            return Err(invalid(
                "limit_cpu",
                format!("{c} is not a number of CPUs (above 0, at most {MAX_CPUS})"),
            ));
        }
    }
    if let Some(p) = spec.pids_limit {
        if p < 1 {
            return Err(invalid("pids_limit", format!("{p} must be at least 1")));
        }
    }
    if let Some(h) = &spec.healthcheck {
        h.argv()?;
        if h.interval.is_some_and(|i| i < MIN_HEALTH_INTERVAL) {
            return Err(invalid(
                "health_interval",
                format!(
                    "{:?} is below the minimum of {MIN_HEALTH_INTERVAL:?} (each check starts a process)",
                    h.interval()
                ),
            ));
        }
        if h.start_interval.is_some_and(|i| i < MIN_HEALTH_INTERVAL) {
            return Err(invalid(
                "health_start_interval",
                format!(
                    "{:?} is below the minimum of {MIN_HEALTH_INTERVAL:?} (each check starts a process)",
                    h.start_interval()
                ),
            ));
        }
        if h.timeout.is_some_and(|t| t < Duration::from_millis(1)) {
            return Err(invalid(
                "health_timeout",
                format!("{:?} is below the minimum of 1ms", h.timeout()),
            ));
        }
    }
    Ok(())
}

/// `user[:group]`, each a name or a number, as the image's /etc/passwd and /etc/group
/// will resolve them (names are resolved on the node, in the image).
fn check_user(user: &str) -> Result<(), SpecError> {
    let bad = |why: String| Err(invalid("user", format!("{user:?}: {why}")));
    let parts: Vec<&str> = user.split(':').collect();
    if user.is_empty() || parts.len() > 2 {
        return bad("use name, uid, name:group or uid:gid".into());
    }
    for p in parts {
        if p.is_empty() || p.len() > 256 {
            return bad("use name, uid, name:group or uid:gid".into());
        }
        if p.bytes().all(|b| b.is_ascii_digit()) {
            if p.parse::<u32>().is_err() {
                return bad(format!("{p} is above the highest ID ({})", u32::MAX));
            }
        } else if !p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        {
            return bad(format!("{p:?} is not a user or group name"));
        }
    }
    Ok(())
}

/// Builds the OCI runtime spec (config.json) for a container.
pub fn build(input: &BuildInput<'_>) -> Result<Value, SpecError> {
    let BuildInput {
        id,
        spec,
        image,
        rootfs,
        cgroup_path,
        volumes_dir,
        cgroupfs,
    } = input;
    check(spec)?;
    let hostname = spec
        .hostname
        .clone()
        .unwrap_or_else(|| id.chars().take(12).collect());
    let args = process_args(spec, image)?;
    let env = merge_env(
        image.env.as_deref().unwrap_or_default(),
        &spec.env,
        &hostname,
    )?;
    let user = spec
        .user
        .clone()
        .or_else(|| image.user.clone())
        .unwrap_or_default();
    let (uid, gid, extra_gids) = resolve_user(rootfs, &user)?;
    let cwd = spec
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(invalid(
            "image workdir",
            format!("{cwd:?} is not an absolute path"),
        ));
    }
    let caps = capabilities(&spec.cap_add, &spec.cap_drop)?;
    // as many open files as this host lets us have (Docker's 1048576 where allowed)
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard.min(1 << 20))
        .unwrap_or(1024);
    let mut base = serde_json::to_value(oci_spec::runtime::Spec::default())
        .map_err(|e| SpecError::ImageConfig(e.to_string()))?;
    base["hostname"] = json!(hostname);
    base["root"] = json!({"path": rootfs, "readonly": spec.read_only});
    base["process"] = json!({
        "terminal": false,
        "user": {"uid": uid, "gid": gid, "additionalGids": extra_gids, "umask": crate::files::CONTAINER_UMASK},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
        "noNewPrivileges": true,
    });
    let mut labels = image.labels.clone().unwrap_or_default();
    labels.extend(spec.labels.clone());
    base["annotations"] = json!(labels);

    // mounts
    let mounts = base["mounts"]
        .as_array_mut()
        .ok_or_else(|| SpecError::ImageConfig("default spec has no mounts".into()))?;
    for m in &spec.mounts {
        let ro = if m.read_only { "ro" } else { "rw" };
        match m.kind {
            MountKind::Bind => {
                if !Path::new(&m.source).exists() {
                    return Err(invalid(
                        "mounts",
                        format!("bind source path does not exist: {}", m.source),
                    ));
                }
                mounts.push(json!({"destination": m.target, "type": "bind", "source": m.source, "options": ["rbind", ro, "rprivate"]}));
            }
            MountKind::Volume => {
                let data = volumes_dir.join(&m.source).join("_data");
                // volumes/ and volumes/NAME are root's; _data is the volume's root as the
                // container sees it (0755, as Docker makes it)
                let made = std::fs::create_dir_all(volumes_dir.join(&m.source))
                    .and_then(|_| crate::files::container_dir(&data));
                made.map_err(|e| invalid("mounts", format!("volume {}: {e}", m.source)))?;
                mounts.push(json!({"destination": m.target, "type": "bind", "source": data, "options": ["rbind", ro, "rprivate"]}));
            }
            MountKind::Tmpfs => {
                let mut opts = vec!["nosuid".to_string(), "nodev".to_string(), ro.to_string()];
                if let Some(s) = m.tmpfs_size {
                    opts.push(format!("size={s}"));
                }
                mounts.push(json!({"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": opts}));
            }
        }
    }

    // linux: cgroup, resources, namespaces, seccomp
    let linux = &mut base["linux"];
    linux["cgroupsPath"] = json!(cgroup_path);
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(m) = spec.memory_limit {
        resources["memory"] = json!({"limit": m});
    }
    if let Some(c) = spec.cpu_limit {
        resources["cpu"] = json!({"quota": (c * 100_000.0).round() as i64, "period": 100_000u64});
    }
    if let Some(p) = spec.pids_limit {
        resources["pids"] = json!({"limit": p});
    }
    linux["resources"] = resources;
    if let Some(ns) = &spec.netns {
        if let Some(list) = linux["namespaces"].as_array_mut() {
            for n in list.iter_mut() {
                if n["type"] == "network" {
                    n["path"] = json!(ns);
                }
            }
        }
    }
    let sys_admin = caps.iter().any(|c| c == "CAP_SYS_ADMIN");
    let mut denied: Vec<&str> = DENIED_SYSCALLS.to_vec();
    if !sys_admin {
        denied.extend(SYS_ADMIN_SYSCALLS);
    }
    // cgroupfs is the container's view of its own limits: read-only, as in Docker (a
    // container once raised its memory limit by writing memory.limit_in_bytes)
    if let Some(ro) = linux["readonlyPaths"].as_array_mut() {
        ro.push(json!("/sys/fs/cgroup"));
        for h in cgroupfs.iter() {
            if h != Path::new("/sys/fs/cgroup") {
                ro.push(json!(h));
            }
        }
    }
    linux["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    });
    // validate by round-tripping through oci-spec's types
    let typed: oci_spec::runtime::Spec = serde_json::from_value(base.clone())
        .map_err(|e| SpecError::ImageConfig(format!("built spec is invalid: {e}")))?;
    serde_json::to_value(typed).map_err(|e| SpecError::ImageConfig(e.to_string()))
}

/// Where a container's cgroup lives under a parent (`/shoal` → `/shoal/<id>`).
pub fn cgroup_path(parent: &str, id: &str) -> String {
    format!("/{}/{}", parent.trim_matches('/'), id).replace("//", "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into()]),
            env: Some(vec!["A=1".into(), "PATH=/img/bin".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn what_a_node_would_refuse_is_refused_without_a_node() {
        let ok = ContainerSpec {
            image: "busybox".into(),
            user: Some("1000:1000".into()),
            hostname: Some("web-1".into()),
            memory_limit: Some(64 << 20),
            cpu_limit: Some(0.5),
            ..Default::default()
        };
        check(&ok).unwrap();
        let refused = |f: &dyn Fn(&mut ContainerSpec), says: &str| {
            let mut s = ok.clone();
            f(&mut s);
            let e = check(&s).unwrap_err().to_string();
            assert!(e.contains(says), "expected {says:?} in {e:?}");
        };
        refused(
            &|s| s.cpu_limit = Some(f64::NAN),
            "limit_cpu: NaN is not a number of CPUs",
        );
        refused(&|s| s.cpu_limit = Some(1e300), "limit_cpu");
        refused(&|s| s.memory_limit = Some(1), "below the minimum of 6MiB");
        refused(
            &|s| s.cap_add = vec!["FLY".into()],
            "unknown capability \"FLY\"",
        );
        refused(
            &|s| s.stop_signal = Some("SIGNOPE".into()),
            "\"SIGNOPE\" is not a signal name",
        );
        refused(
            &|s| s.user = Some("99999999999".into()),
            "above the highest ID",
        );
        refused(&|s| s.user = Some("a:b:c".into()), "use name, uid");
        refused(
            &|s| s.user = Some("bad name".into()),
            "is not a user or group name",
        );
        refused(
            &|s| s.hostname = Some("web\n1".into()),
            "is not a valid hostname",
        );
        refused(&|s| s.env = vec!["A=\0".into()], "NUL byte");
        refused(&|s| s.workdir = Some("rel".into()), "not an absolute path");
        refused(
            &|s| {
                s.healthcheck = Some(HealthCheck {
                    test: vec!["CMD".into(), "true".into()],
                    interval: Some(Duration::from_nanos(1)),
                    timeout: None,
                    retries: None,
                    start_period: None,
                    start_interval: None,
                })
            },
            "health_interval: 1ns is below the minimum of 100ms",
        );
        refused(
            &|s| {
                s.mounts = vec![MountSpec {
                    kind: MountKind::Volume,
                    source: "../x".into(),
                    target: "/data".into(),
                    read_only: false,
                    tmpfs_size: None,
                }]
            },
            "volume name",
        );
    }

    #[test]
    fn an_images_health_check_is_read_as_docker_writes_it() {
        let v = json!({"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 2_000_000_000u64, "Retries": 4, "StartInterval": 500_000_000u64});
        let h = HealthCheck::of_image(&v).unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "curl -f localhost"]);
        assert_eq!(h.interval(), Duration::from_secs(2));
        assert_eq!(h.start_interval(), Duration::from_millis(500));
        assert_eq!((h.retries(), h.timeout()), (4, Duration::from_secs(30)));
        // none, or one that cannot run: no health check
        assert_eq!(HealthCheck::of_image(&json!({"Test": ["NONE"]})), None);
        assert_eq!(HealthCheck::of_image(&json!({"Test": ["SHELL"]})), None);
        assert_eq!(HealthCheck::of_image(&json!({})), None);
    }

    #[test]
    fn docker_args_rules() {
        let img = image();
        let mut s = ContainerSpec::default();
        assert_eq!(process_args(&s, &img).unwrap(), ["/entry", "serve"]);
        s.command = Some(vec!["run".into()]);
        assert_eq!(process_args(&s, &img).unwrap(), ["/entry", "run"]);
        s.command = None;
        s.entrypoint = Some(vec!["/bin/sh".into()]);
        assert_eq!(
            process_args(&s, &img).unwrap(),
            ["/bin/sh"],
            "entrypoint drops the image cmd"
        );
        let none = process_args(&ContainerSpec::default(), &ImageConfig::default())
            .unwrap_err()
            .to_string();
        assert!(none.contains("no command"), "{none}");
    }

    #[test]
    fn env_merges_by_key() {
        let env = merge_env(
            &["A=1".into(), "PATH=/img".into()],
            &["A=2".into(), "B=x=y".into()],
            "h",
        )
        .unwrap();
        assert_eq!(env, ["PATH=/img", "HOSTNAME=h", "A=2", "B=x=y"]);
        assert!(merge_env(&[], &["NOEQUALS".into()], "h")
            .unwrap_err()
            .to_string()
            .contains("not KEY=VALUE"));
    }

    #[test]
    fn caps_add_drop() {
        let c = capabilities(&["net_admin".into()], &["CAP_CHOWN".into(), "kill".into()]).unwrap();
        assert!(
            c.contains(&"CAP_NET_ADMIN".to_string())
                && !c.contains(&"CAP_CHOWN".to_string())
                && !c.contains(&"CAP_KILL".to_string())
        );
        assert_eq!(
            capabilities(&["SYS_TIME".into()], &["ALL".into()]).unwrap(),
            ["CAP_SYS_TIME"]
        );
        assert!(capabilities(&["FLY".into()], &[])
            .unwrap_err()
            .to_string()
            .contains("unknown capability \"FLY\""));
    }

    #[test]
    fn users_resolve_in_the_image() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "app:x:1000:\nstaff:x:50:app\n").unwrap();
        assert_eq!(
            resolve_user(d.path(), "app").unwrap(),
            (1000, 1000, vec![50])
        );
        assert_eq!(
            resolve_user(d.path(), "1000:staff").unwrap(),
            (1000, 50, vec![])
        );
        assert_eq!(
            resolve_user(d.path(), "4242").unwrap(),
            (4242, 4242, vec![])
        );
        assert!(resolve_user(d.path(), "ghost")
            .unwrap_err()
            .to_string()
            .contains("unable to find user ghost"));
        assert!(resolve_user(d.path(), "app:ghosts")
            .unwrap_err()
            .to_string()
            .contains("unable to find group ghosts"));
    }

    #[test]
    fn builds_a_valid_spec_with_limits_and_mounts() {
        let d = tempfile::tempdir().unwrap();
        let spec = ContainerSpec {
            image: "x".into(),
            memory_limit: Some(64 << 20),
            cpu_limit: Some(0.5),
            pids_limit: Some(100),
            read_only: true,
            mounts: vec![
                MountSpec {
                    kind: MountKind::Tmpfs,
                    source: String::new(),
                    target: "/scratch".into(),
                    read_only: false,
                    tmpfs_size: Some(1 << 20),
                },
                MountSpec {
                    kind: MountKind::Volume,
                    source: "data".into(),
                    target: "/data".into(),
                    read_only: false,
                    tmpfs_size: None,
                },
            ],
            ..Default::default()
        };
        let img = image();
        let v = build(&BuildInput {
            id: "abc",
            spec: &spec,
            image: &img,
            rootfs: d.path(),
            cgroup_path: "/shoal/abc",
            volumes_dir: d.path(),
            cgroupfs: &[],
        })
        .unwrap();
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 100);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["linux"]["cgroupsPath"], "/shoal/abc");
        assert!(d.path().join("data/_data").is_dir());
        let names = v["linux"]["seccomp"]["syscalls"][0]["names"]
            .as_array()
            .unwrap();
        assert!(names.iter().any(|n| n == "mount") && names.iter().any(|n| n == "kexec_load"));
        let bad = ContainerSpec {
            mounts: vec![MountSpec {
                kind: MountKind::Bind,
                source: "/no/such/dir".into(),
                target: "/x".into(),
                read_only: false,
                tmpfs_size: None,
            }],
            ..spec.clone()
        };
        let err = build(&BuildInput {
            id: "abc",
            spec: &bad,
            image: &img,
            rootfs: d.path(),
            cgroup_path: "/x",
            volumes_dir: d.path(),
            cgroupfs: &[],
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("bind source path does not exist: /no/such/dir"),
            "{err}"
        );
        let low = ContainerSpec {
            memory_limit: Some(1024),
            ..spec
        };
        assert!(build(&BuildInput {
            id: "abc",
            spec: &low,
            image: &img,
            rootfs: d.path(),
            cgroup_path: "/x",
            volumes_dir: d.path(),
            cgroupfs: &[],
        })
        .unwrap_err()
        .to_string()
        .contains("minimum of 6MiB"));
    }

    #[test]
    fn cgroupfs_is_read_only_and_proc_and_sys_cannot_be_mounted_over() {
        let d = tempfile::tempdir().unwrap();
        let spec = ContainerSpec {
            image: "x".into(),
            ..Default::default()
        };
        let hierarchies = [
            PathBuf::from("/sys/fs/cgroup/memory"),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
        ];
        let img = image();
        let built = |spec: &ContainerSpec| {
            build(&BuildInput {
                id: "abc",
                spec,
                image: &img,
                rootfs: d.path(),
                cgroup_path: "/shoal/abc",
                volumes_dir: d.path(),
                cgroupfs: &hierarchies,
            })
        };
        let v = built(&spec).unwrap();
        let ro: Vec<&str> = v["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        for p in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/cpu,cpuacct",
            "/proc/sys",
        ] {
            assert!(ro.contains(&p), "{p} read-only: {ro:?}");
        }
        for target in ["/proc", "/proc/", "//proc/self", "/./sys", "/sys/", "/"] {
            let bad = ContainerSpec {
                mounts: vec![MountSpec {
                    kind: MountKind::Bind,
                    source: "/proc".into(),
                    target: target.into(),
                    read_only: true,
                    tmpfs_size: None,
                }],
                ..spec.clone()
            };
            let err = built(&bad).unwrap_err().to_string();
            assert!(err.starts_with("mounts: "), "{target}: {err}");
        }
        for fine in ["/sys/kernel/config", "/srv/proc", "/data"] {
            assert!(check_mount_target(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM").unwrap(), 15);
        assert_eq!(parse_signal("SIGKILL").unwrap(), 9);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert!(parse_signal("SIGNOPE").is_err());
    }
}
