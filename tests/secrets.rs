//! Secrets and configs through the CLI on a single-node swarm: made from a file and from
//! stdin, listed, inspected (a config with its data, as Docker shows it, a secret never)
//! and removed; bad input refused with nothing made; a service's tasks reading them on a
//! tmpfs with the owner and mode asked for; and no byte of a secret on the disk. As
//! root; through scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// Runs the CLI with `input` on its stdin.
fn with_stdin(h: &Host, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut c = h
        .cmd()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    c.wait_with_output().unwrap()
}

fn fails(h: &Host, args: &[&str]) -> String {
    let out = h.cli(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn names(h: &Host, kind: &str) -> Vec<String> {
    json_lines(&h.ok(&[kind, "ls", "--format", "json"]))
        .iter()
        .map(|v| v["Name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn configs_are_made_listed_inspected_and_removed() {
    let (h, _d) = swarm_host();
    let file = h.data_root().join("site.conf");
    std::fs::write(&file, b"listen 80;\n").unwrap();
    let id = h.ok(&[
        "config",
        "create",
        "-l",
        "team=web",
        "site",
        file.to_str().unwrap(),
    ]);
    assert_eq!(id.trim().len(), 25, "an ID: {id}");
    let out = with_stdin(&h, &["config", "create", "motd", "-"], b"hello\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(names(&h, "config"), ["motd", "site"]);
    let shown: serde_json::Value =
        serde_json::from_str(&h.ok(&["config", "inspect", "site"])).unwrap();
    assert_eq!(shown[0]["Spec"]["Name"], "site");
    assert_eq!(shown[0]["Spec"]["Labels"]["team"], "web");
    assert_eq!(shown[0]["Spec"]["Data"], "bGlzdGVuIDgwOwo="); // "listen 80;\n"
    assert_eq!(shown[0]["ID"], id.trim());

    // refused, each naming what, and nothing made
    let empty = h.data_root().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let e = fails(&h, &["config", "create", "e", empty.to_str().unwrap()]);
    assert!(e.contains("FILE") && e.contains("more than 0 bytes"), "{e}");
    let big = h.data_root().join("big");
    std::fs::write(&big, vec![b'x'; 1000 * 1024]).unwrap();
    let e = fails(&h, &["config", "create", "b", big.to_str().unwrap()]);
    assert!(e.contains("less than 1000 KiB"), "{e}");
    let e = fails(&h, &["config", "create", "bad.", file.to_str().unwrap()]);
    assert!(
        e.contains("NAME") && e.contains("not a valid config name"),
        "{e}"
    );
    let e = fails(&h, &["config", "create", "site", file.to_str().unwrap()]);
    assert!(e.contains("already in use"), "{e}");
    let e = fails(&h, &["config", "create", "x", "/no/such/file"]);
    assert!(e.contains("/no/such/file"), "{e}");
    assert_eq!(names(&h, "config"), ["motd", "site"]);

    // bad references: said, nothing made
    let svc = |extra: &[&str]| {
        let mut a = vec!["service", "create", "-d", "--name", "web"];
        a.extend_from_slice(extra);
        a.extend(["shoal-test/busybox", "true"]);
        fails(&h, &a)
    };
    let e = svc(&["--config", "source=site,mode=999"]);
    assert!(e.contains("--config") && e.contains("at most 0777"), "{e}");
    let e = svc(&["--config", "source=site,target=../x"]);
    assert!(
        e.contains("--config") && e.contains("no '.' or '..'"),
        "{e}"
    );
    let e = svc(&["--secret", "pw"]);
    assert!(
        e.contains("--secret") && e.contains("secret not found: pw"),
        "{e}"
    );
    assert!(h.ok(&["service", "ls", "-q"]).trim().is_empty());

    h.ok(&["config", "rm", "site", "motd"]);
    assert!(names(&h, "config").is_empty());
    let e = fails(&h, &["config", "rm", "site"]);
    assert!(e.contains("not found"), "{e}");
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

fn info_count(h: &Host, what: &str) -> Option<u32> {
    h.ok(&["system", "info"])
        .lines()
        .find_map(|l| l.trim().strip_prefix(what)?.trim().parse().ok())
}

#[test]
fn a_task_reads_its_secrets_on_a_tmpfs_and_no_secret_byte_reaches_the_disk() {
    let (h, d) = swarm_host();
    let marker = unique_marker(32);
    let out = with_stdin(&h, &["secret", "create", "pw", "-"], marker.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // from a file, outside the data root (the test's own file is not shoal's to keep)
    let src = tempfile::tempdir().unwrap();
    let keyfile = src.path().join("api.key");
    std::fs::write(&keyfile, b"api-key-data").unwrap();
    h.ok(&[
        "secret",
        "create",
        "-l",
        "env=prod",
        "apikey",
        keyfile.to_str().unwrap(),
    ]);
    drop(src);
    let out = with_stdin(&h, &["config", "create", "site", "-"], b"listen 80;\n");
    assert!(out.status.success());
    assert_eq!(names(&h, "secret"), ["apikey", "pw"]);
    // the manager's data key is rotated: the Raft database is re-sealed with a new one
    let dek = h.data_root().join("certificates/swarm-raft-dek.json");
    let key_ids = || {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&dek).unwrap()).unwrap();
        let ids: Vec<u64> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_u64().unwrap())
            .collect();
        (v["current"].as_u64().unwrap(), ids)
    };
    assert_eq!(key_ids(), (1, vec![1]));
    h.ok(&["swarm", "update", "--rotate-dek"]);
    wait_for(
        "the data key to be rotated",
        Duration::from_secs(30),
        || (key_ids() == (2, vec![2])).then_some(()),
    );
    // a secret's data never comes back
    let shown = h.ok(&["secret", "inspect", "pw"]);
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v[0]["Spec"]["Name"], "pw");
    assert!(
        v[0]["Spec"]
            .get("Data")
            .is_none_or(|d| d.is_null() || d == ""),
        "{shown}"
    );
    assert!(files_holding_text(&shown, &marker).is_empty());

    // bad input: each refused, naming what, nothing made
    let e = String::from_utf8_lossy(&with_stdin(&h, &["secret", "create", "e", "-"], b"").stderr)
        .into_owned();
    assert!(e.contains("more than 0 bytes"), "{e}");
    let e = String::from_utf8_lossy(
        &with_stdin(
            &h,
            &["secret", "create", "big", "-"],
            &vec![b'x'; 500 * 1024],
        )
        .stderr,
    )
    .into_owned();
    assert!(e.contains("less than 500 KiB"), "{e}");
    let e =
        String::from_utf8_lossy(&with_stdin(&h, &["secret", "create", "bad.", "-"], b"x").stderr)
            .into_owned();
    assert!(e.contains("not a valid secret name"), "{e}");
    let e = String::from_utf8_lossy(&with_stdin(&h, &["secret", "create", "pw", "-"], b"x").stderr)
        .into_owned();
    assert!(e.contains("already in use"), "{e}");
    assert_eq!(names(&h, "secret"), ["apikey", "pw"]);

    let script = "stat -c '%n %u %g %a' /run/secrets/db_pw /run/secrets/apikey /etc/site.conf; \
                  sha256sum /run/secrets/db_pw; \
                  grep -E ' (/run/secrets/|/etc/site.conf)' /proc/mounts; \
                  echo touch; touch /run/secrets/db_pw 2>&1 | head -1; echo done; sleep 1000";
    h.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "app",
        "--secret",
        "source=pw,target=db_pw,uid=1000,gid=1001,mode=0400",
        "--secret",
        "apikey",
        "--config",
        "source=site,target=/etc/site.conf,mode=0440",
        "shoal-test/busybox",
        "sh",
        "-c",
        script,
    ]);
    let logs = wait_for("the task's report", Duration::from_secs(60), || {
        let o = h.ok(&["service", "logs", "app"]);
        o.contains("done").then_some(o)
    });
    // without the `name.slot.id@node | ` prefixes
    let logs: String = logs
        .lines()
        .map(|l| l.split_once("| ").map_or(l, |x| x.1).to_string() + "\n")
        .collect();
    assert!(logs.contains("/run/secrets/db_pw 1000 1001 400"), "{logs}");
    assert!(logs.contains("/run/secrets/apikey 0 0 444"), "{logs}");
    assert!(logs.contains("/etc/site.conf 0 0 440"), "{logs}");
    assert!(logs.contains(&sha256(marker.as_bytes())), "{logs}");
    // each file is a read-only mount of a nodev, nosuid, noexec tmpfs
    for target in [
        "/run/secrets/db_pw",
        "/run/secrets/apikey",
        "/etc/site.conf",
    ] {
        let line = logs
            .lines()
            .find(|l| {
                l.split_whitespace().nth(1) == Some(target) && l.split_whitespace().count() >= 4
            })
            .unwrap_or_else(|| panic!("no mount at {target}: {logs}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[2], "tmpfs", "{line}");
        for o in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(
                f[3].split(',').any(|x| x == o),
                "{target} is not {o}: {line}"
            );
        }
    }
    assert!(logs.contains("Read-only file system"), "{logs}");
    // the node holds them in memory, and nothing of them on its side once started
    assert_eq!(info_count(&h, "Secrets held:"), Some(2));
    assert_eq!(info_count(&h, "Configs held:"), Some(1));
    assert!(dir_names(&h.data_root().join("task-files")).is_empty());

    // in use: refused, naming the service
    let e = fails(&h, &["secret", "rm", "pw"]);
    assert!(
        e.contains("secret 'pw' is in use by the following service: app"),
        "{e}"
    );
    let e = fails(&h, &["config", "rm", "site"]);
    assert!(e.contains("in use by the following service: app"), "{e}");

    // a reference removed rolls the service: the new task has no apikey
    h.ok(&["service", "update", "-d", "--secret-rm", "apikey", "app"]);
    let spec = h.ok(&["service", "inspect", "app"]);
    let v: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let secrets = &v[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"];
    assert_eq!(secrets.as_array().map(|a| a.len()), Some(1), "{spec}");
    assert_eq!(secrets[0]["SecretName"], "pw");
    wait_for("the node to let apikey go", Duration::from_secs(60), || {
        (info_count(&h, "Secrets held:") == Some(1)).then_some(())
    });
    let e = fails(&h, &["service", "update", "--secret-rm", "nosuch", "app"]);
    assert!(
        e.contains("--secret-rm") && e.contains("does not use it"),
        "{e}"
    );

    h.ok(&["service", "rm", "app"]);
    wait_for(
        "the node to let the secrets go",
        Duration::from_secs(60),
        || {
            (info_count(&h, "Secrets held:") == Some(0)
                && info_count(&h, "Configs held:") == Some(0))
            .then_some(())
        },
    );
    h.ok(&["secret", "rm", "pw", "apikey"]);
    h.ok(&["config", "rm", "site"]);
    assert!(names(&h, "secret").is_empty());

    drop(d); // the daemon stops: what it would write is written
    assert_nowhere(&[h.data_root()], &marker);
}

/// Whether `text` holds `marker` in plain (as a file would).
fn files_holding_text(text: &str, marker: &str) -> Vec<()> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t"), text).unwrap();
    files_holding(dir.path(), marker.as_bytes())
        .into_iter()
        .map(|_| ())
        .collect()
}

/// The live tasks of `app` (those that may still run) with the version of `pw` each has.
fn task_versions(h: &Host) -> Vec<(String, u64)> {
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["service", "inspect", "app"])).unwrap();
    v[0]["TaskFiles"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["ID"].as_str().unwrap().to_string(),
                        t["Secrets"]["pw"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until both tasks of `app` have version `v` of `pw` and each says the digest
/// of `data` (the file it reads) in its log; the live tasks' IDs.
fn rolled_to(h: &Host, v: u64, data: &[u8]) -> Vec<String> {
    let want = sha256(data);
    wait_for(
        &format!("every task on version {v}"),
        Duration::from_secs(90),
        || {
            let tasks = task_versions(h);
            if tasks.len() != 2 || tasks.iter().any(|t| t.1 != v) {
                return None;
            }
            let logs = h.ok(&["service", "logs", "app"]);
            let said = |id: &str| {
                logs.lines()
                    .any(|l| l.contains(&format!(".{id}@")) && l.contains(&want))
            };
            tasks
                .iter()
                .all(|t| said(&t.0))
                .then(|| tasks.into_iter().map(|t| t.0).collect())
        },
    )
}

#[test]
fn a_secret_update_rolls_every_task_to_the_new_data_and_rollback_restores_it() {
    let (h, _d) = swarm_host();
    let one = b"version-one-data";
    let two = b"version-two-data";
    assert!(with_stdin(&h, &["secret", "create", "pw", "-"], one)
        .status
        .success());
    h.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "app",
        "--replicas",
        "2",
        "--secret",
        "pw",
        "shoal-test/busybox",
        "sh",
        "-c",
        "sha256sum /run/secrets/pw; sleep 1000",
    ]);
    let first = rolled_to(&h, 1, one);

    let out = with_stdin(&h, &["secret", "update", "pw", "-"], two);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("version 2 of its data: app rolls to it"),
        "{said}"
    );
    let second = rolled_to(&h, 2, two);
    // every task was replaced: none of the tasks that read the old data is left
    assert!(
        second.iter().all(|t| !first.contains(t)),
        "{first:?} {second:?}"
    );

    // the same data again makes no version, labels alone roll nothing
    let out = with_stdin(&h, &["secret", "update", "pw", "-"], two);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.ok(&["secret", "update", "-l", "team=db", "pw"]);
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["secret", "inspect", "pw"])).unwrap();
    assert_eq!(v[0]["Spec"]["Labels"]["team"], "db");
    assert_eq!(
        task_versions(&h).iter().map(|t| &t.0).collect::<Vec<_>>(),
        second.iter().collect::<Vec<_>>()
    );
    let e = fails(&h, &["secret", "update", "pw"]);
    assert!(e.contains("nothing to update"), "{e}");
    let e = fails(&h, &["secret", "update", "nosuch", "-l", "a=b"]);
    assert!(e.contains("not found"), "{e}");

    // a rollback goes back to the data before, which the managers kept
    h.ok(&["service", "rollback", "-d", "app"]);
    rolled_to(&h, 1, one);
}

/// The output of host `h`'s running container, once it says `done`.
fn task_output(h: &common::cluster::ClusterHost) -> Option<String> {
    json_lines(&h.ok(&["container", "ls", "--format", "json"]))
        .iter()
        .filter(|c| c["Status"].as_str().unwrap_or("").starts_with("Up"))
        .filter_map(|c| c["ID"].as_str().map(String::from))
        .find_map(|id| {
            let out = h.cli(&["container", "logs", &id]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("done").then_some(text)
        })
}

/// Two managers and two workers on namespace hosts: a global service on three of them
/// reads its secret and config with the owner and mode asked for, on a tmpfs; the
/// fourth host, with no task that uses them, never receives them; and no host, managers
/// included, has any form of the secret's bytes in its data root, its log or /run/shoal.
#[test]
fn on_three_hosts_only_the_nodes_that_need_a_secret_get_it_and_none_writes_it() {
    use common::cluster::Cluster;
    let mut c = Cluster::new(4);
    let m1 = c.h(1).addr.clone();
    c.h(1).ok(&["swarm", "init", "--advertise-addr", &m1]);
    let mtoken = c.h(1).ok(&["swarm", "join-token", "-q", "manager"]);
    let wtoken = c.h(1).ok(&["swarm", "join-token", "-q", "worker"]);
    c.h(2).ok(&["swarm", "join", "--token", mtoken.trim(), &m1]);
    for i in [3, 4] {
        c.h(i).ok(&["swarm", "join", "--token", wtoken.trim(), &m1]);
    }
    let marker = unique_marker(32);
    let mut cmd = c.h(1).host.cmd();
    let mut child = cmd
        .args(["secret", "create", "pw", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(marker.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(conf.path(), b"listen 80;\n").unwrap();
    c.h(1)
        .ok(&["config", "create", "site", conf.path().to_str().unwrap()]);

    let script = "stat -c '%n %u %g %a' /run/secrets/db_pw /etc/site.conf; \
                  sha256sum /run/secrets/db_pw; \
                  grep -E ' (/run/secrets/|/etc/site.conf)' /proc/mounts; \
                  echo done; sleep 1000";
    c.h(1).ok(&[
        "service",
        "create",
        "--name",
        "app",
        "--mode",
        "global",
        "--constraint",
        "node.hostname!=node4",
        "--stop-signal",
        "KILL",
        "--secret",
        "source=pw,target=db_pw,uid=1000,gid=1001,mode=0400",
        "--config",
        "source=site,target=/etc/site.conf",
        "shoal-test/busybox",
        "sh",
        "-c",
        script,
    ]);
    let digest = sha256(marker.as_bytes());
    for i in 1..=3 {
        let out = wait_for(&format!("node{i}'s task"), Duration::from_secs(60), || {
            task_output(c.h(i))
        });
        assert!(
            out.contains("/run/secrets/db_pw 1000 1001 400"),
            "node{i}: {out}"
        );
        assert!(out.contains("/etc/site.conf 0 0 444"), "node{i}: {out}");
        assert!(out.contains(&digest), "node{i}: {out}");
        for target in ["/run/secrets/db_pw", "/etc/site.conf"] {
            assert!(
                out.lines().any(|l| l.starts_with(&format!("tmpfs {target} tmpfs ro,nosuid,nodev,noexec"))),
                "node{i}: {target} is not a read-only nodev,nosuid,noexec tmpfs: {out}"
            );
        }
        assert_eq!(
            info_count(&c.h(i).host, "Secrets held:"),
            Some(1),
            "node{i}"
        );
    }
    // the worker with no task never received it
    let n4 = &c.h(4).host;
    assert_eq!(info_count(n4, "Secrets received:"), Some(0));
    assert_eq!(info_count(n4, "Configs held:"), Some(0));

    c.h(1).ok(&["service", "rm", "app"]);
    for i in 1..=3 {
        wait_for(
            &format!("node{i} to let the secret go"),
            Duration::from_secs(60),
            || (info_count(&c.h(i).host, "Secrets held:") == Some(0)).then_some(()),
        );
    }
    c.h(1).ok(&["secret", "rm", "pw"]);
    for i in 1..=4 {
        c.h_mut(i).kill_daemon();
    }
    let roots: Vec<&std::path::Path> = (1..=4).map(|i| c.h(i).host.data_root()).collect();
    assert_nowhere(&roots, &marker);
}

/// No file under `roots` (data roots, logs included) or /run/shoal holds any plain form
/// of `marker`.
fn assert_nowhere(roots: &[&std::path::Path], marker: &str) {
    for dir in roots
        .iter()
        .copied()
        .chain([std::path::Path::new("/run/shoal")])
    {
        let found = files_holding(dir, marker.as_bytes());
        assert!(
            found.is_empty(),
            "the secret's bytes are under {}: {found:?}",
            dir.display()
        );
    }
}
