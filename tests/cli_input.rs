//! Bad input on the command line gets a message naming what is wrong, and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn fails_with(host: &Host, args: &[&str], needle: &str) {
    let out = host.shoal(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in: {err}"
    );
}

#[test]
fn refusals_name_the_flag_and_why() {
    let host = Host::new();
    let fx = fixtures().join("busybox-oci");
    assert!(host
        .shoal(&["image", "import", fx.to_str().unwrap()])
        .status
        .success());
    let img = "shoal-test/busybox";
    // swarm flags are checked before the daemon is asked anything
    fails_with(
        &host,
        &[
            "swarm",
            "init",
            "--ca-cert",
            "/nonexistent.pem",
            "--ca-key",
            "/k.pem",
        ],
        "--ca-cert /nonexistent.pem: No such file",
    );
    fails_with(
        &host,
        &["swarm", "join", "--token", "SWMTKN-1-x-y", "10.0.0.1"],
        "invalid join token",
    );
    fails_with(
        &host,
        &["swarm", "join-token", "admin"],
        "\"admin\" is not a role",
    );
    fails_with(
        &host,
        &["container", "run", "--memory", "lots", img, "true"],
        "--memory: \"lots\" is not a size",
    );
    fails_with(
        &host,
        &["container", "run", "--memory", "1k", img, "true"],
        "below the minimum of 6MiB",
    );
    fails_with(
        &host,
        &["container", "run", "--health-interval", "5", img, "true"],
        "has no unit",
    );
    fails_with(
        &host,
        &[
            "container",
            "run",
            "--mount",
            "type=nfs,target=/x",
            img,
            "true",
        ],
        "type \"nfs\" is not supported",
    );
    fails_with(
        &host,
        &["container", "run", "--cap-add", "FLY", img, "true"],
        "unknown capability \"FLY\"",
    );
    fails_with(
        &host,
        &["container", "run", "--stop-signal", "SIGNOPE", img, "true"],
        "\"SIGNOPE\" is not a signal name",
    );
    fails_with(
        &host,
        &["container", "run", "-e", "NOEQUALS", img, "true"],
        "\"NOEQUALS\" is not KEY=VALUE",
    );
    fails_with(
        &host,
        &["container", "run", "--name", "../x", img, "true"],
        "invalid container name",
    );
    fails_with(
        &host,
        &["image", "ls", "--format", "xml"],
        "--format \"xml\" is not supported",
    );
    fails_with(
        &host,
        &["image", "pull", "Not A Ref"],
        "invalid image reference",
    );
    fails_with(
        &host,
        &["image", "import", "/no/such/file"],
        "/no/such/file",
    );
    // a garbage archive: said so in words, none of its bytes, and no cause twice
    let garbage = host.data_root().join("garbage.tar");
    let noise: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&garbage, noise).unwrap();
    let out = host.shoal(&["image", "import", garbage.to_str().unwrap()]);
    let err = String::from_utf8(out.stderr).expect("the message is text");
    assert!(!out.status.success());
    assert!(
        err.contains("not an image archive: it is not a tar file"),
        "{err}"
    );
    assert!(
        err.chars().all(|c| c == '\n' || (' '..='~').contains(&c)),
        "only printable text: {err:?}"
    );
    let missing = host.shoal(&["image", "import", "/no/such/dir/x.tar"]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "each cause once: {err}"
    );
    fails_with(
        &host,
        &["image", "rm", "nothing:here"],
        "no such image: nothing:here",
    );
    fails_with(
        &host,
        &["container", "logs", "ghost"],
        "no such container: ghost",
    );
    // nothing was created by any of it
    let ls = host.shoal(&["container", "ls", "--format", "json"]);
    assert!(
        ls.status.success() && ls.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ls.stdout)
    );
    assert!(host.cgroup_dirs().is_empty() && host.mounts().is_empty());
    // image rm is refused while a container uses the image
    let out = host.shoal(&["container", "create", "--name", "user", img, "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fails_with(&host, &["image", "rm", img], "in use by container user");
    let ls = String::from_utf8_lossy(&host.shoal(&["image", "ls", "--format", "json"]).stdout)
        .into_owned();
    let v: serde_json::Value = serde_json::from_str(ls.lines().next().unwrap()).unwrap();
    assert_eq!(
        (v["Repository"].as_str(), v["Tag"].as_str()),
        (Some(img), Some("latest"))
    );
    assert!(v["ID"].as_str().unwrap().len() == 12 && v["Size"].as_str().unwrap().ends_with("MB"));
}

#[test]
fn login_is_checked_with_the_registry_and_then_used() {
    let host = Host::new();
    let reg = env("SHOAL_TEST_AUTH_REGISTRY");
    let image = format!("{reg}/private/busybox");
    fails_with(
        &host,
        &["image", "pull", &image],
        &format!("run `shoal login {reg}`"),
    );
    let login = |pw: &str| {
        std::process::Command::new(shoal_bin())
            .args(["login", &reg, "-u", "shoal", "--password-stdin"])
            .env("SHOAL_DATA_ROOT", host.data_root())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{pw}\n").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap()
    };
    let bad = login("wrong");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("incorrect username or password"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(
        !host.data_root().join("registry-auth.json").exists(),
        "refused credentials are not stored"
    );
    let good = login("s3cret");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&good.stdout).trim(),
        "Login Succeeded"
    );
    let out = host.shoal(&["image", "pull", &image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An import killed half-way leaves its partial files in the image store's tmp/; the
/// next shoal command (or daemon start) that opens the store removes them, and keeps
/// those of an import still running.
#[test]
fn a_killed_import_leaves_nothing_behind() {
    let host = Host::new();
    // the archive is a FIFO: the import waits, half-read, for as long as the test wants
    let fifo = host.data_root().join("slow.tar");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let tmp = host.data_root().join("images/tmp");
    let entries = || dir_names(&tmp);
    let import = host.spawn_cli(&["image", "import", fifo.to_str().unwrap()]);
    let tar = std::fs::read(fixtures().join("busybox-oci.tar")).unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    std::io::Write::write_all(&mut w, &tar[..tar.len() / 2]).unwrap();
    let partial = wait_for(
        "the import's partial files",
        std::time::Duration::from_secs(30),
        || {
            let e = entries();
            (!e.is_empty()).then_some(e)
        },
    );
    // another command while it runs: the running import's files stay
    let ls = host.shoal(&["image", "ls"]);
    assert!(ls.status.success());
    assert_eq!(entries(), partial, "a running import's files are kept");
    drop(import); // kill -9
    drop(w);
    let ls = host.shoal(&["image", "ls"]);
    assert!(ls.status.success());
    assert!(entries().is_empty(), "left behind: {:?}", entries());
}

/// The scale benchmark's command (scripts/bench/scale.sh) ends with its figures and exit
/// 0: it serves gRPC between its leader and its simulated nodes, so it ignores SIGPIPE as
/// the daemon does (it died of it, exit 141, when the nodes' process went first).
#[test]
fn the_scale_benchmark_ends_with_its_figures() {
    // three times: the nodes' process does not always go first (it did 4 times in 5)
    for _ in 0..3 {
        let out = std::process::Command::new(shoal_bin())
            .args([
                "bench-scale",
                "--nodes",
                "200",
                "--services",
                "2",
                "--replicas",
                "5",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{:?}: {err}", out.status);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (v["nodes"].as_u64(), v["tasks"].as_u64()),
            (Some(200), Some(10)),
            "{v}"
        );
    }
}
