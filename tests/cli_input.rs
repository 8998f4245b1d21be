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
