//! Secrets and configs through the CLI on a single-node swarm: configs made from a file
//! and from stdin, listed, inspected (with their data, as Docker shows it) and removed;
//! bad input refused with nothing made; secrets refused, and their bytes never written,
//! until the managers' store is sealed. As root; through scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

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

    // a service cannot use them until they reach the nodes: said, nothing made
    let svc = |extra: &[&str]| {
        let mut a = vec!["service", "create", "-d", "--name", "web"];
        a.extend_from_slice(extra);
        a.extend(["shoal-test/busybox", "true"]);
        fails(&h, &a)
    };
    let e = svc(&["--config", "source=site,target=/etc/site.conf"]);
    assert!(
        e.contains("--config") && e.contains("not supported yet"),
        "{e}"
    );
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

#[test]
fn a_secret_is_refused_and_none_of_its_bytes_is_written() {
    let (h, d) = swarm_host();
    let marker = format!(
        "shoal-secret-marker-{:016x}",
        std::process::id() as u64 * 7919
    );
    let out = with_stdin(&h, &["secret", "create", "pw", "-"], marker.as_bytes());
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("secrets are not supported yet"), "{e}");
    assert!(names(&h, "secret").is_empty());
    drop(d); // the daemon stops: what it would write is written
    let found = std::process::Command::new("grep")
        .args(["-rl", &marker])
        .arg(h.data_root())
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "the secret's bytes are on disk: {}",
        String::from_utf8_lossy(&found.stdout)
    );
}
