//! Offline images: `image import` of a `docker save` tarball or an OCI image layout
//! (directory or tar), and `image save`, which writes a tar that is both (an OCI layout
//! with Docker's `manifest.json` beside it), so either tool can read it back.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use super::reference::ImageRef;
use super::store::{
    io_at, now_secs, remove_path, ImageRecord, ImageStore, LayerRecord, StoreError,
};
use super::unpack::unpack_layer;
use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {why}")]
    Format { path: PathBuf, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn bad(path: &Path, why: impl Into<String>) -> ImportError {
    ImportError::Format {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// A manifest as far as we need it (OCI and Docker schema 2 share this shape).
#[derive(Deserialize)]
pub(crate) struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize, Clone)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
}

#[derive(Deserialize, Clone)]
pub(crate) struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Deserialize)]
pub(crate) struct Index {
    pub manifests: Vec<Descriptor>,
}

/// The image config's parts the store checks.
#[derive(Deserialize)]
pub(crate) struct ConfigRootfs {
    pub rootfs: RootFs,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Deserialize)]
pub(crate) struct RootFs {
    pub diff_ids: Vec<Digest>,
}

/// Picks linux/amd64 out of an index, the only platform shoal runs.
pub(crate) fn pick_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or_else(|| {
            if manifests.len() == 1 && manifests[0].platform.is_none() {
                manifests.first()
            } else {
                None
            }
        })
}

pub(crate) fn parse_config(what: &str, bytes: &[u8]) -> Result<ConfigRootfs, String> {
    let c: ConfigRootfs =
        serde_json::from_slice(bytes).map_err(|e| format!("{what} is not an image config: {e}"))?;
    if !c.os.is_empty() && c.os != "linux" {
        return Err(format!(
            "{what} is for {}/{}; shoal runs linux/amd64 images",
            c.os, c.architecture
        ));
    }
    if !c.architecture.is_empty() && c.architecture != "amd64" {
        return Err(format!(
            "{what} is for {}/{}; shoal runs linux/amd64 images",
            c.os, c.architecture
        ));
    }
    Ok(c)
}

impl ImageStore {
    /// Imports every image in a `docker save` tarball or an OCI layout (directory or tar).
    pub async fn import(&self, path: &Path) -> Result<Vec<ImageRecord>, ImportError> {
        let _g = self.gc_lock.read().await;
        let store = self.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || store.import_blocking(&path))
            .await
            .map_err(|e| ImportError::Format {
                path: PathBuf::new(),
                why: format!("import task failed: {e}"),
            })?
    }

    fn import_blocking(&self, path: &Path) -> Result<Vec<ImageRecord>, ImportError> {
        let meta = fs::metadata(path).map_err(|e| bad(path, format!("cannot read it: {e}")))?;
        if meta.is_dir() {
            return self.import_dir(path, path);
        }
        let tmp = self.temp_path("import");
        fs::create_dir(&tmp).map_err(io_at(&tmp))?;
        let res = (|| {
            let f = fs::File::open(path).map_err(|e| bad(path, format!("cannot open it: {e}")))?;
            unpack_layer(f, &tmp).map_err(|e| match e {
                // the tar reader's own words quote the bytes it choked on
                crate::image::unpack::UnpackError::Corrupt(_) => bad(
                    path,
                    "not an image archive: it is not a tar file (make one with `docker save` or as an OCI image layout)",
                ),
                e => bad(path, format!("not a readable image archive: {e}")),
            })?;
            self.import_dir(&tmp, path)
        })();
        let _ = remove_path(&tmp);
        res
    }

    fn import_dir(&self, dir: &Path, shown: &Path) -> Result<Vec<ImageRecord>, ImportError> {
        if dir.join("manifest.json").is_file() {
            self.import_docker(dir, shown)
        } else if dir.join("oci-layout").is_file() {
            self.import_oci(dir, shown)
        } else {
            Err(bad(shown, "neither a docker save archive (no manifest.json) nor an OCI image layout (no oci-layout)"))
        }
    }

    fn import_docker(&self, dir: &Path, shown: &Path) -> Result<Vec<ImageRecord>, ImportError> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Config")]
            config: String,
            #[serde(rename = "RepoTags", default)]
            repo_tags: Option<Vec<String>>,
            #[serde(rename = "Layers")]
            layers: Vec<String>,
        }
        let mpath = inside(dir, "manifest.json").ok_or_else(|| {
            bad(
                shown,
                "manifest.json is not a regular file inside the archive",
            )
        })?;
        let entries: Vec<Entry> = serde_json::from_slice(&fs::read(&mpath).map_err(io_at(&mpath))?)
            .map_err(|e| {
                bad(
                    shown,
                    format!("manifest.json is not a docker save manifest: {e}"),
                )
            })?;
        let mut out = Vec::new();
        for e in entries {
            let cpath = inside(dir, &e.config).ok_or_else(|| {
                bad(
                    shown,
                    format!("config path {:?} leaves the archive", e.config),
                )
            })?;
            let cbytes = fs::read(&cpath)
                .map_err(|err| bad(shown, format!("config {}: {err}", e.config)))?;
            let config = parse_config(&e.config, &cbytes).map_err(|w| bad(shown, w))?;
            if config.rootfs.diff_ids.len() != e.layers.len() {
                return Err(bad(
                    shown,
                    format!(
                        "{} lists {} layers but its config has {} diff IDs",
                        e.config,
                        e.layers.len(),
                        config.rootfs.diff_ids.len()
                    ),
                ));
            }
            let id = Digest::of(&cbytes);
            self.put_blob_bytes("config", &id, &cbytes)?;
            let mut layers = Vec::new();
            for (lp, diff_id) in e.layers.iter().zip(&config.rootfs.diff_ids) {
                let p = inside(dir, lp)
                    .ok_or_else(|| bad(shown, format!("layer path {lp:?} leaves the archive")))?;
                let (blob, size) =
                    hash_file(&p).map_err(|err| bad(shown, format!("layer {lp}: {err}")))?;
                let mut f = fs::File::open(&p).map_err(io_at(&p))?;
                self.put_blob_reader("layer", &blob, Some(size), &mut f)?;
                let media_type = if is_gzip(&p) {
                    OCI_LAYER_GZIP
                } else {
                    OCI_LAYER_TAR
                };
                let mut l = LayerRecord {
                    blob,
                    media_type: media_type.into(),
                    blob_size: size,
                    diff_id: diff_id.clone(),
                    size: 0,
                };
                l.size = self.unpack(&l)?;
                layers.push(l);
            }
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": id, "size": cbytes.len()},
                "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.blob, "size": l.blob_size})).collect::<Vec<_>>(),
            });
            let mbytes = serde_json::to_vec(&manifest).map_err(|e| bad(shown, e.to_string()))?;
            let mdigest = Digest::of(&mbytes);
            self.put_blob_bytes("manifest", &mdigest, &mbytes)?;
            let mut tags = Vec::new();
            for t in e.repo_tags.unwrap_or_default() {
                let r = ImageRef::parse(&t).map_err(|err| bad(shown, err.to_string()))?;
                tags.extend(r.tagged());
            }
            out.push(self.commit_image(ImageRecord {
                id,
                manifest: mdigest,
                manifest_media_type: OCI_MANIFEST.into(),
                config_media_type: OCI_CONFIG.into(),
                layers,
                repo_tags: tags,
                repo_digests: vec![],
                stored_at: now_secs(),
            })?);
        }
        Ok(out)
    }

    fn import_oci(&self, dir: &Path, shown: &Path) -> Result<Vec<ImageRecord>, ImportError> {
        let layout: Value =
            serde_json::from_slice(
                &fs::read(inside(dir, "oci-layout").ok_or_else(|| {
                    bad(shown, "oci-layout is not a regular file inside the layout")
                })?)
                .map_err(io_at(dir))?,
            )
            .map_err(|e| bad(shown, format!("oci-layout is not JSON: {e}")))?;
        if layout
            .get("imageLayoutVersion")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(bad(shown, "oci-layout has no imageLayoutVersion"));
        }
        let ipath = inside(dir, "index.json").ok_or_else(|| {
            bad(
                shown,
                "index.json is missing, or not a regular file inside the layout",
            )
        })?;
        let index: Index = serde_json::from_slice(
            &fs::read(&ipath).map_err(|e| bad(shown, format!("index.json: {e}")))?,
        )
        .map_err(|e| bad(shown, format!("index.json is not an OCI index: {e}")))?;
        let mut out = Vec::new();
        for desc in &index.manifests {
            let name = desc
                .annotations
                .get("io.containerd.image.name")
                .or_else(|| {
                    desc.annotations
                        .get("org.opencontainers.image.ref.name")
                        .filter(|n| n.contains('/') || n.contains(':'))
                })
                .and_then(|n| ImageRef::parse(n).ok())
                .and_then(|r| r.tagged());
            let mut desc = desc.clone();
            let mut mbytes = self.read_layout_blob(dir, shown, &desc)?;
            if desc.media_type == OCI_INDEX || desc.media_type == DOCKER_LIST {
                let inner: Index = serde_json::from_slice(&mbytes)
                    .map_err(|e| bad(shown, format!("index {}: {e}", desc.digest)))?;
                desc = pick_platform(&inner.manifests).cloned().ok_or_else(|| {
                    bad(
                        shown,
                        format!("index {} has no linux/amd64 image", desc.digest),
                    )
                })?;
                mbytes = self.read_layout_blob(dir, shown, &desc)?;
            }
            let m: Manifest = serde_json::from_slice(&mbytes)
                .map_err(|e| bad(shown, format!("manifest {}: {e}", desc.digest)))?;
            let cbytes = self.read_layout_blob(dir, shown, &m.config)?;
            let config = parse_config(&format!("config {}", m.config.digest), &cbytes)
                .map_err(|w| bad(shown, w))?;
            if config.rootfs.diff_ids.len() != m.layers.len() {
                return Err(bad(
                    shown,
                    format!(
                        "manifest {} has {} layers but its config has {} diff IDs",
                        desc.digest,
                        m.layers.len(),
                        config.rootfs.diff_ids.len()
                    ),
                ));
            }
            self.put_blob_bytes("config", &m.config.digest, &cbytes)?;
            let mut layers = Vec::new();
            for (ld, diff_id) in m.layers.iter().zip(&config.rootfs.diff_ids) {
                let p = dir.join("blobs/sha256").join(ld.digest.hex());
                let mut f = fs::File::open(&p)
                    .map_err(|e| bad(shown, format!("layer blob {}: {e}", ld.digest)))?;
                self.put_blob_reader("layer", &ld.digest, Some(ld.size), &mut f)?;
                let mut l = LayerRecord {
                    blob: ld.digest.clone(),
                    media_type: ld.media_type.clone(),
                    blob_size: ld.size,
                    diff_id: diff_id.clone(),
                    size: 0,
                };
                l.size = self.unpack(&l)?;
                layers.push(l);
            }
            self.put_blob_bytes("manifest", &desc.digest, &mbytes)?;
            out.push(self.commit_image(ImageRecord {
                id: m.config.digest.clone(),
                manifest: desc.digest.clone(),
                manifest_media_type: m.media_type.unwrap_or_else(|| desc.media_type.clone()),
                config_media_type: m.config.media_type.clone(),
                layers,
                repo_tags: name.into_iter().collect(),
                repo_digests: vec![],
                stored_at: now_secs(),
            })?);
        }
        if out.is_empty() {
            return Err(bad(shown, "the OCI layout's index.json lists no images"));
        }
        Ok(out)
    }

    /// Reads a blob of an OCI layout, checking it against its descriptor.
    fn read_layout_blob(
        &self,
        dir: &Path,
        shown: &Path,
        d: &Descriptor,
    ) -> Result<Vec<u8>, ImportError> {
        let p = layout_blob(dir, shown, &d.digest)?;
        let bytes = fs::read(&p).map_err(|e| bad(shown, format!("blob {}: {e}", d.digest)))?;
        super::store::check_blob(
            "blob",
            &d.digest,
            Some(d.size),
            &Digest::of(&bytes),
            bytes.len() as u64,
        )?;
        Ok(bytes)
    }

    /// Writes the images named by `refs` to `out` as a tar: an OCI layout plus Docker's
    /// `manifest.json`, readable by `image import` here and by `docker load`.
    pub fn save(&self, refs: &[String], out: &Path) -> Result<(), ImportError> {
        let mut recs = Vec::new();
        for r in refs {
            recs.push(self.resolve(r)?);
        }
        let f = fs::File::create(out).map_err(|e| bad(out, format!("cannot create it: {e}")))?;
        let res = (|| -> Result<(), ImportError> {
            let mut tar = tar::Builder::new(io::BufWriter::new(f));
            let mut index = Vec::new();
            let mut docker = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for rec in &recs {
                let mut blobs = vec![rec.manifest.clone(), rec.id.clone()];
                blobs.extend(rec.layers.iter().map(|l| l.blob.clone()));
                for b in blobs {
                    if seen.insert(b.clone()) {
                        let p = self.blob_path(&b);
                        tar.append_path_with_name(&p, format!("blobs/sha256/{}", b.hex()))
                            .map_err(|e| bad(out, e.to_string()))?;
                    }
                }
                let msize = fs::metadata(self.blob_path(&rec.manifest))
                    .map_err(io_at(out))?
                    .len();
                let names: Vec<String> = if rec.repo_tags.is_empty() {
                    vec![String::new()]
                } else {
                    rec.repo_tags.clone()
                };
                for n in &names {
                    let mut ann = serde_json::Map::new();
                    if !n.is_empty() {
                        ann.insert("io.containerd.image.name".into(), json!(n));
                        ann.insert(
                            "org.opencontainers.image.ref.name".into(),
                            json!(n.rsplit_once(':').map(|x| x.1).unwrap_or("latest")),
                        );
                    }
                    index.push(json!({"mediaType": rec.manifest_media_type, "digest": rec.manifest, "size": msize, "annotations": ann}));
                }
                docker.push(json!({
                    "Config": format!("blobs/sha256/{}", rec.id.hex()),
                    "RepoTags": rec.repo_tags.iter().map(|t| super::store::display_tag(t)).collect::<Vec<_>>(),
                    "Layers": rec.layers.iter().map(|l| format!("blobs/sha256/{}", l.blob.hex())).collect::<Vec<_>>(),
                }));
            }
            let files = [
                ("oci-layout", json!({"imageLayoutVersion": "1.0.0"})),
                (
                    "index.json",
                    json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}),
                ),
                ("manifest.json", json!(docker)),
            ];
            for (name, v) in files {
                let bytes = serde_json::to_vec(&v).map_err(|e| bad(out, e.to_string()))?;
                let mut h = tar::Header::new_gnu();
                h.set_size(bytes.len() as u64);
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(now_secs());
                h.set_cksum();
                tar.append_data(&mut h, name, bytes.as_slice())
                    .map_err(|e| bad(out, e.to_string()))?;
            }
            tar.into_inner()
                .map_err(|e| bad(out, e.to_string()))?
                .into_inner()
                .map_err(|e| bad(out, e.to_string()))?;
            Ok(())
        })();
        if res.is_err() {
            let _ = fs::remove_file(out);
        }
        res
    }
}

/// `dir/rel`, only if it is a regular file that really lies inside `dir` (no `..`, no
/// symlink leading out, no device or FIFO that would hang a read).
fn inside(dir: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return None;
    }
    let base = fs::canonicalize(dir).ok()?;
    let real = fs::canonicalize(dir.join(p)).ok()?;
    (real.starts_with(&base) && fs::metadata(&real).ok()?.is_file()).then_some(real)
}

/// A blob of an OCI layout, checked as [`inside`] does.
fn layout_blob(dir: &Path, shown: &Path, d: &Digest) -> Result<PathBuf, ImportError> {
    inside(dir, &format!("blobs/sha256/{}", d.hex())).ok_or_else(|| {
        bad(
            shown,
            format!(
                "blob {} is missing, or not a regular file inside the layout",
                d
            ),
        )
    })
}

fn hash_file(p: &Path) -> io::Result<(Digest, u64)> {
    crate::digest::HashingReader::new(fs::File::open(p)?).finish()
}

fn is_gzip(p: &Path) -> bool {
    let mut m = [0u8; 2];
    fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok()
        && m == [0x1f, 0x8b]
}
