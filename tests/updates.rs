//! Rolling updates and rollbacks on a single-node swarm, through the CLI, with real
//! containers: a failing update paused or rolled back (and the CLI's exit status saying
//! so), a health check that fails, the refusals, the revision history, and an update
//! that goes on with its counts after the daemon is killed. As root; through
//! scripts/test.sh. (Pacing across nodes and start-first under load are in cluster.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

fn inspect(h: &Host, name: &str) -> serde_json::Value {
    let s = h.ok(&["service", "inspect", name]);
    serde_json::from_str::<serde_json::Value>(&s).unwrap()[0].clone()
}

fn replicas(h: &Host, name: &str) -> String {
    json_lines(&h.ok(&["service", "ls", "--format", "json"]))
        .into_iter()
        .find(|v| v["Name"] == name)
        .map(|v| v["Replicas"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// What `service ls` says of an update under way ("updating", "update paused", …).
fn update_shown(h: &Host, name: &str) -> String {
    json_lines(&h.ok(&["service", "ls", "--format", "json"]))
        .into_iter()
        .find(|v| v["Name"] == name)
        .map(|v| v["Update"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn converged(h: &Host, name: &str, want: &str) {
    wait_for(
        &format!("{name} at {want}"),
        Duration::from_secs(30),
        || (replicas(h, name) == want).then_some(()),
    );
}

/// Runs the CLI, which must fail: its stdout and stderr.
fn fails(h: &Host, args: &[&str]) -> (String, String) {
    let out = h.cli(args);
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!out.status.success(), "{args:?} should fail: {o}{e}");
    (o, e)
}

fn args_of(s: &serde_json::Value) -> serde_json::Value {
    s["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"].clone()
}

/// A sleeper of `n` replicas, stopped by SIGKILL, restarted after 100 ms.
fn sleeper(h: &Host, name: &str, n: &str, extra: &[&str]) {
    let mut args = vec![
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--replicas",
        n,
        "--stop-signal",
        "KILL",
        "--restart-delay",
        "100ms",
    ];
    args.extend_from_slice(extra);
    args.extend(["shoal-test/busybox", "sleep", "3600"]);
    h.ok(&args);
}

#[test]
fn a_failing_update_pauses_or_rolls_back_and_the_cli_exits_non_zero() {
    let (h, _d) = swarm_host();
    sleeper(&h, "app", "3", &["--update-monitor", "3s"]);
    converged(&h, "app", "3/3");
    let e = fails(&h, &["service", "rollback", "app"]).1;
    assert!(e.contains("no previous spec to roll back to"), "{e}");

    // pause (the default): after the first failure, with Swarm's message
    let (_, e) = fails(&h, &["service", "update", "--args", "false", "app"]);
    assert!(
        e.contains(
            "service update paused: update paused due to failure or early termination of task"
        ),
        "{e}"
    );
    assert!(
        e.contains("non-zero exit"),
        "the task's error is named: {e}"
    );
    let s = inspect(&h, "app");
    assert_eq!(s["UpdateStatus"]["State"], "paused");
    assert_eq!(
        s["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Args"],
        serde_json::json!(["sleep", "3600"])
    );
    assert_eq!(update_shown(&h, "app"), "update paused");
    assert!(
        h.ok(&["service", "ls"]).contains(" (update paused)"),
        "the table says it beside the counts"
    );
    let still_old = json_lines(&h.ok(&[
        "service",
        "ps",
        "app",
        "--format",
        "json",
        "--filter",
        "desired-state=running",
    ]))
    .iter()
    .filter(|t| t["CurrentState"].as_str().unwrap().starts_with("Running"))
    .count();
    assert!(still_old >= 1, "paused: not every slot was replaced");

    // a rollback asked for: back to the sleeper, exit 0
    let out = h.ok(&["service", "rollback", "app"]);
    assert!(
        out.contains("rollback: manually requested rollback"),
        "{out}"
    );
    let s = inspect(&h, "app");
    assert_eq!(s["UpdateStatus"]["State"], "rollback_completed");
    assert_eq!(args_of(&s), serde_json::json!(["sleep", "3600"]));
    converged(&h, "app", "3/3");

    // rollback on failure: every task back, and the CLI exits non-zero naming the task
    let (o, e) = fails(
        &h,
        &[
            "service",
            "update",
            "--update-failure-action",
            "rollback",
            "--args",
            "false",
            "app",
        ],
    );
    // (the rollback may have nothing to replace, and end before the CLI looks again:
    // its reason is kept in the revision it made)
    assert!(o.contains("rolling back update"), "{o}");
    assert!(
        e.contains("service app: update rolled back due to failure or early termination of task"),
        "{e}"
    );
    assert!(e.contains("non-zero exit"), "{e}");
    let s = inspect(&h, "app");
    assert_eq!(s["UpdateStatus"]["State"], "rollback_completed");
    assert_eq!(args_of(&s), serde_json::json!(["sleep", "3600"]));
    converged(&h, "app", "3/3");

    // a failing health check rolls back too (moby#35498)
    let (_, e) = fails(
        &h,
        &[
            "service",
            "update",
            // (the rollback restored the spec before it, with its update settings)
            "--update-failure-action",
            "rollback",
            "--health-cmd",
            "false",
            "--health-interval",
            "100ms",
            "--health-retries",
            "1",
            "app",
        ],
    );
    assert!(e.contains("update rolled back due to failure"), "{e}");
    assert!(e.contains("unhealthy"), "{e}");
    let s = inspect(&h, "app");
    assert!(s["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"].is_null());
    converged(&h, "app", "3/3");
}

#[test]
fn bad_update_settings_are_refused_and_change_nothing() {
    let (h, _d) = swarm_host();
    sleeper(&h, "app", "1", &[]);
    converged(&h, "app", "1/1");
    let version = || inspect(&h, "app")["Version"]["Index"].clone();
    let before = version();
    for (args, says) in [
        (vec!["--update-delay=-1s"], "--update-delay"),
        (
            vec!["--update-max-failure-ratio", "1.5"],
            "--update-max-failure-ratio",
        ),
        (vec!["--update-order", "sideways"], "--update-order"),
        (
            vec!["--update-failure-action", "explode"],
            "--update-failure-action",
        ),
        (
            vec!["--rollback-failure-action", "rollback"],
            "never rolled back",
        ),
        (
            vec!["--rollback", "--image", "busybox:2"],
            "cannot be combined",
        ),
        (
            vec![
                "--update-order",
                "start-first",
                "--publish-add",
                "published=8081,target=80,mode=host",
            ],
            "start-first cannot replace a task that publishes port 8081 in host mode",
        ),
    ] {
        let mut all = vec!["service", "update"];
        all.extend(args.iter().copied());
        all.push("app");
        let e = fails(&h, &all).1;
        assert!(e.contains(says), "{args:?}: {e}");
    }
    assert_eq!(version(), before, "nothing was changed");
    // what is right is shown with Docker's names
    h.ok(&[
        "service",
        "update",
        "-d",
        "--update-parallelism",
        "2",
        "--update-delay",
        "1s",
        "--update-order",
        "start-first",
        "--rollback-monitor",
        "2s",
        "app",
    ]);
    let s = inspect(&h, "app");
    let u = &s["Spec"]["UpdateConfig"];
    assert_eq!(
        (
            u["Parallelism"].clone(),
            u["Delay"].clone(),
            u["Order"].clone()
        ),
        (2.into(), 1_000_000_000i64.into(), "start-first".into())
    );
    assert_eq!(u["Monitor"], 5_000_000_000i64, "Swarm's default");
    assert_eq!(s["Spec"]["RollbackConfig"]["Monitor"], 2_000_000_000i64);
    assert_eq!(s["Spec"]["RollbackConfig"]["FailureAction"], "pause");
}

fn env_of(s: &serde_json::Value) -> serde_json::Value {
    s["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"].clone()
}

#[test]
fn history_lists_revisions_and_rollback_goes_back_without_flipping() {
    let (h, _d) = swarm_host();
    sleeper(&h, "web", "1", &[]);
    converged(&h, "web", "1/1");
    for v in ["V=2", "V=3"] {
        h.ok(&["service", "update", "--env-add", v, "web"]);
    }
    let hist = json_lines(&h.ok(&["service", "history", "web", "--format", "json"]));
    let revs: Vec<i64> = hist
        .iter()
        .map(|r| r["Revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revs, [1, 2, 3]);
    assert_eq!(hist[2]["Current"], "*");
    assert_eq!(hist[2]["Changes"], "--env");
    // back to 2, then to 1: never forth to 3
    h.ok(&["service", "rollback", "web"]);
    assert_eq!(env_of(&inspect(&h, "web")), serde_json::json!(["V=2"]));
    h.ok(&["service", "rollback", "web"]);
    assert!(env_of(&inspect(&h, "web"))
        .as_array()
        .is_none_or(|a| a.is_empty()));
    let e = fails(&h, &["service", "rollback", "web"]).1;
    assert!(e.contains("no previous spec"), "{e}");
    let hist = json_lines(&h.ok(&["service", "history", "web", "--format", "json"]));
    assert_eq!(hist[3]["Rollback"], "rollback to 2");
    assert_eq!(hist[4]["Rollback"], "rollback to 1");
    // to any revision kept
    h.ok(&["service", "rollback", "--to-revision", "3", "web"]);
    assert_eq!(env_of(&inspect(&h, "web")), serde_json::json!(["V=3"]));
    let e = fails(&h, &["service", "rollback", "--to-revision", "42", "web"]).1;
    assert!(e.contains("no revision 42"), "{e}");
    converged(&h, "web", "1/1");
    // the limit
    h.ok(&["swarm", "update", "--service-history-limit", "2"]);
    h.ok(&["service", "update", "--env-add", "V=4", "web"]);
    let hist = json_lines(&h.ok(&["service", "history", "web", "--format", "json"]));
    assert_eq!(hist.len(), 2);
    let e = fails(&h, &["swarm", "update", "--service-history-limit", "500"]).1;
    assert!(e.contains("--service-history-limit"), "{e}");
}

/// The update's counts are in the store: the daemon killed in the middle of an update
/// (a new leader, for a single node) goes on with them, and a paused update stays
/// paused.
#[test]
fn an_update_goes_on_with_its_counts_after_the_daemon_is_killed() {
    let (h, d) = swarm_host();
    // the restart supervisor's replacements of the tasks killed here (which the update
    // did not make, and which do not count) wait 20 s before they run
    h.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "app",
        "--replicas",
        "4",
        "--stop-signal",
        "KILL",
        "--restart-delay",
        "20s",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    converged(&h, "app", "4/4");
    // one failure in four is tolerated (0.25), a second is not
    h.ok(&[
        "service",
        "update",
        "-d",
        "--update-max-failure-ratio",
        "0.25",
        "--update-delay",
        "2s",
        "--update-monitor",
        "30s",
        "--env-add",
        "V=2",
        "app",
    ]);
    let kill_new_task = |h: &Host, seen: &mut Vec<String>| {
        let (id, pid) = wait_for("a new task running", Duration::from_secs(30), || {
            running_container_with(h, seen, "V=2")
        });
        seen.push(id);
        kill9(pid as i32);
    };
    let mut seen = Vec::new();
    kill_new_task(&h, &mut seen);
    // the failure is counted (before the daemon goes)
    wait_for("the failure counted", Duration::from_secs(20), || {
        let ps = h.ok(&["service", "ps", "app", "--format", "json"]);
        json_lines(&ps)
            .iter()
            .any(|t| t["CurrentState"].as_str().unwrap().starts_with("Failed"))
            .then_some(())
    });
    let mut d = d;
    d.kill();
    drop(d);
    let _d = h.start_daemon();
    assert_eq!(inspect(&h, "app")["UpdateStatus"]["State"], "updating");
    kill_new_task(&h, &mut seen);
    let st = wait_for("the update paused", Duration::from_secs(30), || {
        let s = inspect(&h, "app");
        let st = s["UpdateStatus"]["State"].as_str().unwrap().to_string();
        (st != "updating").then_some(st)
    });
    assert_eq!(st, "paused", "two failures of four: the first was kept");
    // a paused update stays paused across a restart: once the new leader has replaced
    // the killed task, it has still not gone on
    let old = |h: &Host| {
        json_lines(&h.ok(&["container", "ls", "--format", "json"]))
            .into_iter()
            .filter_map(|c| c["ID"].as_str().map(String::from))
            .filter(|id| !h.ok(&["container", "inspect", id]).contains("V=2"))
            .count()
    };
    let before = old(&h);
    drop(_d);
    let _d = h.start_daemon();
    wait_for("the killed tasks replaced", Duration::from_secs(90), || {
        (replicas(&h, "app") == "4/4" && update_shown(&h, "app") == "update paused").then_some(())
    });
    assert_eq!(inspect(&h, "app")["UpdateStatus"]["State"], "paused");
    assert_eq!(old(&h), before, "no more tasks replaced");
}

/// The image's own HEALTHCHECK gates a task as a service's does (RUNNING once healthy;
/// this image's never is), unless the service says `--no-healthcheck`.
#[test]
fn the_images_health_check_is_used_unless_no_healthcheck() {
    let (h, _d) = swarm_host();
    h.ok(&[
        "image",
        "import",
        fixtures().join("unhealthy-oci").to_str().unwrap(),
    ]);
    let e = fails(
        &h,
        &[
            "service",
            "create",
            "--name",
            "sick",
            "shoal-test/unhealthy",
            "sleep",
            "3600",
        ],
    )
    .1;
    assert!(e.contains("unhealthy"), "{e}");
    h.ok(&["service", "rm", "sick"]);
    h.ok(&[
        "service",
        "create",
        "--name",
        "fine",
        "--no-healthcheck",
        "shoal-test/unhealthy",
        "sleep",
        "3600",
    ]);
    converged(&h, "fine", "1/1");
    let e = fails(
        &h,
        &[
            "service",
            "update",
            "--no-healthcheck",
            "--health-cmd",
            "true",
            "fine",
        ],
    )
    .1;
    assert!(
        e.contains("--no-healthcheck conflicts with --health-cmd"),
        "{e}"
    );
    let e = fails(
        &h,
        &[
            "service",
            "update",
            "--health-cmd",
            "true",
            "--health-start-interval",
            "1ms",
            "fine",
        ],
    )
    .1;
    assert!(e.contains("--health-start-interval"), "{e}");
}

/// Puts the manifest that `repo:from` has (asked for as `media_type`) under `repo:to`
/// on the loopback registry, as a push to that tag would: returns its digest.
fn retag(reg: &str, repo: &str, from: &str, to: &str, media_type: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifest");
    let file_s = file.to_str().unwrap();
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sSf", "--max-time", "20"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let accept = format!("Accept: {media_type}");
    let content = format!("Content-Type: {media_type}");
    curl(&[
        "-H",
        &accept,
        "-o",
        file_s,
        &format!("http://{reg}/v2/{repo}/manifests/{from}"),
    ]);
    curl(&[
        "-X",
        "PUT",
        "-H",
        &content,
        "--data-binary",
        &format!("@{file_s}"),
        &format!("http://{reg}/v2/{repo}/manifests/{to}"),
    ]);
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(std::fs::read(&file).unwrap()))
    )
}

fn image_of(s: &serde_json::Value) -> String {
    s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The digest the node's image store last pulled `repo` by (`image ls`'s Digest).
fn local_digest(h: &Host, repo: &str) -> Option<String> {
    json_lines(&h.ok(&["image", "ls", "--format", "json"]))
        .into_iter()
        .find(|v| v["Repository"] == repo)
        .and_then(|v| v["Digest"].as_str().map(String::from))
}

#[test]
fn a_services_image_is_pinned_to_a_digest_and_force_follows_a_push() {
    let (h, _d) = swarm_host();
    let reg = env("SHOAL_TEST_REGISTRY");
    let tag = format!("moving-{}", std::process::id());
    let repo = format!("{reg}/test/busybox");
    let image = format!("{repo}:{tag}");
    let docker_v2 = "application/vnd.docker.distribution.manifest.v2+json";
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let first = retag(&reg, "test/busybox", "latest", &tag, docker_v2);

    h.ok(&[
        "service", "create", "--name", "pin", &image, "sleep", "3600",
    ]);
    assert_eq!(image_of(&inspect(&h, "pin")), format!("{image}@{first}"));
    let ls = json_lines(&h.ok(&["service", "ls", "--format", "json"]));
    assert_eq!(ls[0]["Image"], image.as_str(), "lists show the tag alone");
    assert_eq!(local_digest(&h, &repo).as_deref(), Some(first.as_str()));

    // another change keeps the pin; the tag moves (a push) and nothing follows it
    let second = retag(&reg, "test/busybox", "oci", &tag, oci);
    assert_ne!(first, second);
    h.ok(&["service", "update", "--env-add", "X=1", "pin"]);
    assert_eq!(image_of(&inspect(&h, "pin")), format!("{image}@{first}"));
    // --force looks the tag up again, and the node pulls what it now names
    h.ok(&["service", "update", "--force", "pin"]);
    assert_eq!(image_of(&inspect(&h, "pin")), format!("{image}@{second}"));
    converged(&h, "pin", "1/1");
    assert_eq!(local_digest(&h, &repo).as_deref(), Some(second.as_str()));
    // a rollback restores the image it pinned before
    h.ok(&["service", "rollback", "pin"]);
    assert_eq!(image_of(&inspect(&h, "pin")), format!("{image}@{first}"));

    // --no-resolve-image keeps the reference as given
    h.ok(&[
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        "raw",
        &image,
        "sleep",
        "3600",
    ]);
    assert_eq!(image_of(&inspect(&h, "raw")), image);
    // a registry that cannot be asked: a warning, and the service is made unpinned
    let out = h.cli(&[
        "service",
        "create",
        "-d",
        "--name",
        "far",
        "127.0.0.1:1/none:1",
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("unable to pin image 127.0.0.1:1/none:1 to digest"),
        "{err}"
    );
    assert_eq!(image_of(&inspect(&h, "far")), "127.0.0.1:1/none:1");
}

/// Logs this host's daemon in to `reg` (where `shoal login` keeps credentials).
fn login(h: &Host, reg: &str) {
    let mut c = h
        .cmd()
        .args(["login", reg, "-u", "shoal", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn with_registry_auth_the_service_pulls_with_the_clients_credentials() {
    let (h, d) = swarm_host();
    let reg = env("SHOAL_TEST_AUTH_REGISTRY");
    let image = format!("{reg}/private/busybox");
    let creds = h.data_root().join("registry-auth.json");
    let e = fails(
        &h,
        &[
            "service",
            "create",
            "--with-registry-auth",
            "--name",
            "p",
            &image,
            "true",
        ],
    )
    .1;
    assert!(e.contains(&format!("run `shoal login {reg}` first")), "{e}");
    login(&h, &reg);
    h.ok(&[
        "service",
        "create",
        "--with-registry-auth",
        "--name",
        "p",
        &image,
        "sleep",
        "3600",
    ]);
    assert!(
        image_of(&inspect(&h, "p")).contains("@sha256:"),
        "pinned with the client's credentials"
    );
    // the node's own credentials go: the service's are what it pulls with now
    std::fs::remove_file(&creds).unwrap();
    h.ok(&["service", "scale", "p=0"]);
    // by ID: the whole image goes (its layers are the test image's, under other names)
    let id = json_lines(&h.ok(&["image", "ls", "--format", "json"]))
        .into_iter()
        .find(|v| v["Repository"] == image.as_str())
        .map(|v| v["ID"].as_str().unwrap().to_string())
        .unwrap();
    wait_for("the image unused", Duration::from_secs(30), || {
        h.cli(&["image", "rm", &id]).status.success().then_some(())
    });
    assert_eq!(local_digest(&h, &image), None);
    h.ok(&["service", "scale", "p=1"]);
    converged(&h, "p", "1/1");
    // a service without them cannot pull
    let out = h.cli(&[
        "service",
        "create",
        "-d",
        "--name",
        "q",
        &format!("{image}:other"),
        "true",
    ]);
    assert!(out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("unable to pin image") && e.contains("pull access denied"),
        "{e}"
    );
    wait_for("q's task refused", Duration::from_secs(30), || {
        json_lines(&h.ok(&["service", "ps", "q", "--format", "json"]))
            .iter()
            .any(|t| {
                t["Error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("pull access denied")
            })
            .then_some(())
    });
    // the credentials never come back, nor are they written by the node or logged
    let shown = h.ok(&["service", "inspect", "p"]);
    assert!(!shown.contains("s3cret"), "{shown}");
    let kept = std::fs::read(h.data_root().join("swarm/assignments.pb")).unwrap();
    assert!(!String::from_utf8_lossy(&kept).contains("s3cret"));
    assert!(!h.daemon_log().contains("s3cret"));
    drop(d);
}
