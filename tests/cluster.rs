//! Clusters of hosts on one machine (a network namespace and a daemon per host, see
//! common/cluster.rs): joining with tokens over mTLS, workers running tasks, refusals.
//! As root; through scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::*;
use common::*;

fn stderr_of(h: &ClusterHost, args: &[&str]) -> String {
    let out = h.cli(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `service create --name NAME --replicas N [EXTRA…] shoal-test/busybox sleep 3600` on
/// `h`, with tasks that stop at once (SIGKILL).
fn create_sleepers(h: &ClusterHost, name: &str, replicas: u32, extra: &[&str]) {
    let n = replicas.to_string();
    let mut args = vec![
        "service",
        "create",
        "--name",
        name,
        "--replicas",
        &n,
        "--stop-signal",
        "KILL",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["shoal-test/busybox", "sleep", "3600"]);
    h.ok(&args);
}

/// Hostname → Status of every node, as `node ls` on `h` shows them.
fn node_states(h: &ClusterHost) -> BTreeMap<String, (String, String)> {
    json_lines(&h.ok(&["node", "ls", "--format", "json"]))
        .into_iter()
        .map(|n| {
            (
                n["Hostname"].as_str().unwrap().to_string(),
                (
                    n["Status"].as_str().unwrap().to_string(),
                    n["ManagerStatus"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[test]
fn workers_join_with_tokens_over_mtls_and_run_tasks() {
    let mut c = Cluster::new(3);
    let m = c.h(1).addr.clone();
    let init = c.h(1).ok(&["swarm", "init", "--advertise-addr", &m]);
    assert!(init.contains(&format!("{m}:2377")), "{init}");
    let token = |role: &str| c.token(role);
    let worker = token("worker");
    assert!(worker.starts_with("SWMTKN-1-") && worker != token("manager"));

    // refusals, each naming what is wrong; none of them joins the node
    let h2 = c.h(2);
    let e = stderr_of(h2, &["swarm", "join", "--token", "SWMTKN-1-abc", &m]);
    assert!(e.contains("invalid join token"), "{e}");
    let secret = worker.rsplit('-').next().unwrap();
    let forged = format!("SWMTKN-1-{}-{secret}", "1".repeat(50));
    let e = stderr_of(h2, &["swarm", "join", "--token", &forged, &m]);
    assert!(e.contains("does not match the join token"), "{e}");
    let e = stderr_of(h2, &["swarm", "join", "--token", &worker, &c.h(3).addr]);
    assert!(
        e.contains("could not reach a manager at 10.99.0.3:2377"),
        "{e}"
    );
    let rotated = c.h(1).ok(&["swarm", "join-token", "--rotate", "worker"]);
    assert!(
        rotated.contains("Successfully rotated worker join token"),
        "{rotated}"
    );
    let e = stderr_of(h2, &["swarm", "join", "--token", &worker, &m]);
    assert!(e.contains("may have been rotated"), "{e}");
    // an address to advertise that is not this host's (node1's)
    let worker = token("worker");
    let e = stderr_of(
        h2,
        &[
            "swarm",
            "join",
            "--advertise-addr",
            &m,
            "--token",
            &worker,
            &m,
        ],
    );
    assert!(
        e.contains(&format!(
            "--advertise-addr {m}: {m} is not an address of this host"
        )),
        "{e}"
    );
    assert_eq!(
        node_states(c.h(1)).len(),
        1,
        "no refused node was registered"
    );

    let worker = token("worker");
    for i in [2, 3] {
        let out = c.h(i).ok(&["swarm", "join", "--token", &worker, &m]);
        assert!(out.contains("joined a swarm as a worker"), "{out}");
    }
    let e = stderr_of(c.h(2), &["swarm", "join", "--token", &worker, &m]);
    assert!(e.contains("already part of a swarm"), "{e}");
    let nodes = wait_for("three Ready nodes", Duration::from_secs(20), || {
        let n = node_states(c.h(1));
        (n.len() == 3 && n.values().all(|(s, _)| s == "Ready")).then_some(n)
    });
    assert_eq!(nodes["node1"].1, "Leader");
    assert_eq!(nodes["node2"].1, "", "a worker has no manager status");
    // a worker's daemon is no manager: the control API is not there
    let e = stderr_of(c.h(2), &["service", "ls"]);
    assert!(e.contains("not a swarm manager"), "{e}");

    // tasks spread over the three hosts and run there
    create_sleepers(c.h(1), "web", 6, &[]);
    let spread = wait_for("6 running tasks", Duration::from_secs(30), || {
        let n = running_per_node(c.h(1), "web");
        (n.values().sum::<usize>() == 6).then_some(n)
    });
    assert_eq!(
        spread.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "two per node: {spread:?}"
    );
    let containers =
        |h: &ClusterHost| json_lines(&h.ok(&["container", "ls", "--format", "json"])).len();
    assert_eq!(containers(c.h(2)), 2, "the worker runs its tasks itself");

    // a worker's daemon killed and restarted: it comes back with its certificate, and its
    // containers were never restarted
    let pids = |h: &ClusterHost| -> BTreeMap<String, i64> {
        json_lines(&h.ok(&["container", "ls", "--format", "json"]))
            .into_iter()
            .map(|x| {
                let id = x["ID"].as_str().unwrap().to_string();
                let info: serde_json::Value =
                    serde_json::from_str(&h.ok(&["container", "inspect", &id])).unwrap();
                (id, info["pid"].as_i64().unwrap())
            })
            .collect()
    };
    let before = pids(c.h(2));
    c.h_mut(2).start_daemon();
    wait_for("node2 Ready again", Duration::from_secs(20), || {
        (node_states(c.h(1))["node2"].0 == "Ready").then_some(())
    });
    assert_eq!(running_per_node(c.h(1), "web").values().sum::<usize>(), 6);
    assert_eq!(pids(c.h(2)), before, "same containers, same pids");

    // a worker that leaves takes its tasks' containers with it
    let out = c.h(3).ok(&["swarm", "leave"]);
    assert!(out.contains("left the swarm"), "{out}");
    assert_eq!(containers(c.h(3)), 0);
    let e = stderr_of(c.h(3), &["swarm", "leave"]);
    assert!(e.contains("not part of a swarm"), "{e}");
}

/// Running tasks of a service per node (hostname), as the manager on `h` sees them.
fn running_per_node(h: &ClusterHost, service: &str) -> BTreeMap<String, usize> {
    let ps = h.ok(&[
        "service",
        "ps",
        service,
        "--format",
        "json",
        "--filter",
        "desired-state=running",
    ]);
    let mut n: BTreeMap<String, usize> = BTreeMap::new();
    for t in json_lines(&ps) {
        if t["CurrentState"].as_str().unwrap().starts_with("Running") {
            *n.entry(t["Node"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    n
}

/// Containers on a host that are up.
fn up_containers(h: &ClusterHost) -> usize {
    json_lines(&h.ok(&["container", "ls", "--format", "json"]))
        .iter()
        .filter(|c| c["Status"].as_str().unwrap_or("").starts_with("Up"))
        .count()
}

#[test]
fn a_node_cut_off_is_marked_down_and_its_tasks_move_then_it_returns() {
    let c = Cluster::swarm(3);
    create_sleepers(c.h(1), "web", 6, &[]);
    wait_for("2 tasks on each node", Duration::from_secs(30), || {
        (running_per_node(c.h(1), "web")
            .values()
            .copied()
            .collect::<Vec<_>>()
            == vec![2, 2, 2])
        .then_some(())
    });

    // node3 drops off the network: Down within a few heartbeats, its tasks replaced
    c.net.cut(3);
    wait_for("node3 Down", Duration::from_secs(20), || {
        let ls = json_lines(&c.h(1).ok(&["node", "ls", "--format", "json"]));
        ls.iter()
            .any(|n| n["Hostname"] == "node3" && n["Status"] == "Down")
            .then_some(())
    });
    let moved = wait_for(
        "6 tasks on node1 and node2",
        Duration::from_secs(20),
        || {
            let n = running_per_node(c.h(1), "web");
            (n.values().sum::<usize>() == 6 && !n.contains_key("node3")).then_some(n)
        },
    );
    assert_eq!(moved.len(), 2, "{moved:?}");
    // cut off, the worker keeps its tasks running
    assert_eq!(up_containers(c.h(3)), 2, "a worker cut off keeps its tasks");

    // back on the network: Ready again, and its superseded tasks are stopped there
    c.net.heal(3);
    wait_for("node3 Ready", Duration::from_secs(20), || {
        let ls = json_lines(&c.h(1).ok(&["node", "ls", "--format", "json"]));
        ls.iter()
            .any(|n| n["Hostname"] == "node3" && n["Status"] == "Ready")
            .then_some(())
    });
    wait_for("node3's old tasks stopped", Duration::from_secs(20), || {
        (up_containers(c.h(3)) == 0).then_some(())
    });
    assert_eq!(
        running_per_node(c.h(1), "web").values().sum::<usize>(),
        6,
        "never more replicas than declared, once settled"
    );

    // a longer heartbeat period gives a silent node longer: with 4 s it is Down 6 to
    // 10 s after its last heartbeat (2.5 periods), where the default 1 s gives 2.5 s
    c.h(1)
        .ok(&["swarm", "update", "--dispatcher-heartbeat", "4s"]);
    // (the managers judge by the new period at once; the agent beats more slowly from
    // its next heartbeat's answer, so its last beat before the cut is at most 4 s old)
    let t0 = std::time::Instant::now();
    c.net.cut(2);
    wait_for("node2 Down", Duration::from_secs(30), || {
        (node_states(c.h(1))["node2"].0 == "Down").then_some(())
    });
    let after = t0.elapsed();
    assert!(
        after >= Duration::from_secs(5),
        "node2 was Down {after:?} after it fell silent, with a 4 s heartbeat"
    );
}

/// Hostname → ManagerStatus, as `node ls` on `h` shows them.
fn manager_status(h: &ClusterHost) -> BTreeMap<String, String> {
    node_states(h)
        .into_iter()
        .map(|(k, (_, m))| (k, m))
        .collect()
}

/// Three hosts, all managers, node1 leading.
fn three_managers() -> Cluster {
    managers_of(Cluster::new(3))
}

/// The three hosts of `c` made managers, node1 leading.
fn managers_of(c: Cluster) -> Cluster {
    let m1 = c.h(1).addr.clone();
    c.h(1).ok(&["swarm", "init", "--advertise-addr", &m1]);
    let token = c.h(1).ok(&["swarm", "join-token", "-q", "manager"]);
    for i in [2, 3] {
        let out = c.h(i).ok(&["swarm", "join", "--token", token.trim(), &m1]);
        assert!(out.contains("joined a swarm as a manager"), "{out}");
    }
    let st = wait_for(
        "a leader and two reachable managers",
        Duration::from_secs(20),
        || {
            let s = manager_status(c.h(1));
            (s.values().filter(|m| *m == "Reachable").count() == 2).then_some(s)
        },
    );
    assert_eq!(st["node1"], "Leader", "{st:?}");
    c
}

/// Kills host `i`'s daemon (the leader's) and waits until host `j` sees another leader.
fn kill_leader(c: &mut Cluster, i: usize, j: usize) -> BTreeMap<String, String> {
    c.h_mut(i).kill_daemon();
    wait_for("a new leader", Duration::from_secs(30), || {
        let out = c.h(j).cli(&["node", "ls", "--format", "json"]);
        if !out.status.success() {
            return None;
        }
        let s = manager_status(c.h(j));
        (s.values().any(|m| m == "Leader") && s[&format!("node{i}")] == "Unreachable").then_some(s)
    })
}

/// A follower whose disk is full refuses the leader's entries, while the two other
/// managers go on committing; once space is back it catches up by itself, with no
/// restart, and its Raft never stopped: with the second follower gone, nothing commits
/// unless it has every entry.
#[test]
fn a_follower_with_a_full_disk_catches_up_once_space_is_back() {
    let c = Cluster::new(3);
    // node3's Raft log on a 64 MiB tmpfs (unmounted with the host)
    let swarm = c.h(3).host.data_root().join("swarm");
    std::fs::create_dir_all(&swarm).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs"])
        .arg(&swarm)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs on {}", swarm.display());
    let mut c = managers_of(c);
    let free = || {
        let s = nix::sys::statvfs::statvfs(&swarm).unwrap();
        s.blocks_available() as u64 * s.fragment_size() as u64
    };
    let filler = swarm.join("filler");
    let fill = std::process::Command::new("fallocate")
        .args(["-l", &(free() - (1 << 20)).to_string()])
        .arg(&filler)
        .status()
        .unwrap();
    assert!(fill.success());
    // 12 services of 100 KB each (and their tasks, as much again): more than node3 has
    let big = format!("BIG={}", "x".repeat(100_000));
    for i in 0..12 {
        create_sleepers(c.h(1), &format!("s{i}"), 1, &["-e", &big]);
    }
    wait_for(
        "node3 to refuse entries for want of space",
        Duration::from_secs(30),
        || {
            c.h(3)
                .host
                .daemon_log()
                .contains("refusing Raft entries from the leader")
                .then_some(())
        },
    );
    // space back, and node2 gone: node1 commits only with node3, which needs every entry
    std::fs::remove_file(&filler).unwrap();
    c.h_mut(2).kill_daemon();
    wait_for(
        "a change committed by node1 and node3",
        Duration::from_secs(90),
        || {
            let out = c.h(1).cli(&[
                "service",
                "create",
                "--name",
                "after",
                "--replicas",
                "0",
                "shoal-test/busybox",
            ]);
            let err = String::from_utf8_lossy(&out.stderr);
            // a create that timed out may still have been committed
            (out.status.success() || err.contains("in use") || err.contains("exists")).then_some(())
        },
    );
    let ls = c.h(3).ok(&["service", "ls", "--format", "json"]);
    assert_eq!(json_lines(&ls).len(), 13, "{ls}");
    let log = c.h(3).host.daemon_log();
    assert!(!log.contains("Raft stopped"), "node3's Raft stopped: {log}");
}

#[test]
fn three_managers_replicate_and_survive_the_leader() {
    let mut c = three_managers();

    // any manager takes writes (followers pass them to the leader) and reads
    create_sleepers(c.h(2), "web", 3, &[]);
    for i in [1, 3] {
        let ls = c.h(i).ok(&["service", "ls", "--format", "json"]);
        assert_eq!(json_lines(&ls)[0]["Replicas"], "3/3", "on node{i}: {ls}");
    }

    // the leader's host dies: another manager leads within a few seconds and the
    // cluster still takes writes
    let st = kill_leader(&mut c, 1, 2);
    assert_eq!(
        st.values().filter(|m| *m == "Reachable").count(),
        1,
        "{st:?}"
    );
    // with node1 down, demoting another manager would leave two with one reachable:
    // refused, saying why and how to force it
    wait_for("node1 Down", Duration::from_secs(20), || {
        (node_states(c.h(2))["node1"].0 == "Down").then_some(())
    });
    let e = stderr_of(c.h(2), &["node", "demote", "node3"]);
    assert!(
        e.contains("would leave 2 manager(s) with only 1 reachable")
            && e.contains("lose quorum (use --force"),
        "{e}"
    );
    c.h(3).ok(&["service", "scale", "web=5"]);
    wait_for("web at 5/5 without node1", Duration::from_secs(30), || {
        let ls = c.h(2).ok(&["service", "ls", "--format", "json"]);
        (json_lines(&ls)[0]["Replicas"] == "5/5").then_some(())
    });

    // node1 comes back as a follower, with everything that happened meanwhile
    c.h_mut(1).start_daemon();
    wait_for("node1 Reachable again", Duration::from_secs(30), || {
        (manager_status(c.h(2))["node1"] == "Reachable").then_some(())
    });
    let ls = c.h(1).ok(&["service", "ls", "--format", "json"]);
    assert_eq!(json_lines(&ls)[0]["Replicas"], "5/5", "{ls}");

    // the leader leaves: refused without --force (others would be left), then it takes
    // itself out of the Raft group and the two others carry on
    let st = manager_status(c.h(1));
    let leader: usize = st
        .iter()
        .find(|(_, m)| *m == "Leader")
        .map(|(h, _)| h.trim_start_matches("node").parse().unwrap())
        .unwrap();
    let e = stderr_of(c.h(leader), &["swarm", "leave"]);
    assert!(e.contains("leaves 2 managers out of 3"), "{e}");
    c.h(leader).ok(&["swarm", "leave", "--force"]);
    let other = if leader == 1 { 2 } else { 1 };
    let st = wait_for("two managers, one leading", Duration::from_secs(30), || {
        let out = c.h(other).cli(&["node", "ls", "--format", "json"]);
        if !out.status.success() {
            return None;
        }
        let s = manager_status(c.h(other));
        (s.values().filter(|m| !m.is_empty()).count() == 2 && s.values().any(|m| m == "Leader"))
            .then_some(s)
    });
    assert_eq!(st[&format!("node{leader}")], "", "{st:?}");
    c.h(other).ok(&["service", "scale", "web=2"]);
}

/// Runs the CLI on `h`, killing it if it has not finished within `limit`.
fn cli_within(h: &ClusterHost, args: &[&str], limit: Duration) -> std::process::Output {
    let mut child = h
        .host
        .cmd()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("shoal {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The README's "unless forced": a dead manager is taken out with `node rm --force` while
/// the rest keep a majority; a forced demotion that cannot commit (no majority) fails
/// after the write timeout, saying why and what to do, instead of hanging, and completes
/// by itself once the managers answer again.
#[test]
fn managers_are_forced_out_and_a_forced_demotion_without_a_majority_does_not_hang() {
    let mut c = three_managers();
    create_sleepers(c.h(1), "web", 2, &[]);

    // node3 is gone for good: a manager is not removed without --force, with it it is,
    // at once (node1 and node2 are a majority with and without it)
    c.h_mut(3).kill_daemon();
    let e = stderr_of(c.h(1), &["node", "rm", "node3"]);
    assert!(
        e.contains("must be demoted to worker before removal"),
        "{e}"
    );
    c.h(1).ok(&["node", "rm", "--force", "node3"]);
    let st = manager_status(c.h(1));
    assert!(!st.contains_key("node3"), "{st:?}");
    assert_eq!(st["node2"], "Reachable", "{st:?}");

    // node2 dies too: node1 alone is no majority of {node1, node2}, so the forced
    // demotion cannot commit. It fails after the write timeout, and says why.
    c.h_mut(2).kill_daemon();
    let out = cli_within(
        c.h(1),
        &["node", "demote", "--force", "node2"],
        Duration::from_secs(60),
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("not committed within 10 s") && e.contains("--force-new-cluster"),
        "{e}"
    );

    // node2 returns: the demotion completes by itself, in Raft and in the store, and
    // node1, the only manager left, commits alone
    c.h_mut(2).start_daemon();
    wait_for("node2 a worker", Duration::from_secs(60), || {
        let st = manager_status(c.h(1));
        (st.get("node2").is_some_and(|m| m.is_empty()) && st["node1"] == "Leader").then_some(())
    });
    wait_for("node2's daemon a worker", Duration::from_secs(30), || {
        let out = c.h(2).cli(&["service", "ls"]);
        String::from_utf8_lossy(&out.stderr)
            .contains("not a swarm manager")
            .then_some(())
    });
    c.h(1).ok(&["service", "scale", "-d", "web=3"]);
}

/// A copy of host `i`'s node certificate and key, as they are now.
fn save_certs(c: &Cluster, i: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["swarm-node.crt", "swarm-node.key"] {
        std::fs::copy(
            c.h(i).host.data_root().join("certificates").join(f),
            dir.path().join(f),
        )
        .unwrap();
    }
    dir
}

/// Calls `method` (`shoal.v1.Control/ListServices`) on host 1's cluster port from host 1's
/// namespace, with curl over HTTP/2 and TLS and the node certificate in `certs` (none if
/// `None`), and returns the grpc-status and grpc-message. The port is reached as any other
/// node reaches it, so this checks the daemon's real wiring of roles to methods.
///
/// The request carries no message: the role check answers before a message is read, and
/// a call that gets past it is answered by the method's decoder ([`PASSED`]). (With a
/// body, the early answer often races curl's upload and curl reports a framing error.)
fn grpc_call(c: &Cluster, method: &str, certs: Option<&std::path::Path>) -> (u32, String) {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", c.net.hosts[0]))
        .args(["curl", "-sSk", "--http2", "--max-time", "10", "-D", "-"])
        .args(["-o", "/dev/null", "-X", "POST"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
    if let Some(d) = certs {
        cmd.arg("--cert")
            .arg(d.join("swarm-node.crt"))
            .arg("--key")
            .arg(d.join("swarm-node.key"));
    }
    cmd.arg(format!("https://{}:2377/{method}", c.h(1).addr));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{method}: {out:?}");
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let code = field("grpc-status:")
        .unwrap_or_else(|| panic!("{method}: no grpc-status in {head}"))
        .parse()
        .unwrap();
    (
        code,
        percent_decode(&field("grpc-message:").unwrap_or_default()),
    )
}

/// What a call without a message gets once it is past the role check.
const PASSED: (u32, &str) = (13, "Missing request message.");

fn passed(r: (u32, String)) -> bool {
    r.0 == PASSED.0 && r.1 == PASSED.1
}

#[test]
fn nodes_are_labelled_drained_promoted_demoted_and_removed() {
    let c = Cluster::swarm(3);
    let h1 = c.h(1);
    // labels and constraints
    h1.ok(&["node", "update", "--label-add", "zone=east", "node2"]);
    create_sleepers(h1, "pinned", 2, &["--constraint", "node.labels.zone==east"]);
    assert_eq!(
        running_per_node(h1, "pinned"),
        BTreeMap::from([("node2".to_string(), 2)])
    );
    let e = stderr_of(
        h1,
        &["node", "update", "--availability", "sideways", "node2"],
    );
    assert!(e.contains("use active, pause or drain"), "{e}");
    let e = stderr_of(h1, &["node", "update", "--label-rm", "nope", "node2"]);
    assert!(e.contains("no such label"), "{e}");

    // drain moves tasks off a node
    create_sleepers(h1, "web", 3, &[]);
    h1.ok(&["node", "update", "--availability", "drain", "node3"]);
    wait_for("web off node3", Duration::from_secs(20), || {
        let n = running_per_node(h1, "web");
        (n.values().sum::<usize>() == 3 && !n.contains_key("node3")).then_some(())
    });
    let ls = json_lines(&h1.ok(&["node", "ls", "--format", "json"]));
    assert!(ls
        .iter()
        .any(|n| n["Hostname"] == "node3" && n["Availability"] == "Drain"));

    // the last manager cannot be demoted
    let e = stderr_of(h1, &["node", "demote", "node1"]);
    assert!(e.contains("last manager"), "{e}");

    // promote: node2 joins the Raft group by itself and serves the control API
    h1.ok(&["node", "promote", "node2"]);
    wait_for("node2 a reachable manager", Duration::from_secs(30), || {
        (manager_status(h1)["node2"] == "Reachable").then_some(())
    });
    let ls = c.h(2).ok(&["service", "ls", "--format", "json"]);
    assert_eq!(json_lines(&ls).len(), 2, "{ls}");
    // the cluster port's methods, as the daemon wires them to roles: anyone may fetch the
    // root CA; the dispatcher needs a node certificate, Control and Raft a manager's; the
    // local socket's Swarm service is not served here
    const CONTROL: &str = "shoal.v1.Control/ListServices";
    const RAFT: &str = "shoal.v1.Raft/AppendEntries";
    const DISPATCHER: &str = "shoal.v1.Dispatcher/Heartbeat";
    let manager = save_certs(&c, 1);
    let worker = save_certs(&c, 3);
    let promoted = save_certs(&c, 2);
    for (m, certs) in [
        (CONTROL, Some(manager.path())),
        (RAFT, Some(promoted.path())),
        (DISPATCHER, Some(worker.path())),
        ("shoal.v1.NodeCA/GetRootCACertificate", None),
    ] {
        let r = grpc_call(&c, m, certs);
        assert!(passed(r.clone()), "{m} with {certs:?}: {r:?}");
    }
    for m in [CONTROL, RAFT, DISPATCHER] {
        let (code, msg) = grpc_call(&c, m, None);
        assert_eq!(code, 16, "{m} without a certificate: {msg}");
    }
    for m in [CONTROL, RAFT] {
        let (code, msg) = grpc_call(&c, m, Some(worker.path()));
        assert_eq!(code, 7, "{m} as a worker: {msg}");
        assert!(msg.contains("this call needs a manager"), "{m}: {msg}");
    }
    // the local socket's Swarm service is not on this port
    assert_eq!(
        grpc_call(&c, "shoal.v1.Swarm/Info", Some(manager.path())).0,
        12
    );

    // demote: it leaves the group and is a worker again
    h1.ok(&["node", "demote", "node2"]);
    let a_worker_again = || {
        wait_for("node2 a worker again", Duration::from_secs(30), || {
            let out = c.h(2).cli(&["service", "ls"]);
            (manager_status(h1)["node2"].is_empty()
                && String::from_utf8_lossy(&out.stderr).contains("not a swarm manager"))
            .then_some(())
        })
    };
    a_worker_again();
    // the same with node update --role
    h1.ok(&["node", "update", "--role", "manager", "node2"]);
    wait_for("node2 a manager by --role", Duration::from_secs(30), || {
        let ls = c.h(2).cli(&["service", "ls"]);
        (manager_status(h1)["node2"] == "Reachable" && ls.status.success()).then_some(())
    });
    h1.ok(&["node", "update", "--role", "worker", "node2"]);
    a_worker_again();

    // rm: refused while the node is up; once it is down, it goes, and its certificate
    // is refused from then on
    let e = stderr_of(h1, &["node", "rm", "node3"]);
    assert!(e.contains("is not down"), "{e}");
    c.net.cut(3);
    wait_for("node3 Down", Duration::from_secs(20), || {
        (node_states(h1)["node3"].0 == "Down").then_some(())
    });
    h1.ok(&["node", "rm", "node3"]);
    c.net.heal(3);
    // a demoted manager's certificate still says manager, and is refused for Control
    let (code, msg) = grpc_call(&c, CONTROL, Some(promoted.path()));
    assert_eq!(code, 7, "{msg}");
    assert!(msg.contains("is no longer a manager"), "{msg}");
    // a removed node's certificate is refused for the dispatcher
    let (code, msg) = grpc_call(&c, DISPATCHER, Some(worker.path()));
    assert_eq!(code, 7, "{msg}");
    assert!(msg.contains("has been removed from the swarm"), "{msg}");
    // node3's agent keeps trying, and is told why it is refused
    wait_for("node3 refused", Duration::from_secs(20), || {
        c.h(3)
            .host
            .daemon_log()
            .contains("has been removed from the swarm")
            .then_some(())
    });
    assert!(
        !node_states(h1).contains_key("node3"),
        "a removed node came back"
    );
}

#[test]
fn force_new_cluster_recovers_a_swarm_that_lost_quorum() {
    let mut c = Cluster::new(3);
    let m1 = c.h(1).addr.clone();
    c.h(1).ok(&["swarm", "init", "--advertise-addr", &m1]);
    let token = c.h(1).ok(&["swarm", "join-token", "-q", "manager"]);
    for i in [2, 3] {
        c.h(i).ok(&["swarm", "join", "--token", token.trim(), &m1]);
    }
    create_sleepers(c.h(1), "web", 3, &[]);
    // two of three managers gone: no majority, so no change commits, and it says so
    c.h_mut(2).kill_daemon();
    c.h_mut(3).kill_daemon();
    // (it waits the write timeout for a majority, then fails: neither at once nor never)
    let t0 = std::time::Instant::now();
    let e = stderr_of(c.h(1), &["service", "scale", "-d", "web=4"]);
    let waited = t0.elapsed();
    assert!(
        e.contains("not committed within 10 s") && e.contains("majority of managers"),
        "{e}"
    );
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(60),
        "failed after {waited:?}"
    );
    // node1's own task dies meanwhile: its failure cannot be committed yet
    let up: Vec<String> = json_lines(&c.h(1).ok(&["container", "ls", "--format", "json"]))
        .iter()
        .filter(|x| x["Status"].as_str().unwrap_or("").starts_with("Up"))
        .map(|x| x["ID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(up.len(), 1, "web's task on node1: {up:?}");
    let info: serde_json::Value =
        serde_json::from_str(&c.h(1).ok(&["container", "inspect", &up[0]])).unwrap();
    let pid = info["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let out = c.h(1).ok(&["swarm", "init", "--force-new-cluster"]);
    assert!(out.contains("is now a manager"), "{out}");
    let st = manager_status(c.h(1));
    assert_eq!(st["node1"], "Leader", "{st:?}");
    assert_eq!(
        (st["node2"].as_str(), st["node3"].as_str()),
        ("", ""),
        "{st:?}"
    );
    // the state survived, and the swarm takes changes again; the lost nodes' tasks
    // move to node1 once those nodes are marked down
    c.h(1).ok(&["service", "scale", "-d", "web=4"]);
    wait_for("web at 4/4 on node1", Duration::from_secs(30), || {
        let n = running_per_node(c.h(1), "web");
        (n.get("node1") == Some(&4)).then_some(())
    });
    // the task that died while nothing could commit reads as failed (its exit was told
    // again to the new cluster), not as running or assigned; none of node1's tasks
    // stays assigned (those of the gone nodes may: they never heard of them)
    let ps = json_lines(&c.h(1).ok(&["service", "ps", "web", "--format", "json"]));
    let killed = ps
        .iter()
        .find(|t| up[0].starts_with(t["ID"].as_str().unwrap()))
        .expect("the killed task");
    assert!(
        killed["CurrentState"]
            .as_str()
            .unwrap()
            .starts_with("Failed"),
        "{killed}"
    );
    assert!(
        !ps.iter()
            .any(|t| t["Node"] == "node1"
                && t["CurrentState"].as_str().unwrap().starts_with("Assigned")),
        "{ps:?}"
    );
}

#[test]
fn a_worker_that_restarts_cut_off_runs_its_tasks_again() {
    let mut c = Cluster::swarm(2);
    create_sleepers(c.h(1), "edge", 2, &["--constraint", "node.hostname==node2"]);
    assert_eq!(up_containers(c.h(2)), 2);

    // node2 loses its uplink, then its power: every process of the host dies
    c.net.cut(2);
    c.h_mut(2).kill_daemon();
    c.h(2).host.kill_processes();
    // (checked from /proc and the cgroups: `container ls` would start a keeper)
    wait_for("node2's processes dead", Duration::from_secs(10), || {
        let h = &c.h(2).host;
        let empty = h.cgroup_dirs().iter().all(|cg| {
            std::fs::read_to_string(cg.join("cgroup.procs"))
                .unwrap_or_default()
                .trim()
                .is_empty()
        });
        (h.keeper_pids().is_empty() && empty).then_some(())
    });
    // it comes back still cut off: it runs what it last had, with no manager to ask
    c.h_mut(2).start_daemon();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while up_containers(c.h(2)) != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "node2's tasks are not running again after 20 s; its log:\n{}",
            c.h(2).host.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c
        .h(2)
        .host
        .daemon_log()
        .contains("started again the task this node last had"));

    // the uplink returns: the managers' view decides, and settles at two tasks
    c.net.heal(2);
    wait_for(
        "edge at 2 running on node2",
        Duration::from_secs(30),
        || {
            (running_per_node(c.h(1), "edge") == BTreeMap::from([("node2".to_string(), 2)])
                && up_containers(c.h(2)) == 2)
                .then_some(())
        },
    );
}

#[test]
fn the_root_ca_rotates_without_downtime() {
    let c = Cluster::new(3);
    let m1 = c.h(1).addr.clone();
    c.h(1).ok(&["swarm", "init", "--advertise-addr", &m1]);
    let token = |role: &str| c.token(role);
    c.h(2)
        .ok(&["swarm", "join", "--token", &token("manager"), &m1]);
    let old_worker = token("worker");
    c.h(3).ok(&["swarm", "join", "--token", &old_worker, &m1]);
    let old_root = c.h(1).ok(&["swarm", "ca"]);
    create_sleepers(c.h(1), "web", 3, &[]);
    let running = || -> std::collections::BTreeSet<String> {
        json_lines(&c.h(1).ok(&["service", "ps", "web", "--format", "json"]))
            .iter()
            .filter(|t| {
                t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Running")
            })
            .map(|t| t["ID"].as_str().unwrap().to_string())
            .collect()
    };
    let before = running();
    assert_eq!(before.len(), 3);

    // returns once every node has a certificate from the new root
    let new_root = c.h(1).ok(&["swarm", "ca", "--rotate"]);
    assert!(new_root.contains("BEGIN CERTIFICATE") && new_root != old_root);
    let roots_file = |h: &ClusterHost| {
        std::fs::read_to_string(h.host.data_root().join("certificates/swarm-root-ca.crt"))
            .unwrap_or_default()
    };
    wait_for(
        "every node trusting the new root only",
        Duration::from_secs(30),
        || {
            c.hosts
                .iter()
                .all(|h| roots_file(h).trim() == new_root.trim())
                .then_some(())
        },
    );
    // meanwhile each other node trusted both roots, renewed from the new one, and then
    // dropped the old one: its log says so in that order
    // (the log line follows the file by a moment)
    for i in [2, 3] {
        wait_for(
            &format!("node{i}: both roots, a renewal, the new root only"),
            Duration::from_secs(10),
            || {
                let log = c.h(i).host.daemon_log();
                let at = |what: &str| log.match_indices(what).map(|(n, _)| n).collect::<Vec<_>>();
                let (trust, renewed) = (
                    at("the swarm's trusted roots changed"),
                    at("renewed this node's certificate from the new root CA"),
                );
                (trust.len() >= 2
                    && renewed.len() == 1
                    && trust[0] < renewed[0]
                    && renewed[0] < trust[trust.len() - 1])
                    .then_some(())
            },
        );
    }
    // the swarm kept working all along and works now: every node Ready, tasks placed
    let nodes = node_states(c.h(1));
    assert!(nodes.values().all(|(s, _)| s == "Ready"), "{nodes:?}");
    assert_eq!(running(), before, "no task was restarted by the rotation");
    c.h(2).ok(&["service", "scale", "web=6"]);
    let n = running_per_node(c.h(1), "web");
    assert_eq!(n.values().sum::<usize>(), 6, "{n:?}");

    // tokens pin the new root: the old one is refused, the new one joins
    let new_worker = token("worker");
    assert_ne!(new_worker, old_worker);
    c.h(3).ok(&["swarm", "leave"]);
    let e = stderr_of(c.h(3), &["swarm", "join", "--token", &old_worker, &m1]);
    assert!(e.contains("does not match the join token"), "{e}");
    c.h(3).ok(&["swarm", "join", "--token", &new_worker, &m1]);
}

#[test]
fn three_managers_two_workers_lose_nothing_acknowledged() {
    let mut c = Cluster::new(5);
    let m1 = c.h(1).addr.clone();
    c.h(1).ok(&["swarm", "init", "--advertise-addr", &m1]);
    let token = |role: &str| c.token(role);
    let (manager, worker) = (token("manager"), token("worker"));
    for i in [2, 3] {
        c.h(i).ok(&["swarm", "join", "--token", &manager, &m1]);
    }
    for i in [4, 5] {
        c.h(i).ok(&["swarm", "join", "--token", &worker, &m1]);
    }
    wait_for("five Ready nodes", Duration::from_secs(30), || {
        let n = node_states(c.h(1));
        (n.len() == 5 && n.values().all(|(s, _)| s == "Ready")).then_some(())
    });
    // spread over every node
    create_sleepers(c.h(1), "web", 5, &[]);
    assert_eq!(running_per_node(c.h(1), "web").len(), 5);

    // 100 creates through a follower while the leader is killed midway: every create
    // that was acknowledged exists afterwards
    let acked = std::sync::Mutex::new(Vec::new());
    let (first, rest) = c.hosts.split_at_mut(1);
    std::thread::scope(|s| {
        let creator = s.spawn(|| {
            for i in 0..100 {
                let name = format!("s{i}");
                // while there is no leader a create fails; it is tried again (a failed
                // one may still have committed: then its name is taken, and it does not
                // count as acknowledged)
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while std::time::Instant::now() < deadline {
                    let out = rest[0].cli(&[
                        "service",
                        "create",
                        "-d",
                        "--name",
                        &name,
                        "--replicas",
                        "0",
                        "shoal-test/busybox",
                        "sleep",
                        "3600",
                    ]);
                    if out.status.success() {
                        acked.lock().unwrap().push(name.clone());
                        break;
                    }
                    if String::from_utf8_lossy(&out.stderr).contains("already in use") {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        wait_for("30 creates acknowledged", Duration::from_secs(60), || {
            (acked.lock().unwrap().len() >= 30).then_some(())
        });
        first[0].kill_daemon();
        creator.join().unwrap();
    });
    let acked = acked.into_inner().unwrap();
    assert!(
        acked.len() > 90,
        "creates went on once another manager led: {}",
        acked.len()
    );
    let names: Vec<String> = wait_for("a new leader answering", Duration::from_secs(30), || {
        let out = c.h(2).cli(&["service", "ls", "--format", "json"]);
        out.status.success().then(|| {
            json_lines(&String::from_utf8_lossy(&out.stdout))
                .iter()
                .map(|v| v["Name"].as_str().unwrap().to_string())
                .collect()
        })
    });
    for a in &acked {
        assert!(names.contains(a), "acknowledged create {a} is missing");
    }

    // a worker host crashes (every process): its task runs elsewhere, and when the host
    // is back, what it ran is stopped there
    c.h_mut(4).kill_daemon();
    c.h(4).host.kill_processes();
    wait_for("web's task off node4", Duration::from_secs(30), || {
        let n = running_per_node(c.h(2), "web");
        (n.values().sum::<usize>() == 5 && !n.contains_key("node4") && !n.contains_key("node1"))
            .then_some(())
    });
    c.h_mut(4).start_daemon();
    wait_for(
        "node4 back, running nothing",
        Duration::from_secs(30),
        || (node_states(c.h(2))["node4"].0 == "Ready" && up_containers(c.h(4)) == 0).then_some(()),
    );
    assert_eq!(running_per_node(c.h(2), "web").values().sum::<usize>(), 5);
}

/// Waits (30 s at most) until no host has namespaces of these kinds (`tasks`,
/// `overlays`) under its data root.
fn wait_netns_gone(c: &Cluster, kinds: &[&str]) {
    wait_for(
        &format!("no {} namespace left", kinds.join(" or ")),
        Duration::from_secs(30),
        || {
            c.hosts
                .iter()
                .all(|h| {
                    kinds.iter().all(|d| {
                        std::fs::read_dir(h.host.data_root().join("netns").join(d))
                            .map(|mut r| r.next().is_none())
                            .unwrap_or(true)
                    })
                })
                .then_some(())
        },
    );
}

/// The task network namespaces on a host, and each one's address on its first network.
fn task_addrs(h: &ClusterHost) -> Vec<(std::path::PathBuf, String)> {
    let dir = h.host.data_root().join("netns").join("tasks");
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| {
            let addr = ipv4_addrs(&e.path(), Some("eth0")).into_iter().next()?;
            Some((e.path(), addr))
        })
        .collect()
}

/// The body of `http://ADDR/` fetched from inside a namespace.
fn http_get(netns: &std::path::Path, addr: &str) -> Option<String> {
    http_fetch(netns, &format!("http://{addr}/"))
}

/// The body of `url` fetched from inside a namespace (None: no answer).
fn http_fetch(netns: &std::path::Path, url: &str) -> Option<String> {
    wget_in(netns, url).ok()
}

fn ping_from(netns: &std::path::Path, to: &str) -> bool {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["busybox", "ping", "-c", "1", "-W", "1", to])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn tasks_on_three_hosts_reach_each_other_over_an_overlay_that_goes_with_them() {
    let mut c = Cluster::swarm(3);
    c.h(1).ok(&["network", "create", "appnet"]);
    // each task answers HTTP with its own hostname
    c.h(1).ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--replicas-max-per-node",
        "1",
        "--stop-signal",
        "KILL",
        "--network",
        "appnet,alias=www",
        "shoal-test/busybox",
        "sh",
        "-c",
        "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www",
    ]);
    wait_for("a task on each host", Duration::from_secs(30), || {
        let n = running_per_node(c.h(1), "web");
        (n.len() == 3 && n.values().all(|v| *v == 1)).then_some(())
    });
    let (a, b, third) = wait_for("each task's address", Duration::from_secs(10), || {
        let (a, b, x) = (task_addrs(c.h(1)), task_addrs(c.h(2)), task_addrs(c.h(3)));
        (a.len() == 1 && b.len() == 1 && x.len() == 1)
            .then(|| (a[0].clone(), b[0].clone(), x[0].clone()))
    });
    assert!(a.1 != b.1 && b.1 != third.1 && a.1 != third.1);
    // across hosts, over VXLAN, with entries the managers pushed
    wait_for(
        "host 1's task to reach host 2's",
        Duration::from_secs(10),
        || ping_from(&a.0, &b.1).then_some(()),
    );
    assert!(ping_from(&b.0, &a.1), "host 2's task cannot reach host 1's");

    // service discovery, from a task's own resolver (127.0.0.11 in its namespace)
    let both: std::collections::BTreeSet<String> =
        [a.1.clone(), b.1.clone(), third.1.clone()].into();
    let tasks = wait_for(
        "tasks.web to answer all three tasks",
        Duration::from_secs(10),
        || {
            let got = resolve(&a.0, "tasks.web");
            (got == both).then_some(got)
        },
    );
    assert_eq!(tasks.len(), 3);
    let vip = resolve(&a.0, "web");
    assert_eq!(vip.len(), 1, "web is its VIP: {vip:?}");
    assert!(
        vip.is_disjoint(&both),
        "the VIP is no task's address: {vip:?}"
    );
    assert_eq!(resolve(&b.0, "www"), vip, "the alias is the service");
    assert!(resolve(&a.0, "nosuchservice").is_empty());
    // a task by its name, <service>.<slot>.<task ID> (its namespace is named by its ID)
    let id_b = b.0.file_name().unwrap().to_string_lossy().into_owned();
    let ps = json_lines(&c.h(1).ok(&["service", "ps", "web", "--format", "json"]));
    let slot_name = ps
        .iter()
        .find(|t| id_b.starts_with(t["ID"].as_str().unwrap()))
        .map(|t| t["Name"].as_str().unwrap().to_string())
        .expect("host 2's task in service ps");
    let task_name = format!("{slot_name}.{id_b}");
    assert_eq!(
        resolve(&a.0, &task_name),
        [b.1.clone()].into(),
        "{task_name}"
    );

    // the VIP spreads new connections over the three tasks (nftables in the client's
    // namespace)
    let vip = vip.into_iter().next().unwrap();
    let answers: std::collections::BTreeSet<String> =
        (0..30).filter_map(|_| http_get(&a.0, &vip)).collect();
    assert_eq!(
        answers.len(),
        3,
        "30 requests to the VIP reached {answers:?}"
    );

    // host 2's daemon is killed and restarts: its task keeps running, and its resolver
    // and VIP rules come back with the daemon
    c.h_mut(2).start_daemon();
    wait_for(
        "host 2's task to resolve again",
        Duration::from_secs(20),
        || (resolve(&b.0, "tasks.web") == both).then_some(()),
    );
    wait_for(
        "host 2's task to reach the VIP",
        Duration::from_secs(10),
        || http_get(&b.0, &vip),
    );

    // another network, internal, with DNS round robin: isolated from the first, its
    // names are its own, and it has no way out
    c.h(1).ok(&["network", "create", "--internal", "backnet"]);
    let back: serde_json::Value =
        serde_json::from_str(&c.h(1).ok(&["network", "inspect", "backnet"])).unwrap();
    let back_prefix = back[0]["IPAM"]["Config"][0]["Subnet"]
        .as_str()
        .unwrap()
        .rsplit_once('.')
        .unwrap()
        .0
        .to_string();
    create_sleepers(
        c.h(1),
        "db",
        1,
        &["--network", "backnet", "--endpoint-mode", "dnsrr"],
    );
    let db = wait_for("db's task on backnet", Duration::from_secs(30), || {
        c.hosts
            .iter()
            .flat_map(task_addrs)
            .find(|(_, addr)| addr.starts_with(&format!("{back_prefix}.")))
    });
    let db_addr: std::collections::BTreeSet<String> = [db.1.clone()].into();
    wait_for(
        "db to resolve to its task (dnsrr)",
        Duration::from_secs(10),
        || (resolve(&db.0, "db") == db_addr).then_some(()),
    );
    assert!(
        resolve(&a.0, "db").is_empty(),
        "web's task sees a name of another network"
    );
    assert!(
        resolve(&db.0, "web").is_empty(),
        "db's task sees a name of another network"
    );
    // each pings itself: so a ping that fails below is isolation, not a broken ping
    assert!(ping_from(&a.0, &a.1), "web's task cannot ping at all");
    assert!(ping_from(&db.0, &db.1), "db's task cannot ping at all");
    assert!(!ping_from(&a.0, &db.1), "two networks are not isolated");
    assert!(!ping_from(&db.0, &a.1), "two networks are not isolated");
    // a way out through the host (another host's underlay address is "outside"), but
    // none from an internal network
    for h in [c.h(1), c.h(2)] {
        assert!(
            ping_from(&a.0, &h.addr),
            "web's task cannot get out to {}",
            h.addr
        );
        assert!(
            !ping_from(&db.0, &h.addr),
            "an internal network got out to {}",
            h.addr
        );
    }
    c.h(1).ok(&["service", "rm", "db"]);

    // scaled to 1: DNS and the VIP follow within 2 s
    c.h(1).ok(&["service", "scale", "web=1"]);
    let (left, addr) = wait_for("one web task left", Duration::from_secs(20), || {
        let all: Vec<_> = c
            .hosts
            .iter()
            .flat_map(task_addrs)
            .filter(|(_, x)| both.contains(x))
            .collect();
        (all.len() == 1).then(|| all[0].clone())
    });
    let only: std::collections::BTreeSet<String> = [addr.clone()].into();
    wait_for("tasks.web to follow", Duration::from_secs(2), || {
        (resolve(&left, "tasks.web") == only).then_some(())
    });
    // every request answered, each by the task left (one to the gone task would time out)
    let own = http_get(&left, &addr).expect("the task left answers");
    let answers: Vec<Option<String>> = (0..10).map(|_| http_get(&left, &vip)).collect();
    assert!(
        answers.iter().all(|a| a.as_ref() == Some(&own)),
        "the VIP still reaches a gone task: {answers:?} (the one left says {own:?})"
    );

    // the service goes: so do its namespaces and, with its last task, the network on
    // each host
    c.h(1).ok(&["service", "rm", "web"]);
    wait_netns_gone(&c, &["tasks", "overlays"]);
    c.h(1).ok(&["network", "rm", "appnet"]);
    c.h(1).ok(&["network", "rm", "backnet"]);
}

/// What `url` answers when asked from host `from`'s namespace (None: no answer).
fn fetch_from(c: &Cluster, from: usize, url: &str) -> Option<String> {
    http_fetch(
        &std::path::Path::new("/run/netns").join(&c.net.hosts[from - 1]),
        url,
    )
}

/// The IPv4 addresses in host `h`'s overlay namespaces (each network's bridge: its
/// gateway, and on ingress the node's ingress address).
fn overlay_addrs(h: &ClusterHost) -> Vec<String> {
    let dir = h.host.data_root().join("netns/overlays");
    dir_names(&dir)
        .iter()
        .flat_map(|n| ipv4_addrs(&dir.join(n), None))
        .collect()
}

/// Service NAME: one task on host NODE, publishing with PUBLISH (`--publish` flags), a
/// busybox httpd that answers `body` at / and the client's address at /cgi-bin/ip.
/// Returns once the task runs.
fn create_httpd_on(h: &ClusterHost, name: &str, node: &str, publish: &[&str], body: &str) {
    let cmd = httpd_cmd(body);
    let constraint = format!("node.hostname=={node}");
    let mut args = vec![
        "service",
        "create",
        "--name",
        name,
        "--replicas",
        "1",
        "--constraint",
        &constraint,
        "--stop-signal",
        "KILL",
    ];
    args.extend_from_slice(publish);
    args.extend_from_slice(&["shoal-test/busybox", "sh", "-c", &cmd]);
    h.ok(&args);
    wait_for(
        &format!("{name} running on {node}"),
        Duration::from_secs(30),
        || (running_per_node(h, name).get(node) == Some(&1)).then_some(()),
    );
}

#[test]
fn a_published_port_answers_on_every_host_even_one_without_the_task() {
    let c = Cluster::swarm(3);
    create_httpd_on(c.h(1), "pub", "node2", &["-p", "8080:80"], "published");
    // from each host (its own namespace), to each host's address: nodes 1 and 3 have no
    // task of the service
    for from in 1..=3 {
        for to in 1..=3 {
            let url = format!("http://{}:8080/", c.h(to).addr);
            let body = wait_for(
                &format!("{url} from node{from}"),
                Duration::from_secs(10),
                || fetch_from(&c, from, &url),
            );
            assert_eq!(body, "published", "{url} from node{from}");
        }
    }
    // the client's address: kept when the node that takes the connection has the task,
    // lost (the forwarding node's ingress address) when it forwards to another node
    let seen = |to: usize| {
        let url = format!("http://{}:8080/cgi-bin/ip", c.h(to).addr);
        client_ip(&wait_for(&url, Duration::from_secs(10), || {
            fetch_from(&c, 1, &url)
        }))
    };
    assert_eq!(
        seen(2),
        c.h(1).addr,
        "node2 has the task: the client's address"
    );
    let via3 = seen(3);
    // (an address of node3's bridges that node2's do not have: not the shared gateway)
    let (node3_overlay, node2_overlay) = (overlay_addrs(c.h(3)), overlay_addrs(c.h(2)));
    assert!(
        node3_overlay.contains(&via3) && !node2_overlay.contains(&via3),
        "node3 forwards: the task sees node3's ingress address, not {via3} (node3: {node3_overlay:?}, node2: {node2_overlay:?})"
    );

    // host mode: the port answers only where a task runs, with the client's address
    create_httpd_on(
        c.h(1),
        "hostpub",
        "node3",
        &["--publish", "published=8081,target=80,mode=host"],
        "hostmode",
    );
    let url = format!("http://{}:8081/", c.h(3).addr);
    let body = wait_for(&url, Duration::from_secs(10), || fetch_from(&c, 1, &url));
    assert_eq!(body, "hostmode");
    let url = format!("http://{}:8081/cgi-bin/ip", c.h(3).addr);
    let ip = wait_for(&url, Duration::from_secs(10), || fetch_from(&c, 2, &url));
    assert_eq!(
        client_ip(&ip),
        c.h(2).addr,
        "host mode keeps the client's address"
    );
    for other in [1, 2] {
        let url = format!("http://{}:8081/", c.h(other).addr);
        assert_eq!(
            fetch_from(&c, 3, &url),
            None,
            "a host-mode port answers only where its task runs ({url})"
        );
    }
    // the services go: the ports stop answering and the ingress network goes too
    c.h(1).ok(&["service", "rm", "pub"]);
    c.h(1).ok(&["service", "rm", "hostpub"]);
    for (to, port) in [(1, 8080), (2, 8080), (3, 8080), (3, 8081)] {
        let url = format!("http://{}:{port}/", c.h(to).addr);
        wait_for(
            &format!("{url} to stop answering"),
            Duration::from_secs(10),
            || fetch_from(&c, 2, &url).is_none().then_some(()),
        );
    }
    wait_netns_gone(&c, &["overlays"]);
}

#[test]
fn a_standalone_container_joins_an_attachable_network() {
    let c = Cluster::swarm(2);
    c.h(1).ok(&["network", "create", "--attachable", "attnet"]);
    c.h(1).ok(&["network", "create", "plainnet"]);
    c.h(1).ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--network",
        "attnet",
        "--constraint",
        "node.hostname==node1",
        "--stop-signal",
        "KILL",
        "shoal-test/busybox",
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo from-web > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www",
    ]);
    // only attachable networks take standalone containers, and saying so
    let err = stderr_of(
        c.h(2),
        &[
            "container",
            "run",
            "--network",
            "plainnet",
            "shoal-test/busybox",
            "true",
        ],
    );
    assert!(err.contains("attachable"), "{err}");
    // named as the flag it came with, through the node and the managers
    assert!(err.contains("--network \"plainnet\": "), "{err}");
    // a container on node2 joins attnet: it reaches the service on node1 by name (DNS
    // and the VIP), and the service's task reaches it by its name
    c.h(2).ok(&[
        "container",
        "run",
        "-d",
        "--name",
        "probe",
        "--network",
        "attnet,alias=prober",
        "shoal-test/busybox",
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo from-probe > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www",
    ]);
    let body = wait_for("web from the container", Duration::from_secs(10), || {
        let out = c.h(2).cli(&[
            "container",
            "exec",
            "probe",
            "timeout",
            "3",
            "wget",
            "-q",
            "-O",
            "-",
            "http://web/",
        ]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    assert_eq!(body, "from-web");
    let (web_ns, _) = task_addrs(c.h(1))
        .into_iter()
        .next()
        .expect("web's namespace on node1");
    for name in ["probe", "prober"] {
        let addrs = wait_for(&format!("{name} resolves"), Duration::from_secs(10), || {
            let a = resolve(&web_ns, name);
            (!a.is_empty()).then_some(a)
        });
        let addr = addrs.iter().next().unwrap().clone();
        let body = wait_for("the container from web", Duration::from_secs(10), || {
            http_get(&web_ns, &addr)
        });
        assert_eq!(body, "from-probe");
    }
    // the container goes: so does its attachment (its namespace on node2, its name)
    c.h(2).ok(&["container", "rm", "-f", "probe"]);
    wait_for(
        "no namespace left on node2",
        Duration::from_secs(10),
        || task_addrs(c.h(2)).is_empty().then_some(()),
    );
    wait_for("probe no longer resolves", Duration::from_secs(10), || {
        resolve(&web_ns, "probe").is_empty().then_some(())
    });
    c.h(1).ok(&["service", "rm", "web"]);
    wait_netns_gone(&c, &["overlays"]);
    // (refused until web's task has said it stopped)
    wait_for("network rm attnet", Duration::from_secs(10), || {
        c.h(1)
            .cli(&["network", "rm", "attnet"])
            .status
            .success()
            .then_some(())
    });
}

#[test]
fn dns_and_vips_follow_tasks_across_a_leader_change() {
    let mut c = three_managers();
    c.h(1).ok(&["network", "create", "appnet"]);
    c.h(1).ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "--constraint",
        "node.hostname!=node1",
        "--network",
        "appnet",
        "--stop-signal",
        "KILL",
        "shoal-test/busybox",
        "sh",
        "-c",
        "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www",
    ]);
    let task_of = |i: usize| {
        wait_for(
            &format!("web's task on node{i}"),
            Duration::from_secs(30),
            || task_addrs(c.h(i)).into_iter().next(),
        )
    };
    let (t2, t3) = (task_of(2), task_of(3));
    let both: std::collections::BTreeSet<String> = [t2.1.clone(), t3.1.clone()].into();
    for t in [&t2, &t3] {
        wait_for("tasks.web: both tasks", Duration::from_secs(10), || {
            (resolve(&t.0, "tasks.web") == both).then_some(())
        });
    }
    // the leader (with no task of web) dies; under the new leader, web shrinks to one
    // task: within 2 s the other node's answers and VIP rules have only that one
    kill_leader(&mut c, 1, 2);
    c.h(2).ok(&["service", "scale", "web=1"]);
    let (kept, gone) = wait_for("one task of web left", Duration::from_secs(10), || {
        match (task_addrs(c.h(2)).is_empty(), task_addrs(c.h(3)).is_empty()) {
            (false, true) => Some((t2.clone(), t3.clone())),
            (true, false) => Some((t3.clone(), t2.clone())),
            _ => None,
        }
    });
    let only: std::collections::BTreeSet<String> = [kept.1.clone()].into();
    wait_for(
        "tasks.web: the kept task only",
        Duration::from_secs(2),
        || (resolve(&kept.0, "tasks.web") == only).then_some(()),
    );
    let vip = resolve(&kept.0, "web")
        .into_iter()
        .next()
        .expect("web's VIP");
    let own = http_get(&kept.0, &kept.1).expect("the kept task answers");
    // every request answered, each by the kept task (one to the gone task would time out)
    let answers: Vec<Option<String>> = (0..10).map(|_| http_get(&kept.0, &vip)).collect();
    assert!(
        answers.iter().all(|a| a.as_ref() == Some(&own)),
        "the VIP still reaches the task that went ({}): {answers:?}",
        gone.1
    );
}

/// The network namespace of `service`'s (first) running task, on whichever host it is.
fn task_netns(c: &Cluster, service: &str) -> std::path::PathBuf {
    wait_for(
        &format!("{service}'s task namespace"),
        Duration::from_secs(30),
        || {
            let ps = c.h(1).ok(&[
                "service",
                "ps",
                service,
                "--format",
                "json",
                "--filter",
                "desired-state=running",
            ]);
            let t = json_lines(&ps).into_iter().find(|t| {
                t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Running")
            })?;
            let id = t["ID"].as_str()?.to_string();
            (1..=3).find_map(|i| {
                let dir = c.h(i).host.data_root().join("netns/tasks");
                dir_names(&dir)
                    .into_iter()
                    .find(|n| n.starts_with(&id))
                    .map(|n| dir.join(n))
            })
        },
    )
}

/// Rolling updates across three nodes: parallelism 2 with a 1 s delay paces the
/// replacement (read from the tasks' creation times), and a start-first update of a web
/// service, under client loops through the routing mesh and through its VIP, loses no
/// request (each is counted).
#[test]
fn updates_are_paced_and_start_first_loses_no_request() {
    let c = Cluster::swarm(3);
    let h = c.h(1);
    create_sleepers(h, "pace", 6, &[]);
    h.ok(&[
        "service",
        "update",
        "--update-parallelism",
        "2",
        "--update-delay",
        "1s",
        "--update-monitor",
        "1s",
        "--env-add",
        "V=2",
        "pace",
    ]);
    let ps = json_lines(&h.ok(&[
        "service",
        "ps",
        "pace",
        "--format",
        "json",
        "--filter",
        "desired-state=running",
    ]));
    assert_eq!(ps.len(), 6, "{ps:?}");
    let mut created: Vec<i64> = ps
        .iter()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t["CreatedAt"].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    created.sort();
    // two workers, each a second between its tasks: no three within a second
    for w in created.windows(3) {
        assert!(
            w[2] - w[0] >= 1_000,
            "at most two replaced at once, a second apart: {created:?}"
        );
    }
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&h.ok(&["service", "inspect", "pace"])).unwrap()
            [0]["UpdateStatus"]["State"],
        "completed"
    );

    // a web service on an overlay, published on the mesh, healthy once it answers
    h.ok(&["network", "create", "webnet"]);
    let cmd = httpd_cmd("web");
    h.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--network",
        "webnet",
        "-p",
        "8080:80",
        "--health-cmd",
        "wget -q -O /dev/null http://127.0.0.1/",
        "--health-interval",
        "200ms",
        "--update-order",
        "start-first",
        "--update-monitor",
        "2s",
        "shoal-test/busybox",
        "sh",
        "-c",
        &cmd,
    ]);
    create_sleepers(h, "client", 1, &["--network", "webnet"]);
    let client = task_netns(&c, "client");
    let mesh = format!("http://{}:8080/", c.h(2).addr);
    let node1 = std::path::Path::new("/run/netns").join(&c.net.hosts[0]);
    // the service's name, from the task's resolver: its VIP
    let vip = wait_for(
        "web's VIP from the resolver",
        Duration::from_secs(30),
        || resolve(&client, "web").into_iter().next(),
    );
    wait_for("the VIP answers", Duration::from_secs(30), || {
        http_get(&client, &vip).filter(|b| b == "web")
    });
    wait_for("the mesh answers", Duration::from_secs(30), || {
        http_fetch(&node1, &mesh).filter(|b| b == "web")
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = [(client.clone(), format!("http://{vip}/")), (node1, mesh)]
        .into_iter()
        .map(|(ns, url)| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let t0 = std::time::Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let at = t0.elapsed();
                    match wget_in(&ns, &url) {
                        Ok(b) if b == "web" => ok += 1,
                        Ok(b) => failed.push(format!("answered {b:?}")),
                        Err(e) => failed.push(format!("{e}, {at:?} into the update")),
                    }
                }
                (url, ok, failed)
            })
        })
        .collect();
    let before = running_per_node(h, "web").values().sum::<usize>();
    assert_eq!(before, 4);
    let out = h.ok(&["service", "update", "--env-add", "V=2", "web"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loops {
        let (url, ok, failed) = l.join().unwrap();
        assert!(ok >= 20, "{url}: only {ok} requests during the update");
        assert!(
            failed.is_empty(),
            "{url}: {} of {} requests failed during a start-first update: {failed:?}",
            failed.len(),
            ok as usize + failed.len()
        );
        eprintln!("{url}: {ok} requests during the update, none failed");
    }
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
    assert_eq!(ps.len(), 4);
    for s in ["web", "client", "pace"] {
        h.ok(&["service", "rm", s]);
    }
    wait_netns_gone(&c, &["tasks"]);
}

/// Kills (-9) a running task of the update to V=2 that is not in `seen`, on node2 or
/// node3; notes it in `seen`.
fn kill_a_new_task(c: &Cluster, seen: &mut Vec<String>) {
    let (id, pid) = wait_for("a new task running", Duration::from_secs(60), || {
        (2..=3).find_map(|i| running_container_with(&c.h(i).host, seen, "V=2"))
    });
    seen.push(id);
    kill9(pid as i32);
}

/// The leader killed in the middle of an update: a new leader goes on with it, with the
/// failure the old one had counted, so that a second failure pauses it as the ratio
/// says (Swarm's new leader starts counting from nothing).
#[test]
fn an_update_goes_on_under_a_new_leader_with_its_counts() {
    let mut c = three_managers();
    // the tasks on node2 and node3 (node1 leads, and is killed); the restart
    // supervisor's replacements of the tasks killed here, which the update did not make
    // and which do not count, wait 30 s
    create_sleepers(
        c.h(1),
        "app",
        4,
        &[
            "--constraint",
            "node.hostname!=node1",
            "--restart-delay",
            "30s",
        ],
    );
    c.h(1).ok(&[
        "service",
        "update",
        "-d",
        "--update-max-failure-ratio",
        "0.25",
        "--update-delay",
        "2s",
        "--update-monitor",
        "60s",
        "--env-add",
        "V=2",
        "app",
    ]);
    let state = |h: &ClusterHost| {
        let s: serde_json::Value =
            serde_json::from_str(&h.ok(&["service", "inspect", "app"])).unwrap();
        s[0]["UpdateStatus"]["State"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let mut seen = Vec::new();
    kill_a_new_task(&c, &mut seen);
    wait_for("the failure counted", Duration::from_secs(30), || {
        let ps = c.h(1).ok(&["service", "ps", "app", "--format", "json"]);
        json_lines(&ps)
            .iter()
            .any(|t| {
                t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Failed")
            })
            .then_some(())
    });
    assert_eq!(
        state(c.h(1)),
        "updating",
        "one failure of four is tolerated"
    );
    kill_leader(&mut c, 1, 2);
    assert_eq!(state(c.h(2)), "updating");
    kill_a_new_task(&c, &mut seen);
    let st = wait_for("the update paused", Duration::from_secs(60), || {
        let st = state(c.h(2));
        (st != "updating").then_some(st)
    });
    assert_eq!(st, "paused", "two failures of four: the first was kept");
}
