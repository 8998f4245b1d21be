//! The holes a probe found, as an attacker and a careless operator would use them: a
//! local user reading the swarm's secrets, a task handing a host user root, a container
//! raising its own limits or seeing the host's processes. Each test does the attack for
//! real (a non-root user made by the test, containers doing the attack) and would pass
//! the attack through without its fix. As root; through scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_runtime::container::health::HealthStatus;
use shoal_runtime::container::logs::{read_logs, LogQuery};
use shoal_runtime::container::spec::{ContainerSpec, HealthCheck, MountKind, MountSpec};

use common::*;

/// A uid and gid no account has: the local user of the attacks.
const NOBODY: u32 = 54_321;

/// Runs `sh -c script` as [`NOBODY`]; its exit status and output.
fn as_local_user(script: &str) -> (bool, String) {
    let out = Command::new("/bin/sh")
        .args(["-c", script])
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// The one task's container directory of a service (on this single node).
fn task_dir(h: &Host) -> PathBuf {
    let containers = h.data_root().join("containers");
    wait_for("the task's container", Duration::from_secs(30), || {
        std::fs::read_dir(&containers)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("container.json").is_file())
    })
}

#[test]
fn a_local_user_can_read_or_run_nothing_under_the_data_root() {
    let h = Host::new();
    let root = h.data_root().to_path_buf();
    // a data root as older versions left it: open to everyone
    std::fs::set_permissions(&root, PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(root.join("swarm")).unwrap();
    std::fs::set_permissions(root.join("swarm"), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(root.join("swarm/old.json"), b"{}").unwrap();
    std::fs::set_permissions(
        root.join("swarm/old.json"),
        PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let _d = h.start_daemon();
    h.init_swarm();
    // the task leaves a setuid-root copy of a binary in its writable layer (the
    // CVE-2021-41091 attack) and writes its secret to its log
    h.ok(&[
        "service",
        "create",
        "--name",
        "sec",
        "-e",
        "SECRET_VALUE=hunter2-env",
        "shoal-test/busybox",
        "sh",
        "-c",
        "cp /bin/busybox /tmp/y && chmod 4755 /tmp/y && echo hunter2-log && sleep 3600",
    ]);
    let task = task_dir(&h);
    let planted = task.join("upper/tmp/y");
    wait_for("the setuid copy", Duration::from_secs(30), || {
        std::fs::metadata(&planted)
            .is_ok_and(|m| m.mode() & 0o4000 != 0)
            .then_some(())
    });
    let raft = root.join("swarm/raft.redb");
    let secrets = [
        raft.clone(),
        root.join("swarm/node.json"),
        root.join("swarm/old.json"),
        root.join("certificates/swarm-node.key"),
        task.join("container.json"),
        task.join("bundle/config.json"),
        task.join("logs/container.log"),
        root.join("swarm/assignments.pb"),
        root.join("containers/keeper.log"),
    ];
    // what the probe read and ran
    for f in &secrets {
        assert!(f.exists(), "{} should exist for this test", f.display());
        let (ok, out) = as_local_user(&format!("cat '{}' >/dev/null", f.display()));
        assert!(!ok, "a local user read {}", f.display());
        assert!(out.contains("Permission denied"), "{}: {out}", f.display());
    }
    let (ok, out) = as_local_user(&format!("'{}' id -u", planted.display()));
    assert!(!ok, "a local user ran the task's setuid binary: {out}");
    for dir in [&root, &root.join("images/layers"), &task.join("upper")] {
        let (ok, out) = as_local_user(&format!("ls '{}'", dir.display()));
        assert!(!ok, "a local user listed {}: {out}", dir.display());
    }
    // and by mode: the root and what holds state are root's alone, files 0600
    assert_eq!(mode(&root), 0o700, "the data root");
    for d in ["swarm", "certificates", "containers", "images"] {
        assert_eq!(mode(&root.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&task), 0o700, "the task's container directory");
    for f in &secrets {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // what the container sees keeps the container's modes: its root is 0755, and the
    // setuid bit it set is its own
    assert_eq!(mode(&task.join("upper")), 0o755);
    assert_eq!(mode(&planted) & 0o4000, 0o4000);
    let ps = h.ok(&["service", "ps", "sec"]);
    assert!(ps.contains("Running"), "{ps}");
    // the socket is root's: a local user is told so, not to start a daemon that runs
    let (ok, out) = as_local_user(&format!(
        "SHOAL_HOST=unix://{} '{}' service ls",
        h.socket().display(),
        shoal_bin().display()
    ));
    assert!(!ok);
    assert!(out.contains("permission denied"), "{out}");
    assert!(!out.contains("Is the shoal daemon running"), "{out}");
    // and by its own mode, not only the data root's: with the root opened to passers-by
    // (as a socket in /run/shoal is), the socket still refuses
    assert_eq!(mode(&h.socket()), 0o600, "the socket");
    std::fs::set_permissions(&root, PermissionsExt::from_mode(0o711)).unwrap();
    let (ok, out) = as_local_user(&format!(
        "SHOAL_HOST=unix://{} '{}' service ls",
        h.socket().display(),
        shoal_bin().display()
    ));
    std::fs::set_permissions(&root, PermissionsExt::from_mode(0o700)).unwrap();
    assert!(!ok, "a local user listed services: {out}");
    assert!(out.contains("permission denied"), "{out}");
}

/// `shoal ... | head` ends the command quietly, as any Unix tool's: no panic on the
/// broken pipe.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let h = Host::new();
    let _d = h.start_daemon();
    h.init_swarm();
    // many tasks: more lines than `head -1` reads
    h.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "8",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    let lines = ["service", "ps", "web"];
    for args in [
        &["node", "ls"][..],
        &["swarm", "join-token", "worker"],
        &lines,
        &["service", "ls"],
    ] {
        let mut child = Command::new(shoal_bin())
            .args(args)
            .env("SHOAL_DATA_ROOT", h.data_root())
            .env("SHOAL_HOST", format!("unix://{}", h.socket().display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // nobody reads: the first write finds the pipe broken
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {err}");
    }
    // as a user types it
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} service ps web | head -1",
            shoal_bin().display()
        ))
        .env("SHOAL_DATA_ROOT", h.data_root())
        .env("SHOAL_HOST", format!("unix://{}", h.socket().display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(err.is_empty(), "`service ps web | head -1` said: {err}");
    let got = String::from_utf8_lossy(&piped.stdout);
    assert!(got.starts_with("ID ") && got.lines().count() == 1, "{got}");
}

/// A gRPC call on the daemon's socket with `body` as its whole request body (its
/// length prefix too): the grpc-status and grpc-message the daemon answers, or None if
/// it reset the stream (a refusal that came while curl was still sending).
fn socket_call(h: &Host, method: &str, body: &[u8]) -> Option<(String, String)> {
    let file = h.data_root().join("call.body");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "20"])
        .arg("--unix-socket")
        .arg(h.socket())
        .args(["-D", "-", "-o", "/dev/null", "-X", "POST"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://localhost/{method}"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.code() == Some(92) {
        return None;
    }
    assert!(out.status.success(), "{method}: {out:?}");
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    Some((
        field("grpc-status:"),
        percent_decode(&field("grpc-message:")),
    ))
}

/// The daemon's socket takes garbage, half-spoken HTTP/2, empty, malformed and huge
/// messages (a 4 GiB length prefix, 5 MiB of body): each is refused, and the daemon
/// goes on answering, with nothing lost.
#[test]
fn the_socket_refuses_garbage_empty_malformed_and_huge_messages() {
    use std::io::{Read, Write};
    let (h, _d) = swarm_host();
    h.ok(&["network", "create", "-d", "overlay", "kept"]);
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0xff; 4096]);
    let mut garbage = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    garbage.extend((0..65536u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
    for bytes in [&garbage[..], &preface[..], &[][..]] {
        let mut c = std::os::unix::net::UnixStream::connect(h.socket()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.write_all(bytes);
        let _ = c.shutdown(std::net::Shutdown::Write);
        // the daemon closes it, or answers with an HTTP/2 error and closes: it does not
        // leave it hanging (a read that times out)
        let mut buf = [0; 4096];
        let end = loop {
            match c.read(&mut buf) {
                Ok(n) if n > 0 => continue,
                r => break r,
            }
        };
        match end {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "{} bytes sent: the connection was left open: {e}",
                bytes.len()
            ),
        }
    }
    let method = "shoal.v1.Control/GetNetwork";
    // an empty message: a request with no ID, refused as such
    let (code, msg) = socket_call(&h, method, &[0, 0, 0, 0, 0]).unwrap();
    assert_eq!(code, "3", "{msg}");
    assert!(msg.contains("it is empty"), "{msg}");
    // no message at all
    let (code, msg) = socket_call(&h, method, &[]).unwrap();
    assert!(!code.is_empty() && code != "0", "{code} {msg}");
    // a message that is no protobuf
    let (code, msg) = socket_call(&h, method, &[0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(code, "13", "{msg}");
    assert!(msg.contains("decode"), "{msg}");
    // a length prefix of 4 GiB, and 5 MiB of message: above the 4 MiB a message may have
    // (tonic answers OUT_OF_RANGE)
    let (code, msg) = socket_call(&h, method, &[0, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(code, "11", "{msg}");
    assert!(
        msg.contains("found 4294967295 bytes, the limit is: 4194304"),
        "{msg}"
    );
    let mut big = vec![0, 0, 0x50, 0, 0];
    big.extend(std::iter::repeat_n(0x0a, 5 << 20));
    if let Some((code, msg)) = socket_call(&h, method, &big) {
        assert_eq!(code, "11", "{msg}");
        assert!(msg.contains("found 5242880 bytes"), "{msg}");
    }
    // and the daemon goes on, with what it had
    let inspect = h.ok(&["network", "inspect", "kept"]);
    assert!(inspect.contains("kept"), "{inspect}");
    assert!(!h.daemon_log().contains("panicked"), "{}", h.daemon_log());
}

fn sh(script: &str) -> ContainerSpec {
    ContainerSpec {
        image: "shoal-test/busybox".into(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

/// The container's stdout so far, in one string.
fn output(rt: &shoal_runtime::container::ContainerRuntime, id: &str) -> String {
    read_logs(&rt.logs_dir(id), &LogQuery::default())
        .unwrap()
        .into_iter()
        .map(|e| e.log)
        .collect()
}

/// Its memory limit as the host's cgroup says (v1 or v2).
fn host_memory_limit(host: &Host, id: &str) -> String {
    host.cgroup_value(id, &["memory.limit_in_bytes", "memory.max"])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_cannot_raise_its_own_limits() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    // what the probe did, on either cgroup version, from the container's main process
    // and from a process exec'd into it
    let raise =
        "for f in /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max; do \
                 [ -e $f ] && { echo 9999999999 2>/dev/null > $f && echo raised || echo refused; }; done; true";
    let spec = ContainerSpec {
        memory_limit: Some(64 << 20),
        ..sh(&format!("{raise}; sleep 60"))
    };
    rt.prepare("lim", &spec).await.unwrap();
    rt.start("lim").await.unwrap();
    let said = eventually("the attempt", Duration::from_secs(20), async || {
        let o = output(&rt, "lim");
        (!o.is_empty()).then_some(o)
    })
    .await;
    assert_eq!(said, "refused\n", "the main process");
    let (code, out, _) = rt
        .exec(
            "lim",
            vec!["sh".into(), "-c".into(), raise.into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!((code, out.as_str()), (0, "refused\n"), "an exec'd process");
    assert_eq!(host_memory_limit(&host, "lim"), (64u64 << 20).to_string());
    // and the limits are still there to read, as programs that size themselves do
    let (_, mounts, _) = rt
        .exec(
            "lim",
            vec![
                "grep".into(),
                "/sys/fs/cgroup".into(),
                "/proc/self/mounts".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // the mount on top at each path (the last one listed) is what the container reaches
    let mut top = std::collections::BTreeMap::new();
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        top.insert(f[1], f[3]);
    }
    assert!(top.contains_key("/sys/fs/cgroup"), "{mounts}");
    for (at, opts) in &top {
        assert!(
            opts.split(',').any(|o| o == "ro"),
            "{at} is {opts}: {mounts}"
        );
    }
    rt.stop("lim", Some(Duration::from_millis(100)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_health_checks_run_confined_like_the_container() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    let confined = "grep -q '^Seccomp:[[:space:]]*2' /proc/self/status && grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status";
    let spec = ContainerSpec {
        healthcheck: Some(HealthCheck {
            test: vec!["CMD-SHELL".into(), confined.into()],
            interval: Some(Duration::from_millis(200)),
            timeout: Some(Duration::from_secs(5)),
            retries: Some(1),
            start_period: None,
            start_interval: None,
        }),
        ..sh("umask; sleep 60")
    };
    rt.prepare("conf", &spec).await.unwrap();
    rt.start("conf").await.unwrap();
    let mut health = rt.watch_health("conf").unwrap();
    let h = tokio::time::timeout(
        Duration::from_secs(20),
        health.wait_for(|h| h.status != HealthStatus::Starting),
    )
    .await
    .expect("a health verdict")
    .unwrap()
    .clone();
    assert_eq!(
        h.status,
        HealthStatus::Healthy,
        "the health check is confined: {h:?}"
    );
    let exec = async |script: &str| {
        rt.exec(
            "conf",
            vec!["sh".into(), "-c".into(), script.into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap()
    };
    let status = exec("grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status")
        .await
        .1;
    let init = std::fs::read_to_string(format!(
        "/proc/{}/status",
        rt.inspect("conf").await.unwrap().pid.unwrap()
    ))
    .unwrap();
    for key in ["Seccomp:", "NoNewPrivs:", "CapEff:"] {
        let line = |s: &str| s.lines().find(|l| l.starts_with(key)).map(str::to_string);
        assert_eq!(
            line(&status),
            line(&init),
            "{key} of exec as of the container's init"
        );
    }
    // the profile really applies: a user namespace needs no capability, only seccomp
    // stops it
    let (code, _, _) = exec("unshare -U true").await;
    assert_ne!(code, 0, "unshare was allowed in exec");
    // files made by the container's processes get the container's mask, not the keeper's
    assert_eq!(exec("umask").await.1.trim(), "0022");
    assert_eq!(
        output(&rt, "conf").trim(),
        "0022",
        "the main process's umask"
    );
    rt.stop("conf", Some(Duration::from_millis(100)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mounts_over_proc_and_sys_are_refused() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    for (source, target) in [("/proc", "/proc"), ("/sys", "/sys"), ("/etc", "/proc/1")] {
        let spec = ContainerSpec {
            mounts: vec![MountSpec {
                kind: MountKind::Bind,
                source: source.into(),
                target: target.into(),
                read_only: true,
                tmpfs_size: None,
            }],
            ..sh("ls /proc")
        };
        let err = rt.prepare("p", &spec).await.unwrap_err().to_string();
        assert!(
            err.contains(target) && err.contains("mounts"),
            "{target}: {err}"
        );
    }
}

/// A host whose data root is a tmpfs of `size` (its drop unmounts everything under
/// its data root, this tmpfs too), and the root.
fn host_on_tmpfs(size: &str) -> (Host, PathBuf) {
    let h = Host::new();
    let root = h.data_root().to_path_buf();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(&root)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs on {}", root.display());
    (h, root)
}

/// A state file replaced on a full disk keeps its old content whole (a plain write
/// truncates it first: the next reader finds it cut or empty), and leaves no temporary
/// file behind.
#[test]
fn a_state_file_written_on_a_full_disk_keeps_its_old_content() {
    use shoal_runtime::files::{is_no_space, replace_file, write_atomic};
    use std::io::Write;
    let (_h, root) = host_on_tmpfs("64k");
    let p = root.join("state.json");
    write_atomic(&p, b"old content").unwrap();
    let mut filler = std::fs::File::create(root.join("filler")).unwrap();
    let e = loop {
        if let Err(e) = filler.write_all(&[0; 4096]) {
            break e;
        }
    };
    assert!(is_no_space(&e), "{e}");
    for (what, res) in [
        ("write_atomic", write_atomic(&p, &[b'x'; 16 << 10])),
        ("replace_file", replace_file(&p, &[b'x'; 16 << 10])),
    ] {
        let e = res.expect_err("a write on a full disk");
        assert!(is_no_space(&e), "{what}: {e}");
        let now = std::fs::read(&p).unwrap();
        assert!(
            now == b"old content",
            "{what}: the old content, whole: {} bytes",
            now.len()
        );
    }
    let mut names = dir_names(&root);
    names.sort();
    assert_eq!(names, ["filler", "state.json"], "no temporary file left");
}

/// A container start on a full disk is refused before libcontainer writes its state
/// (which it would leave cut), naming the full disk; the keeper goes on answering, alone
/// (no helper of it left behind), and the same container starts once there is room.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_start_on_a_full_disk_is_refused_and_the_keeper_goes_on() {
    let (host, root) = host_on_tmpfs("48m");
    let rt = host.runtime_with_image().await;
    rt.prepare("full", &sh("echo started")).await.unwrap();
    let filler = root.join("filler");
    let free = shoal_runtime::files::free_bytes(&root).unwrap();
    let fill = Command::new("fallocate")
        .args(["-l", &(free - (1 << 20)).to_string()])
        .arg(&filler)
        .status()
        .unwrap();
    assert!(fill.success());
    let e = rt.start("full").await.unwrap_err().to_string();
    assert!(
        e.contains("below the 4 MiB a start needs") && e.contains("No space left on device"),
        "{e}"
    );
    // the keeper answers, and is the only one for this root
    let list = rt.list().await.unwrap();
    assert_eq!(list.len(), 1);
    let keepers = || {
        let needle = format!("--root\0{}/containers", root.display());
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .filter(|c| c.contains("\0keeper\0") && c.contains(&needle))
            .count()
    };
    assert_eq!(keepers(), 1, "one keeper");
    std::fs::remove_file(&filler).unwrap();
    rt.start("full").await.unwrap();
    let x = rt.wait("full").await.unwrap();
    assert_eq!(x.code, 0);
    assert_eq!(output(&rt, "full"), "started\n");
    rt.remove("full").await.unwrap();
}

/// The data root on a 64 MiB tmpfs, filled: a change is refused at once, naming the
/// full disk, and nothing of it is kept; reads (`service ls`, `service ps`,
/// `container ls`) answer; once space is back, changes work again with no restart.
#[test]
fn a_full_disk_refuses_changes_keeps_reads_and_recovers() {
    let (h, root) = host_on_tmpfs("64m");
    let _d = h.start_daemon();
    h.init_swarm();
    let sleeper = |name: &str| {
        h.cli(&[
            "service",
            "create",
            "--name",
            name,
            "shoal-test/busybox",
            "sleep",
            "3600",
        ])
    };
    assert!(sleeper("before").status.success());
    // fill it: 256 KiB left (what a Raft write that went ahead would fail on)
    let free = || shoal_runtime::files::free_bytes(&root).unwrap();
    let filler = root.join("filler");
    let fill = Command::new("fallocate")
        .args(["-l", &(free() - (256 << 10)).to_string()])
        .arg(&filler)
        .status()
        .unwrap();
    assert!(fill.success());
    let started = std::time::Instant::now();
    let out = sleeper("during");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a change on a full disk was accepted"
    );
    assert!(err.contains("no space left on device"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after a timeout: {:?}",
        started.elapsed()
    );
    // reads answer, and the refused service is nowhere
    let ls = h.ok(&["service", "ls"]);
    assert!(ls.contains("before") && !ls.contains("during"), "{ls}");
    assert!(h.ok(&["service", "ps", "before"]).contains("Running"));
    h.ok(&["container", "ls"]);
    // space back: changes work again, with the same daemon
    std::fs::remove_file(&filler).unwrap();
    let out = sleeper("after");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ls = h.ok(&["service", "ls"]);
    assert!(ls.contains("after"), "{ls}");
}
