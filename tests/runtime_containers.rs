//! The runtime's containers for real: libcontainer through the keeper, overlayfs, cgroups,
//! logs, health checks and re-adoption. As root; run through scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::time::Duration;

use shoal_runtime::container::health::HealthStatus;
use shoal_runtime::container::logs::{read_logs, LogQuery, Stream};
use shoal_runtime::container::spec::{ContainerSpec, HealthCheck, LogConfig, MountKind, MountSpec};
use shoal_runtime::container::{ContainerError, Status};

use common::*;

const IMAGE: &str = "shoal-test/busybox";

/// The container's stdout, line by line.
fn stdout_of(rt: &shoal_runtime::container::ContainerRuntime, id: &str) -> Vec<String> {
    let q = LogQuery {
        stderr: false,
        ..Default::default()
    };
    read_logs(&rt.logs_dir(id), &q)
        .unwrap()
        .into_iter()
        .map(|e| e.log)
        .collect()
}

fn sh(script: &str) -> ContainerSpec {
    ContainerSpec {
        image: IMAGE.into(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

/// Waits (30 s at most) until a process waits for an flock on `path`: in /proc/locks, a
/// waiter's line is "N: -> FLOCK ... MAJ:MIN:INODE ...", the device in hex.
async fn until_flock_waiter_on(path: &std::path::Path, what: &str) {
    eventually(what, Duration::from_secs(30), async || {
        flock_waiter_on(path).then_some(())
    })
    .await;
}

fn flock_waiter_on(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).unwrap();
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(m.dev()),
        libc::minor(m.dev()),
        m.ino()
    );
    fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains("->") && l.split_whitespace().any(|f| f == id))
}

/// A prepare waits while another process's start-up cleanup holds the containers' lock
/// (so that the cleanup never finds it half-made), and goes on once it is let go.
#[tokio::test(flavor = "multi_thread")]
async fn a_prepare_waits_for_a_cleanup_in_progress() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    let lock_path = host.data_root().join("containers/.lock");
    let cleaning = nix::fcntl::Flock::lock(
        fs::OpenOptions::new().write(true).open(&lock_path).unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();
    let check = async {
        until_flock_waiter_on(&lock_path, "the prepare to wait for the lock").await;
        assert!(
            !rt.dir("late").exists(),
            "made while a cleanup held the lock"
        );
        drop(cleaning);
    };
    let spec = sh("true");
    let (prepared, ()) = tokio::join!(rt.prepare("late", &spec), check);
    prepared.unwrap();
    assert_eq!(rt.inspect("late").await.unwrap().status, Status::Prepared);
    rt.remove("late").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_with_exit_code_and_separate_streams() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    rt.prepare("c1", &sh("echo out1; echo err1 >&2; echo out2; cat /etc/shoal-release; test -e /etc/removed-by-layer2 || echo whiteout-ok; grep SigIgn /proc/self/status; exit 3")).await.unwrap();
    assert_eq!(rt.inspect("c1").await.unwrap().status, Status::Prepared);
    rt.start("c1").await.unwrap();
    let x = rt.wait("c1").await.unwrap();
    assert_eq!((x.code, x.signal, x.oom, x.known), (3, None, false, true));
    let out: Vec<String> = stdout_of(&rt, "c1");
    assert_eq!(
        out[..4],
        ["out1\n", "out2\n", "shoal-test 1\n", "whiteout-ok\n"]
    );
    let ignored =
        u64::from_str_radix(out[4].trim().strip_prefix("SigIgn:\t").unwrap(), 16).unwrap();
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE is not ignored in the container: {}",
        out[4]
    );
    let err = read_logs(
        &rt.logs_dir("c1"),
        &LogQuery {
            stdout: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(err.len(), 1);
    assert_eq!(
        (err[0].stream, err[0].log.as_str()),
        (Stream::Stderr, "err1\n")
    );
    assert_eq!(rt.inspect("c1").await.unwrap().status, Status::Exited);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_in_cgroup_and_oom_reported() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    let spec = ContainerSpec {
        memory_limit: Some(32 << 20),
        pids_limit: Some(64),
        ..sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; sleep 60")
    };
    rt.prepare("lim", &spec).await.unwrap();
    rt.start("lim").await.unwrap();
    assert_eq!(
        host.cgroup_value("lim", &["memory.limit_in_bytes", "memory.max"]),
        (32u64 << 20).to_string()
    );
    assert_eq!(host.cgroup_value("lim", &["pids.max"]), "64");
    let seen = eventually(
        "the container to print its limit",
        Duration::from_secs(10),
        async || {
            read_logs(&rt.logs_dir("lim"), &LogQuery::default())
                .unwrap()
                .first()
                .map(|e| e.log.clone())
        },
    )
    .await;
    assert_eq!(
        seen.trim(),
        (32u64 << 20).to_string(),
        "the limit is visible inside too"
    );
    rt.stop("lim", Some(Duration::from_secs(5))).await.unwrap();

    let oom = ContainerSpec {
        memory_limit: Some(16 << 20),
        ..sh("dd if=/dev/zero of=/dev/null bs=64M count=1")
    };
    rt.prepare("oom", &oom).await.unwrap();
    rt.start("oom").await.unwrap();
    let x = rt.wait("oom").await.unwrap();
    assert!(x.oom, "OOM kill reported: {x:?}");
    assert_eq!((x.code, x.signal), (137, Some(9)));
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_rotate_by_size() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    let spec = ContainerSpec {
        log: LogConfig {
            max_size: 2048,
            max_files: 2,
        },
        ..sh("i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done")
    };
    rt.prepare("logs", &spec).await.unwrap();
    rt.start("logs").await.unwrap();
    assert_eq!(rt.wait("logs").await.unwrap().code, 0);
    let files: Vec<_> = fs::read_dir(rt.logs_dir("logs"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 2, "container.log and container.log.1");
    assert!(files.iter().all(|f| f.metadata().unwrap().len() <= 2048));
    let all = read_logs(&rt.logs_dir("logs"), &LogQuery::default()).unwrap();
    assert_eq!(all.last().unwrap().log, "line-299\n");
    assert!(all.len() < 300, "old lines rotated away");
    let first: u32 = all[0]
        .log
        .trim()
        .strip_prefix("line-")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        all.len() as u32,
        300 - first,
        "a contiguous tail, nothing lost in between"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_check_states() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    let check = HealthCheck {
        test: vec![
            "CMD-SHELL".into(),
            "test -f /tmp/ok && { test ! -f /tmp/hang || sleep 60; }".into(),
        ],
        interval: Some(Duration::from_millis(200)),
        timeout: Some(Duration::from_secs(1)),
        retries: Some(2),
        start_period: None,
        start_interval: None,
    };
    // healthy while /tmp/ok exists (the file comes and goes on the test's word, via
    // exec), and the check hangs while /tmp/hang does
    let spec = ContainerSpec {
        healthcheck: Some(check),
        ..sh("sleep 120")
    };
    rt.prepare("h", &spec).await.unwrap();
    rt.start("h").await.unwrap();
    let mut rx = rt.watch_health("h").unwrap();
    assert_eq!(rx.borrow().status, HealthStatus::Starting);
    let wait_for = async |rx: &mut tokio::sync::watch::Receiver<_>, want: HealthStatus| {
        tokio::time::timeout(
            Duration::from_secs(20),
            rx.wait_for(|h: &shoal_runtime::container::health::Health| h.status == want),
        )
        .await
        .expect("health state")
        .unwrap()
        .clone()
    };
    let h = wait_for(&mut rx, HealthStatus::Unhealthy).await;
    assert!(h.failing_streak >= 2 && h.log.iter().all(|p| p.exit_code != 0));
    let touch = async |file: &str| {
        let (code, _, _) = rt
            .exec(
                "h",
                vec!["touch".into(), file.into()],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(code, 0, "touch {file}");
    };
    touch("/tmp/ok").await;
    let h = wait_for(&mut rx, HealthStatus::Healthy).await;
    assert_eq!(h.failing_streak, 0);
    assert_eq!(
        rt.inspect("h").await.unwrap().health.unwrap().status,
        HealthStatus::Healthy
    );
    // a check that outlives its timeout counts as a failure
    touch("/tmp/hang").await;
    let h = wait_for(&mut rx, HealthStatus::Unhealthy).await;
    let last = h.log.last().unwrap();
    assert_eq!(last.exit_code, -1, "{last:?}");
    assert!(
        last.output.contains("health check exceeded timeout (1s)"),
        "{last:?}"
    );
    // an exec that outlives its timeout is cut off, and says so
    let (code, out, timed_out) = rt
        .exec(
            "h",
            vec!["sleep".into(), "5".into()],
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    assert!(timed_out && code == -1, "{code} {out}");
    rt.remove("h").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_shared_and_writes_private() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    for id in ["a", "b"] {
        rt.prepare(id, &sh("echo mine > /etc/shoal-release; sleep 60"))
            .await
            .unwrap();
        rt.start(id).await.unwrap();
    }
    let img = rt.images().resolve(IMAGE).unwrap();
    let layer = rt
        .images()
        .layer_path(&img.layers[0].diff_id)
        .to_string_lossy()
        .into_owned();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for id in ["a", "b"] {
        let rootfs = rt.dir(id).join("rootfs").to_string_lossy().into_owned();
        let line = info
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(rootfs.as_str()))
            .expect("rootfs mounted");
        assert!(
            line.contains("overlay") && line.contains(&layer),
            "both rootfs stack the one unpacked layer: {line}"
        );
    }
    eventually("a's write", Duration::from_secs(10), async || {
        fs::read_to_string(rt.dir("a").join("upper/etc/shoal-release")).ok()
    })
    .await;
    assert_eq!(
        fs::read_to_string(rt.dir("a").join("upper/etc/shoal-release")).unwrap(),
        "mine\n"
    );
    assert_eq!(
        fs::read_to_string(format!(
            "{layer}/../{}/etc/shoal-release",
            img.layers[1].diff_id.hex()
        ))
        .unwrap(),
        "shoal-test 1\n",
        "the image layer is untouched"
    );
    for id in ["a", "b"] {
        rt.remove(id).await.unwrap();
    }
}

/// A tmpfs on `dir`, standing for a container's mounted rootfs.
fn mount_tmpfs(dir: &std::path::Path) {
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_leaves_nothing_and_leftovers_are_cleaned_at_start() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    rt.prepare("gone", &sh("sleep 60")).await.unwrap();
    rt.start("gone").await.unwrap();
    assert!(!host.cgroup_dirs().is_empty());
    assert!(!host.mounts().is_empty());
    rt.remove("gone").await.unwrap();
    assert!(
        host.cgroup_dirs().is_empty(),
        "cgroups left: {:?}",
        host.cgroup_dirs()
    );
    assert!(host.mounts().is_empty(), "mounts left: {:?}", host.mounts());
    assert!(!rt.dir("gone").exists());
    assert!(!host
        .data_root()
        .join("containers/libcontainer/gone")
        .exists());
    assert!(matches!(
        rt.remove("gone").await,
        Err(ContainerError::NotFound(_))
    ));

    // what a crash in the middle of a prepare leaves: a mounted rootfs, no container.json,
    // and a stray cgroup
    let half = rt.dir("half");
    fs::create_dir_all(half.join("rootfs")).unwrap();
    mount_tmpfs(&half.join("rootfs"));
    let hierarchy = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "/sys/fs/cgroup" // v2
    } else {
        "/sys/fs/cgroup/memory"
    };
    let stray = std::path::Path::new(hierarchy)
        .join(host.cgroup_parent.trim_start_matches('/'))
        .join("stray");
    fs::create_dir_all(&stray).unwrap();
    // and one that another process is preparing right now: it holds the containers' lock
    // shared, so the cleanup waits, and finds it complete (a cleanup that did not wait
    // unmounted such a container's fresh rootfs, and it started with an empty root)
    let busy = rt.dir("busy");
    fs::create_dir_all(busy.join("rootfs")).unwrap();
    mount_tmpfs(&busy.join("rootfs"));
    let lock_path = host.data_root().join("containers/.lock");
    let preparing = nix::fcntl::Flock::lock(
        fs::File::create(&lock_path).unwrap(),
        nix::fcntl::FlockArg::LockShared,
    )
    .unwrap();
    drop(rt);
    let finish_prepare = async {
        until_flock_waiter_on(&lock_path, "the cleanup to wait for the prepare").await;
        fs::write(busy.join("container.json"), b"{}").unwrap();
        drop(preparing);
    };
    let (_rt, ()) = tokio::join!(host.runtime(), finish_prepare);
    assert!(!half.exists(), "half-prepared container removed");
    assert!(!stray.exists(), "stray cgroup removed");
    assert_eq!(
        host.mounts().len(),
        1,
        "only the busy container's rootfs is left: {:?}",
        host.mounts()
    );
    assert!(busy.join("rootfs").exists());
    nix::mount::umount(&busy.join("rootfs")).unwrap();
    fs::remove_dir_all(&busy).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_specs_are_refused_with_reasons() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    let bind = ContainerSpec {
        mounts: vec![MountSpec {
            kind: MountKind::Bind,
            source: "/no/such/path".into(),
            target: "/x".into(),
            read_only: false,
            tmpfs_size: None,
        }],
        ..sh("true")
    };
    let e = rt.prepare("b1", &bind).await.unwrap_err().to_string();
    assert!(
        e.contains("bind source path does not exist: /no/such/path"),
        "{e}"
    );
    assert!(!rt.dir("b1").exists(), "nothing left of a refused prepare");
    let e = rt
        .prepare(
            "b2",
            &ContainerSpec {
                user: Some("ghost".into()),
                ..sh("true")
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("unable to find user ghost"), "{e}");
    let e = rt
        .prepare(
            "b3",
            &ContainerSpec {
                image: "no/such:image".into(),
                ..sh("true")
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such image"), "{e}");
    let e = rt
        .prepare("../evil", &sh("true"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid container name"), "{e}");
    assert!(host.mounts().is_empty());
    // read-only root and a non-root user, enforced
    rt.prepare(
        "ro",
        &ContainerSpec {
            read_only: true,
            user: Some("nobody".into()),
            ..sh("id -u; touch /x || echo read-only")
        },
    )
    .await
    .unwrap();
    rt.start("ro").await.unwrap();
    rt.wait("ro").await.unwrap();
    let out: Vec<String> = stdout_of(&rt, "ro");
    assert_eq!(out, ["65534\n", "read-only\n"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_concurrent_containers_do_not_hang() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    let jobs = (0..32).map(|i| {
        let rt = rt.clone();
        tokio::spawn(async move {
            let id = format!("p{i}");
            rt.prepare(&id, &sh(&format!("echo {i}"))).await.unwrap();
            rt.start(&id).await.unwrap();
            let x = rt.wait(&id).await.unwrap();
            let log = read_logs(&rt.logs_dir(&id), &LogQuery::default()).unwrap();
            rt.remove(&id).await.unwrap();
            (x.code, log.first().map(|e| e.log.clone()))
        })
    });
    let all = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(jobs))
        .await
        .expect("32 containers hung");
    for (i, r) in all.into_iter().enumerate() {
        assert_eq!(r.unwrap(), (0, Some(format!("{i}\n"))));
    }
    assert!(host.cgroup_dirs().is_empty() && host.mounts().is_empty());
}

#[test]
fn readopted_after_the_creating_process_exits() {
    let host = Host::new();
    let out = host.shoal(&[
        "image",
        "import",
        fixtures().join("busybox-docker.tar").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // one process creates the container and exits at once
    let out = host.shoal(&["container", "run", "-d", "--name", "kept", "shoal-test/busybox:saved", "sh", "-c", "echo started; read x < /tmp/go || true; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo finishing; exit 7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect = |h: &Host| -> serde_json::Value {
        serde_json::from_slice(&h.shoal(&["container", "inspect", "kept"]).stdout).unwrap()
    };
    let before = inspect(&host);
    assert_eq!(before["status"], "running");
    let pid = before["pid"].as_i64().unwrap();
    // a later process finds it as it was: same pid, still running
    let again = inspect(&host);
    assert_eq!(
        (again["status"].as_str(), again["pid"].as_i64()),
        (Some("running"), Some(pid))
    );
    // it finishes while no shoal process but the keeper is around; a new one gets the
    // exit code and every line
    let rootfs = host.data_root().join("containers/kept/rootfs/tmp/go");
    fs::write(&rootfs, b"").unwrap();
    let out = host.shoal(&["container", "wait", "kept"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
    let out = host.shoal(&["container", "logs", "kept"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\nfinishing\n");
    let out = host.shoal(&["container", "rm", "kept"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(host.cgroup_dirs().is_empty() && host.mounts().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn default_seccomp_profile_and_capabilities_apply() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    // creating a user namespace needs no capability, so only the seccomp profile stops it
    let script = "unshare -U true && echo unshare-allowed || echo unshare-blocked; hostname other 2>/dev/null && echo hostname-allowed || echo hostname-blocked";
    rt.prepare("sc", &sh(script)).await.unwrap();
    rt.prepare(
        "admin",
        &ContainerSpec {
            cap_add: vec!["SYS_ADMIN".into()],
            ..sh(script)
        },
    )
    .await
    .unwrap();
    for id in ["sc", "admin"] {
        rt.start(id).await.unwrap();
        rt.wait(id).await.unwrap();
    }
    assert_eq!(
        stdout_of(&rt, "sc"),
        ["unshare-blocked\n", "hostname-blocked\n"]
    );
    assert_eq!(
        stdout_of(&rt, "admin"),
        ["unshare-allowed\n", "hostname-allowed\n"],
        "cap-add SYS_ADMIN lifts them, as in Docker"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_escalates_to_sigkill_after_the_grace_period() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    // a main process that ignores the stop signal
    let spec = ContainerSpec {
        stop_grace_period: Some(Duration::from_millis(500)),
        ..sh("trap '' TERM; echo ready; while true; do sleep 0.1; done")
    };
    rt.prepare("stubborn", &spec).await.unwrap();
    rt.start("stubborn").await.unwrap();
    eventually("the trap to be set", Duration::from_secs(10), async || {
        (!read_logs(&rt.logs_dir("stubborn"), &LogQuery::default())
            .unwrap()
            .is_empty())
        .then_some(())
    })
    .await;
    let t = std::time::Instant::now();
    let x = rt.stop("stubborn", None).await.unwrap();
    assert_eq!(
        (x.code, x.signal),
        (137, Some(9)),
        "killed after the grace period"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "the grace period was given"
    );
    // one that honours its stop signal exits by it
    let polite = ContainerSpec {
        stop_signal: Some("SIGUSR1".into()),
        ..sh("trap 'exit 42' USR1; while true; do sleep 0.1; done")
    };
    rt.prepare("polite", &polite).await.unwrap();
    rt.start("polite").await.unwrap();
    eventually(
        "the USR1 trap to take",
        Duration::from_secs(10),
        async || {
            // the trap is set a moment after start; until then USR1 would kill sh, so wait
            // for sh to be sleeping in its loop
            let pid = rt.inspect("polite").await.unwrap().pid?;
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            (!kids.trim().is_empty()).then_some(())
        },
    )
    .await;
    assert_eq!(
        rt.stop("polite", Some(Duration::from_secs(10)))
            .await
            .unwrap()
            .code,
        42
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_ends_with_its_process_not_its_pipe() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    rt.prepare("ex", &sh("sleep 120")).await.unwrap();
    rt.start("ex").await.unwrap();
    // a background child keeps the output pipe open long after the command exits
    let t = std::time::Instant::now();
    let (code, out, timed_out) = rt
        .exec(
            "ex",
            vec![
                "sh".into(),
                "-c".into(),
                "sleep 30 & echo hi; exit 4".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!((code, out.as_str(), timed_out), (4, "hi\n", false));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "did not wait for the pipe to close"
    );
    rt.remove("ex").await.unwrap();
}

/// kill -9 of the host's keeper, and waits until it is gone.
async fn kill_keeper(host: &Host) {
    for p in host.keeper_pids() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    eventually(
        "the keeper to be gone",
        Duration::from_secs(10),
        async || host.keeper_pids().is_empty().then_some(()),
    )
    .await;
}

/// libcontainer writes `state.json` in place (truncate, then write): a crash between the
/// two leaves it empty. The keeper puts back the copy it kept, so a running container is
/// still found running (not taken for dead), and can be stopped and removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_state_file_is_put_back_from_the_kept_copy() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    rt.prepare("t", &sh("sleep 120")).await.unwrap();
    let pid = rt.start("t").await.unwrap();
    kill_keeper(&host).await;
    drop(rt);
    let state = host
        .data_root()
        .join("containers/libcontainer/t/state.json");
    assert!(std::fs::metadata(&state).unwrap().len() > 0);
    std::fs::write(&state, b"").unwrap();
    let rt = host.runtime().await; // a new keeper reads it
    let info = rt.inspect("t").await.unwrap();
    assert_eq!(
        (info.status, info.pid),
        (Status::Running, Some(pid)),
        "the same process, still running"
    );
    // (the signal goes through libcontainer, which needs the state back)
    rt.stop("t", Some(Duration::from_secs(1))).await.unwrap();
    assert_eq!(rt.inspect("t").await.unwrap().status, Status::Exited);
    rt.remove("t").await.unwrap();
    assert!(host.cgroup_dirs().is_empty() && host.mounts().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_keeper_readopts_running_containers() {
    let host = Host::new();
    let rt = host.runtime_with_image().await;
    rt.prepare("k", &sh("echo before; sleep 120"))
        .await
        .unwrap();
    let pid = rt.start("k").await.unwrap();
    eventually("the first line", Duration::from_secs(10), async || {
        (!read_logs(&rt.logs_dir("k"), &LogQuery::default())
            .unwrap()
            .is_empty())
        .then_some(())
    })
    .await;
    kill_keeper(&host).await;
    drop(rt);
    let rt = host.runtime().await; // starts a new keeper
    let info = rt.inspect("k").await.unwrap();
    assert_eq!(
        (info.status, info.pid),
        (Status::Running, Some(pid)),
        "the same process, still running"
    );
    // the new keeper is not its parent: the exit is seen, its code cannot be
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let x = tokio::time::timeout(Duration::from_secs(10), rt.wait("k"))
        .await
        .expect("exit noticed")
        .unwrap();
    assert!(!x.known, "{x:?}");
    assert_eq!(
        read_logs(&rt.logs_dir("k"), &LogQuery::default()).unwrap()[0].log,
        "before\n"
    );
    rt.remove("k").await.unwrap();
    assert!(host.cgroup_dirs().is_empty() && host.mounts().is_empty());
}
