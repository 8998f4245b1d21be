//! A single-node swarm for real: `shoal daemon`, `swarm init`, services with real
//! containers, kill -9 of tasks and of the daemon. As root; through scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

fn replicas(h: &Host, name: &str) -> String {
    let ls = h.ok(&["service", "ls", "--format", "json"]);
    json_lines(&ls)
        .into_iter()
        .find(|v| v["Name"] == name)
        .map(|v| v["Replicas"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A service of one task that sleeps, stops at once (SIGKILL) and is restarted after
/// 100 ms; `extra` flags go before the image.
fn sleeper(h: &Host, name: &str, extra: &[&str]) {
    let mut args = vec![
        "service",
        "create",
        "--name",
        name,
        "--restart-delay",
        "100ms",
        "--stop-signal",
        "KILL",
    ];
    args.extend_from_slice(extra);
    args.extend(["shoal-test/busybox", "sleep", "3600"]);
    h.ok(&args);
}

/// Running tasks of a service: task ID prefix → container pid.
fn running_pids(h: &Host, name: &str) -> BTreeMap<String, i64> {
    let ps = h.ok(&[
        "service",
        "ps",
        name,
        "--format",
        "json",
        "--filter",
        "desired-state=running",
    ]);
    let mut out = BTreeMap::new();
    for t in json_lines(&ps) {
        if t["CurrentState"].as_str().unwrap().starts_with("Running") {
            let id = t["ID"].as_str().unwrap().to_string();
            let full = h.ok(&["container", "ls", "--format", "json"]);
            let cid = json_lines(&full)
                .into_iter()
                .map(|c| c["ID"].as_str().unwrap().to_string())
                .find(|c| c.starts_with(&id))
                .unwrap();
            let info: serde_json::Value =
                serde_json::from_str(&h.ok(&["container", "inspect", &cid])).unwrap();
            out.insert(cid, info["pid"].as_i64().unwrap());
        }
    }
    out
}

#[test]
fn services_converge_scale_update_and_survive_a_daemon_kill() {
    let h = Host::new();
    let mut d = h.start_daemon();
    h.import_test_image();
    h.ok(&[
        "image",
        "import",
        fixtures().join("busybox-docker.tar").to_str().unwrap(),
    ]);
    let out = h.cli(&["service", "ls"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("This node is not a swarm manager"),
        "before init"
    );
    assert!(h
        .ok(&["swarm", "init", "--listen-addr", "127.0.0.1:0"])
        .contains("is now a manager"));
    let nodes = json_lines(&h.ok(&["node", "ls", "--format", "json"]));
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (
            nodes[0]["Status"].as_str(),
            nodes[0]["ManagerStatus"].as_str()
        ),
        (Some("Ready"), Some("Leader"))
    );

    // 50 replicas, without --detach: returns once converged
    let out = h.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "50",
        "--stop-signal",
        "KILL",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    assert!(out.contains("verify: Service web converged"), "{out}");
    assert_eq!(replicas(&h, "web"), "50/50");
    assert_eq!(running_pids(&h, "web").len(), 50);

    // scale down and back up
    h.ok(&["service", "scale", "web=5"]);
    assert_eq!(replicas(&h, "web"), "5/5");
    wait_for("removed tasks to go", Duration::from_secs(30), || {
        (running_pids(&h, "web").len() == 5
            && json_lines(&h.ok(&["container", "ls", "--format", "json"])).len() == 5)
            .then_some(())
    });
    h.ok(&["service", "scale", "web=10"]);
    assert_eq!(replicas(&h, "web"), "10/10");

    // an update of the image replaces every task
    let before = running_pids(&h, "web");
    let out = h.ok(&[
        "service",
        "update",
        "--image",
        "shoal-test/busybox:saved",
        "web",
    ]);
    assert!(out.contains("converged"), "{out}");
    let ps = json_lines(&h.ok(&[
        "service",
        "ps",
        "web",
        "--format",
        "json",
        "--filter",
        "desired-state=running",
    ]));
    assert_eq!(ps.len(), 10);
    assert!(
        ps.iter().all(|t| t["Image"] == "shoal-test/busybox:saved"
            && t["CurrentState"].as_str().unwrap().starts_with("Running")),
        "{ps:?}"
    );
    let after = running_pids(&h, "web");
    assert!(
        before.keys().all(|k| !after.contains_key(k)),
        "every task replaced"
    );

    // kill -9 of the daemon: nothing restarts, the service stays 10/10, the store is intact
    d.kill();
    let mut d = h.start_daemon();
    assert_eq!(running_pids(&h, "web"), after, "same containers, same pids");
    assert_eq!(replicas(&h, "web"), "10/10");
    let inspect: serde_json::Value =
        serde_json::from_str(&h.ok(&["service", "inspect", "web"])).unwrap();
    assert_eq!(
        inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        "shoal-test/busybox:saved"
    );

    h.ok(&["service", "rm", "web"]);
    wait_for("the containers to go", Duration::from_secs(30), || {
        json_lines(&h.ok(&["container", "ls", "--format", "json"]))
            .is_empty()
            .then_some(())
    });
    d.kill();
}

#[test]
fn killed_tasks_fail_and_restart_by_policy() {
    let (h, _d) = swarm_host();
    sleeper(&h, "again", &[]);
    // the same short delay as "again": a wrong restart would come as soon
    sleeper(&h, "once", &["--restart-condition", "none"]);
    for (name, restarts) in [("again", true), ("once", false)] {
        let pids = running_pids(&h, name);
        let (_, pid) = pids.iter().next().unwrap();
        kill9(*pid as i32);
        let failed = wait_for("the task to fail", Duration::from_secs(30), || {
            json_lines(&h.ok(&["service", "ps", name, "--format", "json"]))
                .into_iter()
                .find(|t| t["CurrentState"].as_str().unwrap().starts_with("Failed"))
        });
        assert_eq!(failed["Error"], "task: non-zero exit (137)");
        if restarts {
            let new = wait_for("a replacement", Duration::from_secs(30), || {
                let p = running_pids(&h, name);
                (p.len() == 1 && p != pids).then_some(p)
            });
            assert_eq!(new.len(), 1);
            assert_eq!(replicas(&h, name), "1/1");
        } else {
            // "again" was replaced within its 100 ms delay; "once", with the same delay,
            // must stay down for ten times as long (watched, not slept through)
            let watch = std::time::Instant::now() + Duration::from_secs(1);
            while std::time::Instant::now() < watch {
                let p = running_pids(&h, name);
                assert!(
                    p.is_empty(),
                    "condition none: it stays down, yet runs {p:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            assert_eq!(replicas(&h, name), "0/1");
        }
    }
}

/// `--restart-delay` holds a replicated task's replacement back: made ready at once, it
/// starts only once the delay has passed since its predecessor failed (the orchestrator
/// once started it as soon as the predecessor had stopped).
#[test]
fn a_replicated_tasks_replacement_waits_out_its_restart_delay() {
    let (h, _d) = swarm_host();
    h.ok(&[
        "service",
        "create",
        "--name",
        "slow",
        "--restart-delay",
        "5s",
        "--stop-signal",
        "KILL",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    let pids = running_pids(&h, "slow");
    let (_, pid) = pids.iter().next().unwrap();
    let killed = std::time::Instant::now();
    kill9(*pid as i32);
    // watched, not slept through: nothing runs for the first 4 s of the 5 s delay
    while killed.elapsed() < Duration::from_secs(4) {
        let p = running_pids(&h, "slow");
        assert!(
            p.is_empty() || p == pids,
            "the replacement ran {:?} after the kill, within its 5 s restart delay: {p:?}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let new = wait_for("the replacement", Duration::from_secs(30), || {
        let p = running_pids(&h, "slow");
        (p.len() == 1 && p != pids).then_some(p)
    });
    assert!(
        killed.elapsed() >= Duration::from_secs(5),
        "started {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(new.len(), 1);
    assert_eq!(replicas(&h, "slow"), "1/1");
}

/// A daemon that sees no cgroups (started under `ip netns exec`, which mounts /sys anew
/// without them) refuses to start, saying what it found and what it needs, instead of
/// starting and failing every task with libcontainer's "failed to detect cgroup setup".
#[test]
fn a_daemon_that_sees_no_cgroups_says_so_at_start() {
    use std::process::{Child, Command, Stdio};
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let h = Host::new();
    let ns = format!("sht{}x0-cgroups", std::process::id());
    let added = Command::new("ip").args(["netns", "add", &ns]).status();
    assert!(added.unwrap().success());
    let _ns = Netns(ns.clone());
    let err = h.data_root().join("daemon.err");
    let mut daemon = Killed(
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(shoal_bin())
            .arg("daemon")
            .env("SHOAL_DATA_ROOT", h.data_root())
            .env("SHOAL_CGROUP_PARENT", &h.cgroup_parent)
            .env("SHOAL_HOST", format!("unix://{}", h.socket().display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = wait_for(
        "the daemon to refuse to start",
        Duration::from_secs(30),
        || daemon.0.try_wait().unwrap(),
    );
    let said = std::fs::read_to_string(&err).unwrap();
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("no cgroup filesystem is mounted (/sys/fs/cgroup is part of the sysfs")
            && said.contains("needs cgroup v2 (or v1) mounted at /sys/fs/cgroup")
            && said.contains("nsenter --net=/run/netns/NAME"),
        "{said}"
    );
    assert!(!h.socket().exists(), "it did not listen");
}

/// With `--host` (or SHOAL_HOST), image and container commands work where that daemon
/// keeps its images and containers: an image imported with only `--host` given is the
/// daemon's, and a service runs it (it once landed in /var/lib/shoal, and the service
/// went to docker.io for it). A different `--data-root`, or no daemon to ask, is refused.
#[test]
fn image_commands_with_host_work_on_the_daemons_data_root() {
    let h = Host::new();
    let _d = h.start_daemon();
    let host = format!("unix://{}", h.socket().display());
    let image = fixtures().join("busybox-oci");
    let with_host_only = |args: &[&str]| {
        std::process::Command::new(shoal_bin())
            .env_remove("SHOAL_DATA_ROOT")
            .env_remove("SHOAL_CGROUP_PARENT")
            .env_remove("SHOAL_HOST")
            .args(["--host", &host])
            .args(args)
            .output()
            .unwrap()
    };
    let out = with_host_only(&["image", "import", image.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        h.ok(&["image", "ls"]).contains("shoal-test/busybox"),
        "the image is in the daemon's store"
    );
    let ls = with_host_only(&["image", "ls", "--format", "{{.Repository}}"]);
    assert_eq!(
        String::from_utf8_lossy(&ls.stdout).trim(),
        "shoal-test/busybox"
    );
    h.ok(&["swarm", "init", "--listen-addr", "127.0.0.1:0"]);
    h.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    // another data root than the daemon's: refused, naming both
    let elsewhere = h.data_root().join("elsewhere");
    let out = with_host_only(&["--data-root", elsewhere.to_str().unwrap(), "image", "ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("--data-root {}", elsewhere.display()))
            && err.contains(&format!("uses {}", h.data_root().display())),
        "{err}"
    );
    // no daemon there, no data root given: where is unknown, so refused
    let out = std::process::Command::new(shoal_bin())
        .env_remove("SHOAL_DATA_ROOT")
        .args(["--host", "unix:///nonexistent/shoal.sock", "image", "ls"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Cannot connect to the shoal daemon at unix:///nonexistent/shoal.sock")
            && err.contains("start it, or give --data-root"),
        "{err}"
    );
}

#[test]
fn refusals_name_what_is_wrong() {
    let h = Host::new();
    let _d = h.start_daemon();
    // each refused: a non-zero exit, and the reason on stderr
    let err = |args: &[&str]| {
        let out = h.cli(args);
        assert!(!out.status.success(), "{args:?} should fail: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // an address to advertise that this host does not have (TEST-NET-3)
    let e = err(&[
        "swarm",
        "init",
        "--listen-addr",
        "127.0.0.1:0",
        "--advertise-addr",
        "203.0.113.7",
    ]);
    assert!(
        e.contains("--advertise-addr 203.0.113.7: 203.0.113.7 is not an address of this host"),
        "{e}"
    );
    h.init_swarm();
    assert!(
        err(&["swarm", "init", "--listen-addr", "127.0.0.1:0"]).contains("already part of a swarm")
    );
    assert!(err(&["service", "create", "busybox"]).contains("--name"));
    assert!(err(&["service", "create", "--name", "bad name", "busybox"])
        .contains("not a valid service name"));
    assert!(
        err(&["service", "create", "--name", "x", "--mode", "sideways", "busybox"])
            .contains("--mode \"sideways\"")
    );
    assert!(err(&[
        "service",
        "create",
        "--name",
        "x",
        "--constraint",
        "node.color==red",
        "busybox"
    ])
    .contains("unknown key"));
    assert!(err(&[
        "service",
        "create",
        "--name",
        "x",
        "--restart-condition",
        "sometimes",
        "busybox"
    ])
    .contains("--restart-condition"));
    assert!(err(&[
        "service",
        "create",
        "--name",
        "x",
        "--limit-memory",
        "lots",
        "busybox"
    ])
    .contains("--limit-memory"));
    assert!(err(&["service", "scale", "ghost=3"]).contains("not found"));
    assert!(err(&["service", "scale", "x"]).contains("use SERVICE=REPLICAS"));
    assert!(err(&["swarm", "leave"]).contains("--force"));
    // an empty or blank name matches nothing (it once removed the first service, and
    // ingress)
    sleeper(&h, "kept", &[]);
    for blank in ["", " "] {
        for kind in ["service", "network", "node"] {
            let e = err(&[kind, "rm", blank]);
            assert!(
                e.contains(&format!(
                    "{blank:?} is not a {kind} ID or name: it is empty"
                )),
                "{kind} rm {blank:?}: {e}"
            );
        }
        let e = err(&["service", "ps", blank]);
        assert!(e.contains("it is empty"), "service ps {blank:?}: {e}");
    }
    assert!(h.ok(&["service", "ls"]).contains("kept"));
    assert!(h.ok(&["network", "ls"]).contains("ingress"));
    assert_eq!(h.ok(&["node", "ls", "-q"]).lines().count(), 1);
    // an image that does not exist: create says why instead of waiting forever
    let out = h.cli(&[
        "service",
        "create",
        "--name",
        "nope",
        "127.0.0.1:1/no/such:image",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot converge"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn logs_and_a_clean_sigterm_that_leaves_tasks_running() {
    let (h, mut d) = swarm_host();
    h.ok(&[
        "service",
        "create",
        "--name",
        "talk",
        "--replicas",
        "2",
        "--stop-signal",
        "KILL",
        "shoal-test/busybox",
        "sh",
        "-c",
        "echo hello from $(hostname); echo oops >&2; sleep 3600",
    ]);
    let out = wait_for("two lines of logs", Duration::from_secs(20), || {
        let o = h.ok(&["service", "logs", "talk"]);
        (o.matches("hello from").count() == 2).then_some(o)
    });
    assert!(
        out.lines()
            .all(|l| l.starts_with("talk.") && l.contains("@") && l.contains("    | hello from ")),
        "{out}"
    );
    // the last two lines of each task: its hello (stdout) and its oops (stderr)
    let ts = h.ok(&["service", "logs", "--timestamps", "--tail", "2", "talk"]);
    assert_eq!(ts.lines().count(), 2, "one stdout line per task: {ts}");
    assert!(ts.contains("Z hello from"), "{ts}");
    let err = h.cli(&["service", "logs", "talk"]);
    assert_eq!(
        String::from_utf8_lossy(&err.stderr).matches("oops").count(),
        2,
        "stderr lines go to stderr"
    );

    // -f follows the tasks there are and those that start later
    let follower = h.spawn_cli(&["service", "logs", "-f", "talk"]);
    wait_for(
        "the follower's first lines",
        Duration::from_secs(20),
        || (follower.stdout().matches("hello from").count() == 2).then_some(()),
    );
    h.ok(&["service", "scale", "talk=3"]);
    wait_for(
        "the new task's line in the follower",
        Duration::from_secs(20),
        || (follower.stdout().matches("hello from").count() == 3).then_some(()),
    );
    drop(follower);
    h.ok(&["service", "scale", "talk=2"]);

    let pids = running_pids(&h, "talk");
    let child = d.child.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    assert!(!h.socket().exists(), "the socket is removed");
    for pid in pids.values() {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "task {pid} kept running"
        );
    }
    let _d = h.start_daemon();
    assert_eq!(running_pids(&h, "talk"), pids);
    assert_eq!(replicas(&h, "talk"), "2/2");

    // Docker's add/rm edits on update
    h.ok(&[
        "service",
        "update",
        "--env-add",
        "A=1",
        "--env-add",
        "B=2",
        "--label-add",
        "tier=web",
        "talk",
    ]);
    h.ok(&[
        "service",
        "update",
        "--env-rm",
        "A",
        "--env-add",
        "B=3",
        "talk",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["service", "inspect", "talk"])).unwrap();
    assert_eq!(
        v[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"],
        serde_json::json!(["B=3"])
    );
    assert_eq!(v[0]["Spec"]["Labels"]["tier"], "web");
    let err = h.cli(&["service", "update", "--env-add", "NOVALUE", "talk"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("--env-add \"NOVALUE\": use KEY=VALUE"));
    h.ok(&[
        "service",
        "update",
        "--mount-add",
        "type=tmpfs,target=/scratch",
        "--mount-add",
        "type=tmpfs,target=/cache",
        "--container-label-add",
        "team=edge",
        "talk",
    ]);
    h.ok(&["service", "update", "--mount-rm", "/cache", "talk"]);
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["service", "inspect", "talk"])).unwrap();
    let c = &v[0]["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert_eq!(c["Mounts"].as_array().map(Vec::len), Some(1), "{c}");
    assert_eq!(c["Mounts"][0]["Target"], "/scratch");
    assert_eq!(c["Labels"]["team"], "edge");
    let err = h.cli(&["service", "update", "--mount-rm", "/nowhere", "talk"]);
    assert!(
        String::from_utf8_lossy(&err.stderr)
            .contains("--mount-rm \"/nowhere\": the service has no mount"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
}

#[test]
fn health_checks_gate_running_and_fail_unhealthy_tasks() {
    let (h, _d) = swarm_host();
    let out = h.ok(&[
        "service",
        "create",
        "--name",
        "fine",
        "--health-cmd",
        "true",
        "--health-interval",
        "200ms",
        "--stop-signal",
        "KILL",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    assert!(out.contains("converged"), "{out}");
    assert_eq!(replicas(&h, "fine"), "1/1");
    // never healthy: the task fails as unhealthy and is replaced, and create says so
    let out = h.cli(&[
        "service",
        "create",
        "--name",
        "sick",
        "--health-cmd",
        "false",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        "--restart-delay",
        "100ms",
        "--stop-signal",
        "KILL",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("task: unhealthy container"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // and the restart supervisor keeps replacing it
    wait_for(
        "a second unhealthy failure",
        Duration::from_secs(30),
        || {
            let ps = json_lines(&h.ok(&["service", "ps", "sick", "--format", "json"]));
            (ps.iter()
                .filter(|t| t["Error"] == "task: unhealthy container")
                .count()
                >= 2)
                .then_some(())
        },
    );
    assert_eq!(replicas(&h, "sick"), "0/1");
}

#[test]
fn networks_are_created_attached_inspected_and_removed() {
    let h = Host::new();
    let _d = h.start_daemon();
    h.import_test_image();
    let err = |args: &[&str]| {
        let out = h.cli(args);
        assert!(!out.status.success(), "{args:?} should fail: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(err(&[
        "swarm",
        "init",
        "--listen-addr",
        "127.0.0.1:0",
        "--default-addr-pool",
        "10.77.0.5/16"
    ])
    .contains("did you mean 10.77.0.0/16"));
    h.ok(&[
        "swarm",
        "init",
        "--listen-addr",
        "127.0.0.1:0",
        "--default-addr-pool",
        "10.77.0.0/16",
        "--default-addr-pool-mask-length",
        "26",
    ]);
    // ingress exists from init, from the pool
    let inspect = |what: &str| -> serde_json::Value {
        serde_json::from_str(&h.ok(&["network", "inspect", what])).unwrap()
    };
    let ingress = inspect("ingress");
    assert_eq!(ingress[0]["Ingress"], true);
    assert_eq!(ingress[0]["IPAM"]["Config"][0]["Subnet"], "10.77.0.0/26");
    let id = h.ok(&["network", "create", "--driver", "overlay", "appnet"]);
    let app = inspect("appnet");
    assert_eq!(app[0]["Id"], id.trim());
    assert_eq!(app[0]["IPAM"]["Config"][0]["Subnet"], "10.77.0.64/26");
    h.ok(&[
        "network",
        "create",
        "--subnet",
        "10.88.0.0/16",
        "--internal",
        "big",
    ]);
    let ls = h.ok(&["network", "ls"]);
    for n in ["ingress", "appnet", "big"] {
        assert!(ls.contains(n), "{ls}");
    }
    assert!(
        err(&["network", "create", "--subnet", "10.88.1.0/24", "clash"])
            .contains("overlaps network big")
    );
    assert!(
        err(&["network", "create", "--driver", "bridge", "b"]).contains("overlay networks only")
    );
    assert!(err(&["network", "create", "--ipv6", "v6"]).contains("IPv6"));
    // a service on it: a VIP from its subnet, aliases kept; -p publishes on ingress
    h.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "api",
        "--stop-signal",
        "KILL",
        "--network",
        "appnet,alias=backend",
        "-p",
        "8080:80",
        "shoal-test/busybox",
        "sleep",
        "1000",
    ]);
    let s: serde_json::Value = serde_json::from_str(&h.ok(&["service", "inspect", "api"])).unwrap();
    assert_eq!(
        s[0]["Spec"]["TaskTemplate"]["Networks"][0]["Aliases"][0],
        "backend"
    );
    assert_eq!(
        s[0]["Spec"]["EndpointSpec"]["Ports"][0]["PublishedPort"],
        8080
    );
    let vips = wait_for(
        "a VIP on appnet and on ingress",
        Duration::from_secs(10),
        || {
            let s: serde_json::Value =
                serde_json::from_str(&h.ok(&["service", "inspect", "api"])).unwrap();
            let v = s[0]["Endpoint"]["VirtualIPs"].clone();
            v.as_array().is_some_and(|a| a.len() == 2).then_some(v)
        },
    );
    // one VIP on each network, from that network's own subnet (appnet 10.77.0.64/26,
    // ingress 10.77.0.0/26)
    let vip_on = |net: &serde_json::Value| -> u8 {
        let v = vips
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["NetworkID"] == net[0]["Id"])
            .unwrap_or_else(|| panic!("no VIP on {}: {vips}", net[0]["Name"]));
        let a = v["Addr"].as_str().unwrap();
        let host = a
            .strip_prefix("10.77.0.")
            .and_then(|r| r.strip_suffix("/26"))
            .unwrap_or_else(|| panic!("{a}: not in 10.77.0.0/24 with its /26"));
        host.parse().unwrap()
    };
    let on_app = vip_on(&app);
    assert!((65..127).contains(&on_app), "appnet's VIP .{on_app}");
    let on_ingress = vip_on(&ingress);
    assert!((1..63).contains(&on_ingress), "ingress's VIP .{on_ingress}");
    // the same port twice on the routing mesh is refused at create
    assert!(
        err(&["service", "create", "--name", "other", "-p", "8080:81", "busybox"])
            .contains("already published by service api")
    );
    // the task runs, connected to both networks
    wait_for("the task to run", Duration::from_secs(20), || {
        (replicas(&h, "api") == "1/1").then_some(())
    });
    // in use: refused; once the service is gone, removed
    assert!(err(&["network", "rm", "appnet"]).contains("in use by service(s) api"));
    h.ok(&["service", "rm", "api"]);
    wait_for("appnet to be removable", Duration::from_secs(10), || {
        h.cli(&["network", "rm", "appnet"])
            .status
            .success()
            .then_some(())
    });
    assert!(!h.ok(&["network", "ls"]).contains("appnet"));
}

/// kill -9 of the keeper, then of a task's process: the daemon starts a keeper again
/// (which readopts the container), hears that the task ended, and replaces it; no
/// restart of the daemon needed.
#[test]
fn a_dead_keeper_is_started_again_and_tasks_report_their_real_state() {
    let (h, _d) = swarm_host();
    sleeper(&h, "kept", &[]);
    let pids = running_pids(&h, "kept");
    let (cid, pid) = pids.iter().next().unwrap();
    let old_keepers = h.keeper_pids();
    assert_eq!(old_keepers.len(), 1, "{old_keepers:?}");
    kill9(old_keepers[0]);
    kill9(*pid as i32);
    // only the daemon's API from here on: a `container` command would start a keeper
    // itself and hide whether the daemon does
    let tasks = || json_lines(&h.ok(&["service", "ps", "kept", "--format", "json"]));
    let failed = wait_for("the task to fail", Duration::from_secs(30), || {
        tasks()
            .into_iter()
            .find(|t| t["CurrentState"].as_str().unwrap().starts_with("Failed"))
    });
    assert!(
        cid.starts_with(failed["ID"].as_str().unwrap()),
        "the task whose process was killed: {failed}"
    );
    wait_for("its replacement to run", Duration::from_secs(30), || {
        tasks()
            .into_iter()
            .find(|t| {
                t["CurrentState"].as_str().unwrap().starts_with("Running")
                    && t["ID"] != failed["ID"]
            })
            .map(|_| ())
    });
    let keepers = h.keeper_pids();
    assert_eq!(keepers.len(), 1, "one keeper again: {keepers:?}");
    assert_ne!(keepers, old_keepers);
}

/// Big specs, changed over and over: what the Raft log holds is snapshotted and
/// purged as it goes, so `raft.redb` stays a bounded size instead of growing with
/// every change (it grew to 2.1 GB in 30 s), and `service ls`/`ps` keep working; and
/// the file shrinks back, with no restart.
#[test]
fn a_flood_of_big_updates_keeps_the_raft_log_bounded() {
    let (h, _d) = swarm_host();
    h.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "fat",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    let raft = h.data_root().join("swarm/raft.redb");
    let size = || std::fs::metadata(&raft).unwrap().len();
    let update = |i: usize| {
        // 100 KiB of environment, different each time: the service object holds it
        // twice (spec and previous spec) and its new task once more
        let big = format!("BIG={}", format!("{i:08}").repeat((100 << 10) / 8));
        // (a change of the orchestrator's in between is a conflict: read, and again)
        let updated = wait_for("the update", Duration::from_secs(30), || {
            let out = h.cli(&["service", "update", "-d", "--env-add", &big, "fat"]);
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            match out.status.success() {
                true => Some(Ok(())),
                false if err.contains("was changed by someone else") => None,
                false => Some(Err(err)),
            }
        });
        updated.unwrap_or_else(|e| panic!("update {i}: {e}"));
    };
    (0..200).for_each(update);
    let after_200 = size();
    (200..800).for_each(update);
    let after_800 = size();
    eprintln!(
        "raft.redb: {} MiB after 200 updates, {} MiB after 800",
        after_200 >> 20,
        after_800 >> 20
    );
    // a log that is not purged grows with every change (four times as many: about
    // four times the size); a purged one reuses its space
    assert!(
        after_800 < after_200 * 2,
        "raft.redb grew from {} MiB to {} MiB: the log is not purged",
        after_200 >> 20,
        after_800 >> 20
    );
    let ls = h.ok(&["service", "ls"]);
    assert!(ls.contains("fat"), "{ls}");
    h.ok(&["service", "ps", "fat"]);
    // the service gone, the file shrinks back while the daemon runs: the log's space
    // that was purged is compacted away (checked every 10 s)
    h.ok(&["service", "rm", "fat"]);
    let small = wait_for("raft.redb compacted", Duration::from_secs(60), || {
        let s = size();
        (s <= 64 << 20).then_some(s)
    });
    eprintln!("raft.redb: {} MiB after service rm", small >> 20);
}

/// Lists and a node's complete set of assignments bigger than one gRPC message (4 MiB)
/// arrive whole, in parts: 48 services of 100 KiB each make 4.8 MB of services, as much
/// of tasks, and as much of assignments when the agent starts its session again. And
/// 150 `service ls` at once all answer.
#[test]
fn lists_and_assignments_bigger_than_one_message_arrive_whole() {
    let (h, mut d) = swarm_host();
    sleeper(&h, "small", &[]);
    let lists: Vec<_> = (0..150)
        .map(|_| {
            h.cmd()
                .args(["service", "ls", "-q"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in lists {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "a concurrent service ls failed: {err}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
    let names: Vec<String> = (0..48).map(|i| format!("fat{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let big = format!("BIG={}", format!("{i:08}").repeat((100 << 10) / 8));
        sleeper(&h, name, &["-d", "-e", &big]);
    }
    let all_running = |n: usize| {
        let ls = h.cli(&["service", "ls", "--format", "json"]);
        let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
        let rows = json_lines(&ls);
        (rows.len() == n && rows.iter().all(|v| v["Replicas"] == "1/1")).then_some(())
    };
    wait_for("every service running", Duration::from_secs(120), || {
        all_running(49)
    });
    let ls = h.ok(&["service", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 49, "{ls}");
    let mut ps_args = vec!["service", "ps", "-q"];
    ps_args.extend(names.iter().map(String::as_str));
    let ps = h.ok(&ps_args);
    assert_eq!(ps.lines().count(), 48, "{ps}");
    // (`service logs` lists every task of the swarm, unfiltered: 4.8 MB)
    h.ok(&["service", "logs", "small"]);
    // the agent's new session gets its complete set (4.8 MB) in parts: a task created
    // after it runs only if the set arrived
    d.kill();
    let _d = h.start_daemon();
    sleeper(&h, "after", &[]);
    wait_for("the task created after", Duration::from_secs(60), || {
        (replicas(&h, "after") == "1/1").then_some(())
    });
    wait_for("every service running", Duration::from_secs(60), || {
        all_running(50)
    });
}

/// A task namespace left behind (its task gone while the daemon was down) is removed
/// when the agent starts again, unmounted too; a live task's namespace is kept.
#[test]
fn a_restarted_agent_sweeps_task_namespaces_it_no_longer_has() {
    let (h, mut d) = swarm_host();
    h.ok(&["network", "create", "sweepnet"]);
    sleeper(&h, "kept", &["--network", "sweepnet"]);
    let dir = h.data_root().join("netns/tasks");
    let names = || dir_names(&dir);
    let live = wait_for("the task's namespace", Duration::from_secs(20), || {
        let v = names();
        (!v.is_empty()).then_some(v)
    });
    d.kill();
    let stale = dir.join("stale000000000000000000000");
    std::fs::write(&stale, "").unwrap();
    let bound = std::process::Command::new("unshare")
        .arg(format!("--net={}", stale.display()))
        .arg("true")
        .status()
        .unwrap();
    assert!(bound.success(), "a namespace bound at {}", stale.display());
    let stale_s = stale.to_string_lossy().into_owned();
    assert!(h.mounts().contains(&stale_s));
    let _d = h.start_daemon();
    wait_for("the stale namespace swept", Duration::from_secs(30), || {
        (!stale.exists()).then_some(())
    });
    assert!(!h.mounts().contains(&stale_s), "unmounted too");
    assert_eq!(names(), live, "the live task's namespace is kept");
    assert_eq!(replicas(&h, "kept"), "1/1");
}

/// The questions a test DNS server was asked: (name, type).
type Asked = std::sync::Arc<std::sync::Mutex<Vec<(String, u16)>>>;

/// A DNS server for the test on 127.0.0.1: every A question gets 192.0.2.55, other
/// types no answer. It keeps each question's (name, type). It runs until the test
/// binary ends.
fn upstream_dns() -> (std::net::SocketAddr, Asked) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            // the header, then the question: labels up to a zero byte, type, class
            let (mut i, mut labels) = (12, Vec::new());
            while i < n && q[i] != 0 {
                let len = q[i] as usize;
                labels.push(
                    String::from_utf8_lossy(q.get(i + 1..i + 1 + len).unwrap_or(&[])).into_owned(),
                );
                i += 1 + len;
            }
            let Some(tail) = q.get(i + 1..i + 5) else {
                continue;
            };
            let qtype = u16::from_be_bytes([tail[0], tail[1]]);
            log.lock().unwrap().push((labels.join("."), qtype));
            let a = qtype == 1;
            let mut r = q[..2].to_vec(); // the ID
            r.extend([0x81, 0x80, 0, 1, 0, a as u8, 0, 0, 0, 0]);
            r.extend(&q[12..i + 5]);
            if a {
                r.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 55]);
            }
            let _ = sock.send_to(&r, from);
        }
    });
    (addr, asked)
}

/// Names that are not the swarm's go from a task's resolver to the daemon's upstream
/// resolvers (`shoal daemon --dns`, by default /etc/resolv.conf's), and the answer comes
/// back to the task; the swarm's own names are answered on the node.
#[test]
fn names_outside_the_swarm_go_to_the_upstream_resolvers() {
    let (up, asked) = upstream_dns();
    let mut h = Host::new();
    h.daemon_env.push(("SHOAL_DNS".into(), up.to_string()));
    let _d = h.start_daemon();
    h.init_swarm();
    h.ok(&["network", "create", "dnsnet"]);
    sleeper(&h, "asker", &["--network", "dnsnet"]);
    let dir = h.data_root().join("netns/tasks");
    let ns = wait_for("the task's namespace", Duration::from_secs(20), || {
        dir_names(&dir).first().map(|n| dir.join(n))
    });
    let got = wait_for("outside.example", Duration::from_secs(10), || {
        let a = resolve(&ns, "outside.example");
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(got, ["192.0.2.55".to_string()].into());
    assert!(asked
        .lock()
        .unwrap()
        .contains(&("outside.example".to_string(), 1)));
    assert_eq!(resolve(&ns, "asker").len(), 1, "the service's VIP");
    assert!(
        !asked.lock().unwrap().iter().any(|(n, _)| n == "asker"),
        "a name of the swarm was asked upstream: {:?}",
        asked.lock().unwrap()
    );
    // a wrong --dns is refused, naming it
    let out = h
        .cmd()
        .arg("daemon")
        .arg("--dns")
        .arg("dns.example")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--dns \"dns.example\": use an IP address"),
        "{out:?}"
    );
}

/// Through a VIP, the task sees the client task's own address; a VIP whose service has
/// no running task refuses a connection at once (a reset), where it could time out.
#[test]
fn a_vip_keeps_the_client_address_and_an_empty_one_refuses_at_once() {
    let (h, _d) = swarm_host();
    h.ok(&["network", "create", "vipnet"]);
    let serve = httpd_cmd("up");
    for (name, replicas) in [("echoip", "1"), ("nobody", "0")] {
        h.ok(&[
            "service",
            "create",
            "--name",
            name,
            "--replicas",
            replicas,
            "--network",
            "vipnet",
            "--stop-signal",
            "KILL",
            "shoal-test/busybox",
            "sh",
            "-c",
            &serve,
        ]);
    }
    sleeper(&h, "client", &["--network", "vipnet"]);
    // the client's namespace (named by its task's ID) and its address
    let ps = json_lines(&h.ok(&["service", "ps", "client", "--format", "json"]));
    let short = ps[0]["ID"].as_str().unwrap().to_string();
    let dir = h.data_root().join("netns/tasks");
    let ns = wait_for("the client's namespace", Duration::from_secs(20), || {
        dir_names(&dir)
            .into_iter()
            .find(|n| n.starts_with(&short))
            .map(|n| dir.join(n))
    });
    let own = ipv4_addrs(&ns, Some("eth0")).remove(0);
    let vip = |name: &str| {
        wait_for(&format!("{name}'s VIP"), Duration::from_secs(10), || {
            resolve(&ns, name).into_iter().next()
        })
    };
    let url = format!("http://{}/cgi-bin/ip", vip("echoip"));
    let seen = wait_for("echoip through its VIP", Duration::from_secs(10), || {
        wget_in(&ns, &url).ok()
    });
    assert_eq!(
        client_ip(&seen),
        own,
        "the task sees the client's own address"
    );
    let e = wget_in(&ns, &format!("http://{}/", vip("nobody"))).unwrap_err();
    assert!(e.contains("Connection refused"), "{e}");
}

/// Where Debian's libfaketime (multi-threaded) is; scripts/test.sh installs it.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// This host's node certificate's validity (seconds since the epoch).
fn cert_validity(h: &Host) -> (i64, i64) {
    let pem = std::fs::read(h.data_root().join("certificates/swarm-node.crt")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let v = cert.validity();
    (v.not_before.timestamp(), v.not_after.timestamp())
}

/// The README's "renewed at two thirds of its life", with the daemon's own timer: with
/// 1 h certificates, a daemon whose clock reads 41 minutes later (libfaketime) renews its
/// certificate by itself, and the new one runs a full hour from that time.
#[test]
fn a_certificate_is_renewed_by_itself_at_two_thirds_of_its_life() {
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: apt-get install libfaketime (scripts/test.sh does)"
    );
    let mut h = Host::new();
    let mut d = h.start_daemon();
    h.import_test_image();
    h.ok(&[
        "swarm",
        "init",
        "--listen-addr",
        "127.0.0.1:0",
        "--cert-expiry",
        "1h",
    ]);
    let (from, to) = cert_validity(&h);
    // (an hour, from five minutes back for clock skew)
    assert_eq!(to - from, 3900, "{from}..{to}");
    d.kill();

    let renewed = "renewed this node's certificate before it expires";
    // past two thirds: renewed at start, through the manager it is, from the CA (where
    // two thirds falls is tls::tests' unit check)
    h.daemon_env = vec![
        ("LD_PRELOAD".to_string(), FAKETIME.to_string()),
        ("FAKETIME".to_string(), "+41m".to_string()),
    ];
    let _d = h.start_daemon();
    wait_for("the renewal", Duration::from_secs(60), || {
        h.daemon_log().contains(renewed).then_some(())
    });
    let (from2, to2) = cert_validity(&h);
    assert!(
        from2 >= from + 41 * 60 && to2 - from2 == 3900,
        "{from}..{to} became {from2}..{to2}"
    );
    // the node carries on with it, and the new certificate is not renewed again
    h.ok(&["network", "create", "after"]);
    assert_eq!(h.daemon_log().matches(renewed).count(), 1);
}
