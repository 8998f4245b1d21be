//! Shared harness for shoal's integration tests (as root): a private data root and cgroup
//! parent per test, the test images, and a cleanup that runs even when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shoal_runtime::container::{ContainerRuntime, RuntimeConfig};
use shoal_runtime::image::ImageStore;

pub mod cluster;

/// A variable `scripts/test.sh` exports; the test fails (it does not skip) without it.
pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test.sh"))
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env("SHOAL_TEST_FIXTURES"))
}

pub fn shoal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// One host's worth of shoal state. Dropping it kills every process it started (the
/// keeper and all containers), removes its cgroups and mounts, and deletes its files.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub cgroup_parent: String,
    /// The network namespace its daemon runs in (cluster tests), and its host name there.
    pub netns: Option<(String, String)>,
    /// Environment for its daemon (`SHOAL_DNS`, …).
    pub daemon_env: Vec<(String, String)>,
}

impl Host {
    pub fn new() -> Host {
        let dir = tempfile::Builder::new()
            .prefix("shoal-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let tag = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace('.', "");
        Host {
            cgroup_parent: format!("/{tag}"),
            dir,
            netns: None,
            daemon_env: Vec::new(),
        }
    }

    pub fn data_root(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> RuntimeConfig {
        RuntimeConfig {
            data_root: self.data_root().to_path_buf(),
            cgroup_parent: self.cgroup_parent.clone(),
            keeper_cmd: vec![
                shoal_bin().into(),
                OsString::from("keeper"),
                OsString::from("--root"),
                self.data_root().join("containers").into(),
            ],
            pull: Default::default(),
        }
    }

    pub async fn runtime(&self) -> ContainerRuntime {
        let images = ImageStore::open(self.data_root()).unwrap();
        ContainerRuntime::open(self.config(), images).await.unwrap()
    }

    /// The runtime with the busybox test image imported.
    pub async fn runtime_with_image(&self) -> ContainerRuntime {
        let rt = self.runtime().await;
        rt.images()
            .import(&fixtures().join("busybox-oci"))
            .await
            .unwrap();
        rt
    }

    /// Runs the shoal CLI against this host.
    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(shoal_bin())
            .args(args)
            .env("SHOAL_DATA_ROOT", self.data_root())
            .env("SHOAL_CGROUP_PARENT", &self.cgroup_parent)
            .output()
            .unwrap()
    }

    /// Pids of processes whose command line mentions this host's data root (the keeper).
    pub fn keeper_pids(&self) -> Vec<i32> {
        let needle = self
            .data_root()
            .join("containers")
            .to_string_lossy()
            .into_owned();
        let mut v = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(" keeper ") && cmd.contains(&needle) {
                v.push(pid);
            }
        }
        v
    }

    /// Every cgroup directory under this host's parent, in every hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for root in shoal_runtime::container::cgroup_roots() {
            let p = root.join(self.cgroup_parent.trim_start_matches('/'));
            if p.is_dir() {
                for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                    if e.path().is_dir() {
                        v.push(e.path());
                    }
                }
            }
        }
        v
    }

    /// The value of the first of `files` that container `id`'s cgroup has, in any
    /// hierarchy: name both versions' files (`memory.limit_in_bytes`, `memory.max`) and
    /// this works on cgroup v1 and v2.
    pub fn cgroup_value(&self, id: &str, files: &[&str]) -> String {
        let dirs: Vec<PathBuf> = self
            .cgroup_dirs()
            .into_iter()
            .filter(|p| p.ends_with(id))
            .collect();
        let file = files
            .iter()
            .flat_map(|f| dirs.iter().map(move |d| d.join(f)))
            .find(|f| f.exists())
            .unwrap_or_else(|| panic!("no cgroup of {id} has any of {files:?}: {dirs:?}"));
        fs::read_to_string(file).unwrap().trim().to_string()
    }

    /// Mount points under this host's data root.
    pub fn mounts(&self) -> Vec<String> {
        let root = self.data_root().to_string_lossy().into_owned();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
            .filter(|m| m.starts_with(&root))
            .collect()
    }
}

impl Host {
    /// SIGKILL to the keeper and every container process of this host (not the daemon):
    /// a power loss, as far as processes go.
    pub fn kill_processes(&self) {
        for pid in self.keeper_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for cg in self.cgroup_dirs() {
            for pid in fs::read_to_string(cg.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(p) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_processes();
        let deadline = Instant::now() + Duration::from_secs(10);
        for cg in self.cgroup_dirs() {
            while fs::remove_dir(&cg).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for root in shoal_runtime::container::cgroup_roots() {
            let _ = fs::remove_dir(root.join(self.cgroup_parent.trim_start_matches('/')));
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Polls `f` until it returns Some, failing the test after `limit`.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `shoal daemon` of a [`Host`], on its own socket. Dropping it stops it (SIGKILL);
/// the host's drop then removes its keeper, containers, cgroups and mounts.
pub struct DaemonProc {
    pub child: Option<std::process::Child>,
}

impl Host {
    pub fn socket(&self) -> PathBuf {
        self.data_root().join("shoal.sock")
    }

    /// The shoal binary, set to this host's data root, cgroup parent and socket.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(shoal_bin());
        c.env("SHOAL_DATA_ROOT", self.data_root())
            .env("SHOAL_CGROUP_PARENT", &self.cgroup_parent)
            .env("SHOAL_HOST", format!("unix://{}", self.socket().display()));
        c
    }

    /// Runs the CLI against this host's daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Starts the CLI in the background (e.g. `logs -f`); its stdout goes to a file that
    /// [`BackgroundCli::stdout`] reads. Dropping it kills it.
    pub fn spawn_cli(&self, args: &[&str]) -> BackgroundCli {
        let out = self.data_root().join(format!(
            "cli-{}.out",
            NEXT_CLI.fetch_add(1, Ordering::Relaxed)
        ));
        let child = self
            .cmd()
            .args(args)
            .stdout(fs::File::create(&out).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        BackgroundCli { child, out }
    }

    /// Runs the CLI and fails the test if it fails; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `image import` of the test image (busybox, as `shoal-test/busybox`).
    pub fn import_test_image(&self) {
        self.ok(&[
            "image",
            "import",
            fixtures().join("busybox-oci").to_str().unwrap(),
        ]);
    }

    /// The test image imported and a single-node swarm made, on this host's daemon.
    pub fn init_swarm(&self) {
        self.import_test_image();
        self.ok(&["swarm", "init", "--listen-addr", "127.0.0.1:0"]);
    }

    /// Starts the daemon and waits until it answers.
    pub fn start_daemon(&self) -> DaemonProc {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_root().join("daemon.log"))
            .unwrap();
        let mut cmd = self.cmd();
        if let Some((ns, hostname)) = &self.netns {
            // in the host's network namespace, with its own host name (nsenter, not
            // `ip netns exec`, which remounts /sys and so hides the cgroup mounts)
            cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/run/netns/{ns}"))
                .args(["unshare", "--uts", "sh", "-c"])
                .arg(format!(
                    "hostname {hostname} && exec {} daemon",
                    shoal_bin().display()
                ))
                .env("SHOAL_DATA_ROOT", self.data_root())
                .env("SHOAL_CGROUP_PARENT", &self.cgroup_parent)
                .env("SHOAL_HOST", format!("unix://{}", self.socket().display()));
        } else {
            cmd.arg("daemon");
        }
        let child = cmd
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .env("SHOAL_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        // killed if it never answers, as when it is dropped
        let daemon = DaemonProc { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.cli(&["node", "ls"]);
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || err.contains("not a swarm manager") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer within 30 s: {err}\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.data_root().join("daemon.log")).unwrap_or_default()
    }
}

static NEXT_CLI: AtomicUsize = AtomicUsize::new(0);

/// A CLI command running in the background; killed when dropped.
pub struct BackgroundCli {
    child: std::process::Child,
    out: PathBuf,
}

impl BackgroundCli {
    /// What it has printed so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for BackgroundCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DaemonProc {
    /// kill -9, and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The names in directory `dir` (none if it does not exist).
#[allow(dead_code)] // (not every test file lists one)
pub fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A busybox shell command serving `body` at `/` and the client's address at
/// `/cgi-bin/ip` on port 80.
#[allow(dead_code)] // (not every test file serves HTTP)
pub fn httpd_cmd(body: &str) -> String {
    format!(
        "mkdir -p /tmp/www/cgi-bin && echo {body} > /tmp/www/index.html && \
         printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /tmp/www/cgi-bin/ip && \
         chmod +x /tmp/www/cgi-bin/ip && exec httpd -f -p 80 -h /tmp/www"
    )
}

/// The address `/cgi-bin/ip` of [`httpd_cmd`] reports, as an IPv4 address (busybox
/// httpd says `[::ffff:10.0.1.6]`).
#[allow(dead_code)] // (not every test file serves HTTP)
pub fn client_ip(remote_addr: &str) -> String {
    remote_addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_start_matches("::ffff:")
        .to_string()
}

/// `busybox wget URL` from inside a namespace (at most 3 s): its output, or its error.
#[allow(dead_code)] // (not every test file fetches)
pub fn wget_in(netns: &Path, url: &str) -> Result<String, String> {
    // (Debian's busybox wget crashes with -T: the timeout comes from timeout(1))
    let out = Command::new("timeout")
        .arg("3")
        .arg("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["busybox", "wget", "-q", "-O", "-", url])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{} (exit {:?})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status.code()
        ))
    }
}

/// The IPv4 addresses in network namespace `netns` (of device `dev` only, if given),
/// without their prefix length; none if the namespace cannot be entered.
#[allow(dead_code)] // (not every test file reads addresses)
pub fn ipv4_addrs(netns: &Path, dev: Option<&str>) -> Vec<String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .args(["ip", "-4", "-o", "addr", "show"]);
    if let Some(d) = dev {
        cmd.args(["dev", d]);
    }
    let Ok(out) = cmd.output() else {
        return vec![];
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let a = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
            Some(a.split('/').next()?.to_string())
        })
        .collect()
}

/// The addresses `name` resolves to from a task's namespace, through its resolver.
#[allow(dead_code)] // (not every test file resolves)
pub fn resolve(netns: &Path, name: &str) -> std::collections::BTreeSet<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["busybox", "nslookup", name, "127.0.0.11"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // busybox prints the server first, then "Name: …" and "Address: …" per answer
    text.split("Name:")
        .skip(1)
        .flat_map(|part| {
            part.lines()
                .filter_map(|l| l.trim().strip_prefix("Address:"))
                .map(|a| a.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `--format json` output: one JSON object per line.
pub fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A host with its daemon, the test image imported, and a single-node swarm.
/// `s` with its `%XX` escapes decoded (a grpc-message header's encoding).
#[allow(dead_code)] // (not every test file reads gRPC headers)
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            s.get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[allow(dead_code)] // (not every test file makes one)
pub fn swarm_host() -> (Host, DaemonProc) {
    let h = Host::new();
    let d = h.start_daemon();
    h.init_swarm();
    (h, d)
}

/// Polls `f` (blocking) until it returns Some, failing after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running container of host `h` whose inspect says `needle` (an env var), not in
/// `seen`: its ID and pid.
#[allow(dead_code)] // (the update tests')
pub fn running_container_with(h: &Host, seen: &[String], needle: &str) -> Option<(String, i64)> {
    json_lines(&h.ok(&["container", "ls", "--format", "json"]))
        .into_iter()
        .filter_map(|c| c["ID"].as_str().map(String::from))
        .filter(|id| !seen.contains(id))
        .find_map(|id| {
            let i: serde_json::Value =
                serde_json::from_str(&h.ok(&["container", "inspect", &id])).ok()?;
            let pid = i["pid"].as_i64().filter(|p| *p > 0)?;
            i.to_string().contains(needle).then_some((id, pid))
        })
}

/// kill -9 of a process.
#[allow(dead_code)] // (not every test file kills)
pub fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// The files under `dir` (not following links) that hold `marker` in plain: as is, or
/// base64-encoded at any of the three alignments (Raft's entries carry store batches
/// as base64, and JSON answers carry bytes so).
#[allow(dead_code)] // (the secrets tests')
pub fn files_holding(dir: &Path, marker: &[u8]) -> Vec<PathBuf> {
    use base64::Engine as _;
    let mut forms = vec![marker.to_vec()];
    for pad in 0..3 {
        let mut m = vec![0u8; pad];
        m.extend_from_slice(marker);
        let e = base64::engine::general_purpose::STANDARD.encode(&m);
        let from = (pad * 4).div_ceil(3) + 1;
        forms.push(e.as_bytes()[from..e.len() - 4].to_vec());
    }
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(p);
            } else if t.is_file() {
                let bytes = fs::read(&p).unwrap_or_default();
                if forms
                    .iter()
                    .any(|f| bytes.windows(f.len()).any(|w| w == f.as_slice()))
                {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// A marker no file holds by chance: `len` hexadecimal characters.
#[allow(dead_code)] // (the secrets tests')
pub fn unique_marker(len: usize) -> String {
    let mut s = String::new();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ ((std::process::id() as u64) << 32);
    while s.len() < len {
        // splitmix64
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        s.push_str(&format!("{:016x}", z ^ (z >> 31)));
    }
    s.truncate(len);
    s
}
