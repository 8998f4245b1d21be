#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Image store against real registries (Debian's docker-registry on loopback) and the
//! fixture archives built by scripts/fixtures.sh.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use shoal_runtime::image::pull::PullError;
use shoal_runtime::image::{Credentials, ImageStore, PullOptions, RegistryAuth, StoreError};

use common::*;

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = ImageStore::open(dir.path()).unwrap();
    (dir, s)
}

fn tmp_is_empty(s: &ImageStore) -> bool {
    fs::read_dir(s.root().join("tmp")).unwrap().count() == 0
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_tag_unpacks_layers_with_whiteouts() {
    let (_d, s) = store();
    let e = image_env();
    let p = s
        .pull(
            &format!("{}/test/busybox", registry()),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(p.image.id.as_str(), e["CONFIG"]);
    assert_eq!(p.image.manifest.as_str(), e["DOCKER_MANIFEST"]);
    assert_eq!(
        p.image.repo_tags,
        vec![format!("{}/test/busybox:latest", registry())]
    );
    assert_eq!(p.fetched_blobs, 3, "config and two layers");
    assert_eq!(
        p.image
            .layers
            .iter()
            .map(|l| l.diff_id.to_string())
            .collect::<Vec<_>>(),
        vec![e["DIFF1"].clone(), e["DIFF2"].clone()]
    );
    let l1 = s.layer_path(&p.image.layers[0].diff_id);
    let l2 = s.layer_path(&p.image.layers[1].diff_id);
    assert!(fs::metadata(l1.join("bin/busybox")).unwrap().mode() & 0o111 != 0);
    assert_eq!(
        fs::read_link(l1.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    let wh = fs::symlink_metadata(l2.join("etc/removed-by-layer2")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout became an overlay whiteout"
    );
    assert_eq!(
        fs::read_to_string(l2.join("etc/shoal-release")).unwrap(),
        "shoal-test 1\n"
    );
    // a second pull fetches nothing
    let again = s
        .pull(
            &format!("{}/test/busybox:latest", registry()),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!((again.fetched_blobs, again.image.id), (0, p.image.id));
    assert!(tmp_is_empty(&s));
    // the store survives a reopen
    let s2 = ImageStore::open(s.root().parent().unwrap()).unwrap();
    assert_eq!(
        s2.resolve(&format!("{}/test/busybox", registry()))
            .unwrap()
            .id
            .as_str(),
        e["CONFIG"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_digest_and_manifest_list() {
    let (_d, s) = store();
    let e = image_env();
    let by_digest = s
        .pull(
            &format!("{}/test/busybox@{}", registry(), e["OCI_MANIFEST"]),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(by_digest.image.manifest.as_str(), e["OCI_MANIFEST"]);
    assert!(
        by_digest.image.repo_tags.is_empty(),
        "a digest pull adds no tag"
    );
    assert_eq!(
        by_digest.image.repo_digests,
        vec![format!("{}/test/busybox@{}", registry(), e["OCI_MANIFEST"])]
    );

    let (_d2, s2) = store();
    let multi = s2
        .pull(
            &format!("{}/test/busybox:multi", registry()),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        multi.image.manifest.as_str(),
        e["DOCKER_MANIFEST"],
        "linux/amd64 chosen from the list"
    );
    assert_eq!(multi.image.id.as_str(), e["CONFIG"]);
    assert_eq!(
        multi.image.repo_digests,
        vec![format!(
            "{}/test/busybox@{}",
            registry(),
            e["MANIFEST_LIST"]
        )]
    );
    let missing = s2
        .pull(
            &format!("{}/test/busybox:nope", registry()),
            &PullOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(missing, PullError::NotFound { .. }), "{missing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_is_required_and_used() {
    let (d, s) = store();
    let image = format!("{}/private/busybox", auth_registry());
    let err = s
        .pull(&image, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pull access denied")
            && err.contains(&format!("shoal login {}", auth_registry())),
        "{err}"
    );
    let wrong = PullOptions {
        auth: Some(RegistryAuth::Basic {
            username: "shoal".into(),
            password: "wrong".into(),
        }),
        ..Default::default()
    };
    assert!(s
        .pull(&image, &wrong)
        .await
        .unwrap_err()
        .to_string()
        .contains("pull access denied"));
    assert!(s.list().is_empty() && tmp_is_empty(&s));
    // credentials stored root-only, as `shoal login` does, then used
    let creds = d.path().join("registry-auth.json");
    Credentials::store(&creds, &auth_registry(), "shoal", "s3cret").unwrap();
    assert_eq!(fs::metadata(&creds).unwrap().mode() & 0o777, 0o600);
    let opts = PullOptions {
        credentials_file: Some(creds),
        ..Default::default()
    };
    let p = s.pull(&image, &opts).await.unwrap();
    assert_eq!(p.image.id.as_str(), image_env()["CONFIG"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_fetch_once() {
    let (_d, s) = store();
    let image = format!("{}/test/busybox:latest", registry());
    let o = PullOptions::default();
    let (a, b, c) = tokio::join!(s.pull(&image, &o), s.pull(&image, &o), s.pull(&image, &o));
    let fetched = a.unwrap().fetched_blobs + b.unwrap().fetched_blobs + c.unwrap().fetched_blobs;
    assert_eq!(
        fetched, 3,
        "each of the three blobs fetched by one pull only"
    );
    assert_eq!(s.list().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn lying_manifest_is_refused_and_leaves_nothing() {
    let (_d, s) = store();
    let err = s
        .pull(
            &format!("{}/test/busybox:liar", registry()),
            &PullOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::Store(StoreError::SizeMismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("its descriptor says 193"), "{err}");
    assert!(s.list().is_empty() && tmp_is_empty(&s));
}

#[tokio::test(flavor = "multi_thread")]
async fn import_docker_save_and_oci_layout() {
    let e = image_env();
    for (file, tag) in [
        ("busybox-docker.tar", "docker.io/shoal-test/busybox:saved"),
        ("busybox-oci", "docker.io/shoal-test/busybox:latest"),
        ("busybox-oci.tar", "docker.io/shoal-test/busybox:latest"),
    ] {
        let (_d, s) = store();
        let imgs = s.import(&fixtures().join(file)).await.unwrap();
        assert_eq!(imgs.len(), 1, "{file}");
        assert_eq!(imgs[0].id.as_str(), e["CONFIG"], "{file}");
        assert_eq!(imgs[0].repo_tags, vec![tag.to_string()], "{file}");
        assert_eq!(imgs[0].layers[1].diff_id.as_str(), e["DIFF2"], "{file}");
        assert!(
            s.layer_path(&imgs[0].layers[0].diff_id)
                .join("bin/busybox")
                .is_file(),
            "{file}"
        );
        assert!(tmp_is_empty(&s), "{file}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_imports_are_refused_and_leave_nothing() {
    let e = image_env();
    // a layout whose layer blob was tampered with
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    copy_dir(&fixtures().join("busybox-oci"), &layout);
    let blob = layout
        .join("blobs/sha256")
        .join(e["LAYER2"].trim_start_matches("sha256:"));
    let mut bytes = fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let (_d, s) = store();
    let err = s.import(&layout).await.unwrap_err().to_string();
    assert!(err.contains("does not match its content"), "{err}");
    assert!(s.list().is_empty() && tmp_is_empty(&s));
    // a truncated archive
    let full = fs::read(fixtures().join("busybox-docker.tar")).unwrap();
    let cut = work.path().join("cut.tar");
    fs::write(&cut, &full[..full.len() / 3]).unwrap();
    let err = s.import(&cut).await.unwrap_err().to_string();
    assert!(!err.is_empty());
    assert!(s.list().is_empty() && tmp_is_empty(&s), "{err}");
    // not an image at all
    let junk = work.path().join("junk");
    fs::write(&junk, b"hello").unwrap();
    assert!(s.import(&junk).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn save_import_round_trip_rm_and_gc() {
    let (_d, s) = store();
    let pulled = s
        .pull(
            &format!("{}/test/busybox", registry()),
            &PullOptions::default(),
        )
        .await
        .unwrap()
        .image;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("saved.tar");
    s.save(&[format!("{}/test/busybox", registry())], &out)
        .unwrap();
    let (_d2, s2) = store();
    let back = s2.import(&out).await.unwrap();
    assert_eq!(back[0].id, pulled.id);
    assert_eq!(back[0].repo_tags, pulled.repo_tags);

    // rm refused while in use, then allowed; gc drops the layers and blobs
    let busy = s
        .remove(pulled.id.as_str(), &|_| Some("c1".into()))
        .unwrap_err()
        .to_string();
    assert!(busy.contains("in use by container c1"), "{busy}");
    let msgs = s
        .remove(&format!("{}/test/busybox", registry()), &|_| None)
        .unwrap();
    assert!(
        msgs.iter().any(|m| m.starts_with("Deleted: sha256:")),
        "{msgs:?}"
    );
    assert!(s.list().is_empty());
    let removed = s.gc().await.unwrap();
    assert_eq!(removed, 2 + 4, "two layer dirs, four blobs");
    assert_eq!(fs::read_dir(s.root().join("layers")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(),
        0
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            fs::copy(e.path(), dst).unwrap();
        }
    }
}
