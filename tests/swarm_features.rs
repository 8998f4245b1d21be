//! What the README says a single-node swarm does, flag by flag, through the CLI:
//! placement (constraints, CPU reservations, the pending reason), jobs, restart windows
//! and task history, `service update`'s add/rm edits, networks with their own range
//! and gateway as a task sees them, containers stopped and killed, images saved and
//! pruned. As root; through scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn replicas(h: &Host, name: &str) -> String {
    json_lines(&h.ok(&["service", "ls", "--format", "json"]))
        .into_iter()
        .find(|v| v["Name"] == name)
        .map(|v| v["Replicas"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn tasks(h: &Host, name: &str) -> Vec<serde_json::Value> {
    json_lines(&h.ok(&["service", "ps", name, "--format", "json"]))
}

fn stderr_of(h: &Host, args: &[&str]) -> String {
    let out = h.cli(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `service create -d --name NAME [FLAGS…] shoal-test/busybox CMD…`.
fn create(h: &Host, name: &str, flags: &[&str], cmd: &[&str]) {
    let mut args = vec!["service", "create", "-d", "--name", name];
    args.extend_from_slice(flags);
    args.push("shoal-test/busybox");
    args.extend_from_slice(cmd);
    h.ok(&args);
}

/// A service that sleeps, stopped by SIGKILL; `extra` flags go before the image.
fn sleeper(h: &Host, name: &str, extra: &[&str]) {
    let flags = [&["--stop-signal", "KILL"], extra].concat();
    create(h, name, &flags, &["sleep", "3600"]);
}

fn converged(h: &Host, name: &str, want: &str) {
    wait_for(
        &format!("{name} at {want}"),
        Duration::from_secs(20),
        || (replicas(h, name) == want).then_some(()),
    );
}

/// The only node, as `node inspect` shows it.
fn this_node(h: &Host) -> serde_json::Value {
    let ls = json_lines(&h.ok(&["node", "ls", "--format", "json"]));
    assert_eq!(ls.len(), 1, "{ls:?}");
    let host = ls[0]["Hostname"].as_str().unwrap().to_string();
    json(&h.ok(&["node", "inspect", &host]))[0].clone()
}

/// Constraints on every node attribute the README names place a task or hold it
/// pending with the reason, which `service ps` shows and `service create` (without
/// -d) exits non-zero with; `--constraint-add/-rm` change it; CPU reservations fill
/// the node and leave the rest pending.
#[test]
fn constraints_and_reservations_place_tasks_or_say_why_not() {
    let (h, _d) = swarm_host();
    let node = this_node(&h);
    let (id, os, arch) = (
        node["ID"].as_str().unwrap(),
        node["Description"]["Platform"]["OS"].as_str().unwrap(),
        node["Description"]["Platform"]["Architecture"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(os, std::env::consts::OS);
    let placed = [
        format!("node.id=={id}"),
        "node.role==manager".to_string(),
        format!("node.platform.os=={os}"),
        format!("node.platform.arch=={arch}"),
        "node.hostname!=not-this-one".to_string(),
    ];
    for (i, c) in placed.iter().enumerate() {
        sleeper(&h, &format!("ok{i}"), &["--constraint", c]);
    }
    for i in 0..placed.len() {
        converged(&h, &format!("ok{i}"), "1/1");
    }

    // nowhere to go: create says why and fails; the task waits, pending, with the reason
    let out = h.cli(&[
        "service",
        "create",
        "--name",
        "nowhere",
        "--stop-signal",
        "KILL",
        "--constraint",
        "node.role==worker",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "create of an unplaceable service");
    assert!(
        err.contains("cannot converge")
            && err.contains("scheduling constraints not satisfied on 1 node"),
        "{err}"
    );
    let t = &tasks(&h, "nowhere")[0];
    assert!(
        t["CurrentState"].as_str().unwrap().starts_with("Pending"),
        "{t}"
    );
    assert!(
        t["Error"]
            .as_str()
            .unwrap()
            .contains("scheduling constraints not satisfied"),
        "{t}"
    );
    h.ok(&[
        "service",
        "update",
        "-d",
        "--constraint-rm",
        "node.role==worker",
        "nowhere",
    ]);
    converged(&h, "nowhere", "1/1");
    h.ok(&[
        "service",
        "update",
        "-d",
        "--constraint-add",
        &format!("node.platform.os!={os}"),
        "nowhere",
    ]);
    wait_for(
        "nowhere held pending again",
        Duration::from_secs(20),
        || {
            let pending = tasks(&h, "nowhere").into_iter().any(|t| {
                t["CurrentState"].as_str().unwrap().starts_with("Pending")
                    && t["Error"]
                        .as_str()
                        .unwrap()
                        .contains("scheduling constraints")
            });
            (pending && replicas(&h, "nowhere") == "0/1").then_some(())
        },
    );

    // CPU: three tasks reserving half the node each: two run, the third waits
    let nano = node["Description"]["Resources"]["NanoCPUs"]
        .as_i64()
        .unwrap();
    let half = format!("{}", nano as f64 / 2e9);
    sleeper(&h, "cpu", &["--replicas", "3", "--reserve-cpu", &half]);
    wait_for(
        "two cpu tasks running and one pending",
        Duration::from_secs(20),
        || {
            let ts = tasks(&h, "cpu");
            let state = |s: &str| {
                ts.iter()
                    .filter(|t| t["CurrentState"].as_str().unwrap().starts_with(s))
                    .count()
            };
            let reason = ts.iter().any(|t| {
                t["Error"]
                    .as_str()
                    .unwrap()
                    .contains("insufficient resources on 1 node")
            });
            (state("Running") == 2 && state("Pending") == 1 && reason).then_some(())
        },
    );
}

/// A global job runs once on the node and completes; `--restart-window` counts only
/// the failures inside it (a slot held at its maximum is restarted once the window
/// has moved on, one without a window never is); `--task-history-limit` bounds the
/// dead tasks kept per slot.
#[test]
fn jobs_restart_windows_and_task_history() {
    let (h, _d) = swarm_host();
    h.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "gj",
        "--mode",
        "global-job",
        "shoal-test/busybox",
        "sh",
        "-c",
        "echo ran",
    ]);
    wait_for("the global job complete", Duration::from_secs(20), || {
        let ts = tasks(&h, "gj");
        (ts.len() == 1
            && ts[0]["CurrentState"]
                .as_str()
                .unwrap()
                .starts_with("Complete"))
        .then_some(())
    });

    let failing = |name: &str, extra: &[&str]| {
        let policy = [
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "100ms",
        ];
        create(
            &h,
            name,
            &[&policy[..], extra].concat(),
            &["sh", "-c", "exit 3"],
        );
    };
    let failed = |name: &str| {
        tasks(&h, name)
            .iter()
            .filter(|t| t["CurrentState"].as_str().unwrap().starts_with("Failed"))
            .count()
    };
    failing(
        "windowed",
        &["--restart-max-attempts", "2", "--restart-window", "3s"],
    );
    failing("capped", &["--restart-max-attempts", "2"]);
    for name in ["windowed", "capped"] {
        wait_for(
            &format!("{name}: the first run and two restarts failed"),
            Duration::from_secs(20),
            || (failed(name) == 3).then_some(()),
        );
    }
    // the restart supervisor wakes by itself once the window has moved past the failures
    wait_for(
        "windowed restarted once its window moved on",
        Duration::from_secs(20),
        || (tasks(&h, "windowed").len() > 3).then_some(()),
    );
    assert_eq!(failed("capped"), 3, "{:?}", tasks(&h, "capped"));
    assert_eq!(tasks(&h, "capped").len(), 3, "capped is never restarted");

    // history: 2 dead tasks kept per slot (5 by default)
    h.ok(&["swarm", "update", "--task-history-limit", "2"]);
    failing("churn", &[]);
    let (mut seen, mut most) = (BTreeSet::new(), 0);
    wait_for(
        "ten tasks of churn come and go",
        Duration::from_secs(60),
        || {
            let ts = tasks(&h, "churn");
            most = most.max(ts.len());
            seen.extend(ts.iter().map(|t| t["ID"].as_str().unwrap().to_string()));
            (seen.len() >= 10).then_some(())
        },
    );
    // 2 dead, the current one, and one that died just before the reaper saw it
    assert!(most <= 4, "{most} tasks of churn kept at once");
}

/// `service update --publish-add/-rm` and `--network-add/-rm` change the endpoint and
/// the networks; removing what is not there is refused, naming it.
#[test]
fn update_adds_and_removes_ports_and_networks() {
    let (h, _d) = swarm_host();
    sleeper(&h, "web", &[]);
    converged(&h, "web", "1/1");
    let inspect = || json(&h.ok(&["service", "inspect", "web"]))[0].clone();

    h.ok(&["service", "update", "-d", "--publish-add", "8080:80", "web"]);
    let s = inspect();
    assert_eq!(s["Spec"]["EndpointSpec"]["Ports"][0]["PublishedPort"], 8080);
    assert_eq!(s["Spec"]["EndpointSpec"]["Ports"][0]["TargetPort"], 80);
    let e = stderr_of(&h, &["service", "update", "--publish-rm", "9999", "web"]);
    assert!(e.contains("9999") && e.contains("does not publish"), "{e}");
    h.ok(&["service", "update", "-d", "--publish-rm", "8080", "web"]);
    let ports = inspect()["Spec"]["EndpointSpec"]["Ports"].clone();
    assert!(
        ports.is_null() || ports.as_array().unwrap().is_empty(),
        "{ports}"
    );

    let net = h.ok(&["network", "create", "appnet"]).trim().to_string();
    h.ok(&["service", "update", "-d", "--network-add", "appnet", "web"]);
    let s = inspect();
    assert_eq!(s["Spec"]["TaskTemplate"]["Networks"][0]["Target"], net);
    let e = stderr_of(&h, &["network", "rm", "appnet"]);
    assert!(e.contains("in use by service(s) web"), "{e}");
    converged(&h, "web", "1/1");
    let e = stderr_of(&h, &["service", "update", "--network-rm", "nonet", "web"]);
    assert!(e.contains("nonet"), "{e}");
    h.ok(&["service", "update", "-d", "--network-rm", "appnet", "web"]);
    let nets = inspect()["Spec"]["TaskTemplate"]["Networks"].clone();
    assert!(
        nets.is_null() || nets.as_array().unwrap().is_empty(),
        "{nets}"
    );
    wait_for("appnet removable", Duration::from_secs(20), || {
        h.cli(&["network", "rm", "appnet"])
            .status
            .success()
            .then_some(())
    });
}

/// Runs `ip ARGS` in a task's network namespace.
fn ip_in(ns: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network with its own `--ip-range` and `--gateway`: inspect shows them, the
/// service's VIP and its task's address come from the range, the task's MAC is
/// 02:42 and its address, and its default route goes via that gateway (the first
/// network that is not `--internal`).
#[test]
fn a_task_gets_its_networks_range_gateway_mac_and_default_route() {
    let (h, _d) = swarm_host();
    h.ok(&[
        "network",
        "create",
        "--subnet",
        "10.66.0.0/24",
        "--ip-range",
        "10.66.0.128/25",
        "--gateway",
        "10.66.0.254",
        "rangenet",
    ]);
    let cfg = json(&h.ok(&["network", "inspect", "rangenet"]))[0]["IPAM"]["Config"][0].clone();
    assert_eq!(cfg["IPRange"], "10.66.0.128/25", "{cfg}");
    assert_eq!(cfg["Gateway"], "10.66.0.254", "{cfg}");
    h.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.67.0.0/24",
        "backnet",
    ]);
    sleeper(
        &h,
        "ranged",
        &["--network", "backnet", "--network", "rangenet"],
    );
    converged(&h, "ranged", "1/1");
    let in_range = |a: &str| {
        let a: std::net::Ipv4Addr = a.split('/').next().unwrap().parse().unwrap();
        let o = a.octets();
        o[..3] == [10, 66, 0] && o[3] >= 128
    };
    let s = json(&h.ok(&["service", "inspect", "ranged"]))[0].clone();
    let vips: Vec<String> = s["Endpoint"]["VirtualIPs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Addr"].as_str().unwrap().to_string())
        .collect();
    assert!(
        vips.iter()
            .any(|a| a.starts_with("10.66.0.") && in_range(a)),
        "{vips:?}"
    );
    let dir = h.data_root().join("netns/tasks");
    let ns: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(ns.len(), 1, "{ns:?}");
    let addrs = ip_in(&ns[0], &["-o", "-4", "addr", "show"]);
    let (ifname, addr) = addrs
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f[3].starts_with("10.66.0.").then(|| {
                (
                    f[1].to_string(),
                    f[3].split('/').next().unwrap().to_string(),
                )
            })
        })
        .unwrap_or_else(|| panic!("no address on rangenet: {addrs}"));
    assert!(in_range(&addr), "{addr} outside the ip-range");
    let o = addr.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
    let link = ip_in(&ns[0], &["-o", "link", "show", &ifname]);
    assert!(link.contains(&mac), "{mac} not in {link}");
    let route = ip_in(&ns[0], &["route", "show", "default"]);
    assert!(
        route.contains("via 10.66.0.254") && route.contains(&ifname),
        "{route}"
    );
}

/// `container stop -t` sends the stop signal and SIGKILL after the grace period;
/// `container kill -s` sends the signal given.
#[test]
fn containers_are_stopped_and_killed_from_the_cli() {
    let h = Host::new();
    let _d = h.start_daemon();
    h.import_test_image();
    // PID 1 ignores SIGTERM: stop ends it with SIGKILL after 1 s
    h.ok(&[
        "container",
        "run",
        "-d",
        "--name",
        "deaf",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    h.ok(&["container", "stop", "-t", "1", "deaf"]);
    assert_eq!(h.ok(&["container", "wait", "deaf"]).trim(), "137");
    h.ok(&[
        "container",
        "run",
        "-d",
        "--name",
        "trapper",
        "shoal-test/busybox",
        "sh",
        "-c",
        "trap 'exit 7' TERM; echo ready; while :; do sleep 0.1; done",
    ]);
    wait_for("trapper ready", Duration::from_secs(10), || {
        h.ok(&["container", "logs", "trapper"])
            .contains("ready")
            .then_some(())
    });
    h.ok(&["container", "kill", "-s", "TERM", "trapper"]);
    assert_eq!(h.ok(&["container", "wait", "trapper"]).trim(), "7");
    for c in ["deaf", "trapper"] {
        h.ok(&["container", "rm", c]);
    }
}

/// `image save` writes a tar another host imports; `image prune` removes blobs and
/// layers no image uses and keeps the image's own.
#[test]
fn images_are_saved_imported_and_pruned() {
    let a = Host::new();
    a.import_test_image();
    let tar = a.data_root().with_extension("save.tar");
    a.ok(&[
        "image",
        "save",
        "-o",
        tar.to_str().unwrap(),
        "shoal-test/busybox",
    ]);
    let b = Host::new();
    b.ok(&["image", "import", tar.to_str().unwrap()]);
    let _ = std::fs::remove_file(&tar);
    assert!(b.ok(&["image", "ls"]).contains("shoal-test/busybox"));

    let images = a.data_root().join("images");
    let stray_blob = images.join("blobs/sha256").join("ab".repeat(32));
    let stray_layer = images.join("layers").join("cd".repeat(32));
    std::fs::write(&stray_blob, b"nobody's").unwrap();
    std::fs::create_dir_all(stray_layer.join("etc")).unwrap();
    let out = a.ok(&["image", "prune"]);
    assert!(out.contains("Removed 2 unused layers and blobs"), "{out}");
    assert!(!stray_blob.exists() && !stray_layer.exists());
    assert!(a.ok(&["image", "prune"]).contains("Removed 0"));
    let _d = a.start_daemon();
    let out = a.ok(&[
        "container",
        "run",
        "shoal-test/busybox",
        "echo",
        "still runs",
    ]);
    assert!(out.contains("still runs"), "{out}");
}
