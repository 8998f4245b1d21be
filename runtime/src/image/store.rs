//! The content-addressed image store under `<data-root>/images`:
//!
//! ```text
//! blobs/sha256/<hex>     manifests, configs and layer blobs exactly as fetched or imported
//! layers/<diff-id hex>/  each layer unpacked once (overlayfs lower directory)
//! images/<id hex>.json   one record per image (id = config digest): layers, tags
//! tmp/                   work in progress; emptied at start-up
//! ```
//!
//! Everything lands in `tmp/` first and is renamed into place only once verified, and an
//! image record is written last, so a failed pull or import leaves nothing half-written:
//! at worst complete, verified blobs or layers that `gc` removes.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::reference::{familiar, ImageRef};
use super::unpack::{unpack_layer, UnpackError};
use crate::digest::{Digest, HashingWriter};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("image {reference} is in use by container {container}; remove the container first")]
    InUse {
        reference: String,
        container: String,
    },
    #[error("{what} {expected} does not match its content: got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} {digest} is {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch {
        what: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("layer {digest}: {source}")]
    Layer { digest: Digest, source: UnpackError },
    #[error("image store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("image record {path} is corrupt: {source}")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("image {reference} is ambiguous: it matches {count} images")]
    Ambiguous { reference: String, count: usize },
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One layer of an image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed or not), as the manifest names it.
    pub blob: Digest,
    pub media_type: String,
    /// Size of the blob.
    pub blob_size: u64,
    /// Digest of the uncompressed tar: names the unpacked directory.
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub size: u64,
}

/// What the store knows about one image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config blob's digest, as Docker's image ID.
    pub id: Digest,
    /// The manifest blob (for the platform we run), kept so `image save` can write it.
    pub manifest: Digest,
    pub manifest_media_type: String,
    pub config_media_type: String,
    /// Bottom layer first.
    pub layers: Vec<LayerRecord>,
    /// Fully qualified `registry/repo:tag`.
    pub repo_tags: Vec<String>,
    /// Fully qualified `registry/repo@sha256:…` of the manifest as the registry served it.
    pub repo_digests: Vec<String>,
    /// When this image was stored, in seconds since the epoch.
    pub stored_at: u64,
}

impl ImageRecord {
    /// Uncompressed size of all layers, as `image ls` shows it.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// The store. Cheap to clone; all clones share one in-memory index.
#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
    records: Arc<Mutex<HashMap<Digest, ImageRecord>>>,
    /// Serializes work on one key (a blob or layer digest, or a reference being pulled)
    /// so that concurrent pulls of one image fetch and unpack it once.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Held shared by pulls and imports, exclusively by garbage collection.
    pub(crate) gc_lock: Arc<tokio::sync::RwLock<()>>,
}

impl ImageStore {
    /// Opens (creating if needed) the store under `data_root/images`, dropping leftovers
    /// of interrupted work.
    pub fn open(data_root: &Path) -> Result<ImageStore, StoreError> {
        crate::files::private_dir(data_root).map_err(io_at(data_root))?;
        // mounts and removals compare paths: use the one the kernel reports
        let data_root = fs::canonicalize(data_root).map_err(io_at(data_root))?;
        let root = data_root.join("images");
        for d in ["blobs/sha256", "layers", "images", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        // root's alone, also in a store made before shoal said so: layers keep their
        // files' modes (setuid bits, devices' owners), so no other user may enter here
        crate::files::private_dir(&root).map_err(io_at(&root))?;
        crate::files::private_dir(&root.join("layers")).map_err(io_at(&root))?;
        for d in ["blobs", "images", "tmp"] {
            let p = root.join(d);
            crate::files::secure_tree(&p).map_err(io_at(&p))?;
        }
        let tmp = root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_at(&tmp))?.flatten() {
            // only what a dead process left: another may be pulling right now
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            if owner.is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                remove_path(&e.path())?;
            }
        }
        let records = load_records(&root)?;
        Ok(ImageStore {
            root,
            records: Arc::new(Mutex::new(records)),
            locks: Arc::default(),
            gc_lock: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, ImageRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key.to_string()).or_default().clone()
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// A fresh path under `tmp/` for work in progress.
    pub(crate) fn temp_path(&self, what: &str) -> PathBuf {
        let n = TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Stores `bytes` as the blob `expected`, refusing them if they do not match.
    pub fn put_blob_bytes(
        &self,
        what: &str,
        expected: &Digest,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let actual = Digest::of(bytes);
        if &actual != expected {
            return Err(StoreError::DigestMismatch {
                what: what.into(),
                expected: expected.clone(),
                actual,
            });
        }
        if self.has_blob(expected) {
            return Ok(());
        }
        let tmp = self.temp_path("blob");
        write_synced(&tmp, bytes)?;
        self.commit_blob(&tmp, expected)
    }

    /// Copies a blob from `src` into the store, verifying digest and (if known) size
    /// while it streams. More bytes than `size` are refused as soon as they arrive.
    pub fn put_blob_reader(
        &self,
        what: &str,
        expected: &Digest,
        size: Option<u64>,
        src: &mut dyn io::Read,
    ) -> Result<(), StoreError> {
        let tmp = self.temp_path("blob");
        let res = (|| {
            let f = fs::File::create(&tmp).map_err(io_at(&tmp))?;
            let mut w = HashingWriter::new(io::BufWriter::new(f));
            let limit = size.map(|s| s + 1).unwrap_or(u64::MAX);
            io::copy(&mut io::Read::take(src, limit), &mut w).map_err(io_at(&tmp))?;
            let (actual, n, inner) = w.finish();
            let f = inner.into_inner().map_err(|e| StoreError::Io {
                path: tmp.clone(),
                source: e.into_error(),
            })?;
            f.sync_all().map_err(io_at(&tmp))?;
            check_blob(what, expected, size, &actual, n)?;
            self.commit_blob(&tmp, expected)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Moves a verified file from `tmp/` to its blob path.
    pub(crate) fn commit_blob(&self, tmp: &Path, d: &Digest) -> Result<(), StoreError> {
        let dst = self.blob_path(d);
        fs::rename(tmp, &dst).map_err(io_at(&dst))
    }

    /// Unpacks the stored blob of `layer` into its layer directory unless it is there
    /// already; checks the diff ID against the one the image config declares.
    pub fn unpack(&self, layer: &LayerRecord) -> Result<u64, StoreError> {
        let dst = self.layer_path(&layer.diff_id);
        if dst.is_dir() {
            return Ok(self.known_layer_size(&layer.diff_id).unwrap_or(layer.size));
        }
        let src = self.blob_path(&layer.blob);
        let f = fs::File::open(&src).map_err(io_at(&src))?;
        let tmp = self.temp_path("layer");
        // a layer's root is the root of a container's lowest layer: 0755, as in Docker
        crate::files::container_dir(&tmp).map_err(io_at(&tmp))?;
        let res = unpack_layer(f, &tmp)
            .map_err(|source| StoreError::Layer {
                digest: layer.blob.clone(),
                source,
            })
            .and_then(|u| {
                if u.diff_id != layer.diff_id {
                    return Err(StoreError::DigestMismatch {
                        what: format!("uncompressed layer {}", layer.blob),
                        expected: layer.diff_id.clone(),
                        actual: u.diff_id,
                    });
                }
                // the unpacked files reach the disk before the layer is trusted
                if let Ok(d) = fs::File::open(&tmp) {
                    let _ = nix::unistd::syncfs(&d);
                }
                match fs::rename(&tmp, &dst) {
                    Ok(()) => Ok(u.size),
                    // someone unpacked the same layer meanwhile: theirs is as good
                    Err(_) if dst.is_dir() => {
                        let _ = remove_path(&tmp);
                        Ok(u.size)
                    }
                    Err(e) => Err(StoreError::Io {
                        path: dst.clone(),
                        source: e,
                    }),
                }
            });
        if res.is_err() {
            let _ = remove_path(&tmp);
        }
        res
    }

    /// The uncompressed size of an unpacked layer, as some image recorded it.
    fn known_layer_size(&self, diff_id: &Digest) -> Option<u64> {
        self.index()
            .values()
            .flat_map(|r| r.layers.iter())
            .find(|l| &l.diff_id == diff_id && l.size > 0)
            .map(|l| l.size)
    }

    /// Records an image, moving its tags away from any image that had them before.
    pub fn commit_image(&self, mut rec: ImageRecord) -> Result<ImageRecord, StoreError> {
        let mut idx = self.index();
        if let Some(old) = idx.get(&rec.id) {
            for t in &old.repo_tags {
                if !rec.repo_tags.contains(t) {
                    rec.repo_tags.push(t.clone());
                }
            }
            for d in &old.repo_digests {
                if !rec.repo_digests.contains(d) {
                    rec.repo_digests.push(d.clone());
                }
            }
            rec.stored_at = old.stored_at;
        }
        let others: Vec<Digest> = idx.keys().filter(|k| **k != rec.id).cloned().collect();
        for k in others {
            let Some(other) = idx.get(&k) else { continue };
            if other.repo_tags.iter().any(|t| rec.repo_tags.contains(t)) {
                let mut o = other.clone();
                o.repo_tags.retain(|t| !rec.repo_tags.contains(t));
                self.write_record(&o)?;
                idx.insert(k, o);
            }
        }
        self.write_record(&rec)?;
        idx.insert(rec.id.clone(), rec.clone());
        Ok(rec)
    }

    fn write_record(&self, rec: &ImageRecord) -> Result<(), StoreError> {
        let path = self.record_path(&rec.id);
        let tmp = self.temp_path("record");
        let bytes = serde_json::to_vec_pretty(rec).map_err(|source| StoreError::Record {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, bytes).map_err(io_at(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_at(&path))
    }

    /// All images, newest first.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.refresh();
        let mut v: Vec<_> = self.index().values().cloned().collect();
        v.sort_by(|a, b| b.stored_at.cmp(&a.stored_at).then(a.id.cmp(&b.id)));
        v
    }

    /// Finds an image by reference (`busybox`, `host/repo:tag`, `repo@sha256:…`), by ID,
    /// or by a unique ID prefix of at least 4 hex characters, as Docker does.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord, StoreError> {
        match self.resolve_cached(reference) {
            // another process (`shoal image rm` beside a daemon) may have removed it, or
            // (`shoal image import`) added it: the records on disk say
            Ok(rec) if self.record_path(&rec.id).is_file() => Ok(rec),
            _ => {
                self.refresh();
                self.resolve_cached(reference)
            }
        }
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", id.hex()))
    }

    /// Re-reads the records on disk into the index.
    fn refresh(&self) {
        if let Ok(recs) = load_records(&self.root) {
            *self.index() = recs;
        }
    }

    fn resolve_cached(&self, reference: &str) -> Result<ImageRecord, StoreError> {
        let idx = self.index();
        let id_like = reference.strip_prefix("sha256:").unwrap_or(reference);
        if id_like.len() >= 4 && id_like.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<_> = idx
                .values()
                .filter(|r| r.id.hex().starts_with(id_like))
                .collect();
            match hits.len() {
                1 => return Ok(hits[0].clone()),
                0 => {}
                count => {
                    return Err(StoreError::Ambiguous {
                        reference: reference.into(),
                        count,
                    })
                }
            }
        }
        if let Ok(r) = ImageRef::parse(reference) {
            if let Some(d) = r.digest() {
                let want = format!("{}@{}", r.name(), d);
                if let Some(rec) = idx
                    .values()
                    .find(|x| x.repo_digests.contains(&want) || x.id == d)
                {
                    return Ok(rec.clone());
                }
            } else if let Some(t) = r.tagged() {
                if let Some(rec) = idx.values().find(|x| x.repo_tags.contains(&t)) {
                    return Ok(rec.clone());
                }
            }
        }
        Err(StoreError::NotFound(reference.to_string()))
    }

    /// Removes a tag, or the whole image when given by ID or when its last tag goes.
    /// `user` says which container, if any, uses an image; such images are refused.
    pub fn remove(
        &self,
        reference: &str,
        user: &dyn Fn(&Digest) -> Option<String>,
    ) -> Result<Vec<String>, StoreError> {
        let rec = self.resolve(reference)?;
        let by_tag = ImageRef::parse(reference)
            .ok()
            .and_then(|r| r.tagged().filter(|_| r.digest().is_none()))
            .filter(|t| rec.repo_tags.contains(t));
        let mut out = Vec::new();
        let mut idx = self.index();
        if let Some(t) = &by_tag {
            if rec.repo_tags.len() > 1 {
                let mut r = rec.clone();
                r.repo_tags.retain(|x| x != t);
                self.write_record(&r)?;
                idx.insert(r.id.clone(), r);
                return Ok(vec![format!("Untagged: {}", display_tag(t))]);
            }
        }
        if let Some(c) = user(&rec.id) {
            return Err(StoreError::InUse {
                reference: reference.into(),
                container: c,
            });
        }
        for t in &rec.repo_tags {
            out.push(format!("Untagged: {}", display_tag(t)));
        }
        let path = self
            .root
            .join("images")
            .join(format!("{}.json", rec.id.hex()));
        fs::remove_file(&path).map_err(io_at(&path))?;
        idx.remove(&rec.id);
        out.push(format!("Deleted: {}", rec.id));
        Ok(out)
    }

    /// Removes blobs and unpacked layers that no image references. Returns how many
    /// entries went. Waits for pulls and imports in flight to finish first.
    pub async fn gc(&self) -> Result<usize, StoreError> {
        let _g = self.gc_lock.write().await;
        let (mut blobs, mut layers) = (BTreeSet::new(), BTreeSet::new());
        for r in self.index().values() {
            blobs.insert(r.manifest.hex().to_string());
            blobs.insert(r.id.hex().to_string());
            for l in &r.layers {
                blobs.insert(l.blob.hex().to_string());
                layers.insert(l.diff_id.hex().to_string());
            }
        }
        let mut removed = 0;
        for (dir, keep) in [("blobs/sha256", &blobs), ("layers", &layers)] {
            let d = self.root.join(dir);
            for e in fs::read_dir(&d).map_err(io_at(&d))?.flatten() {
                if !keep.contains(e.file_name().to_string_lossy().as_ref()) {
                    remove_path(&e.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Reads every image record under `root/images`; a corrupt one is set aside.
fn load_records(root: &Path) -> Result<HashMap<Digest, ImageRecord>, StoreError> {
    let mut records = HashMap::new();
    let dir = root.join("images");
    for e in fs::read_dir(&dir).map_err(io_at(&dir))?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let bytes = fs::read(&p).map_err(io_at(&p))?;
            match serde_json::from_slice::<ImageRecord>(&bytes) {
                Ok(r) => {
                    records.insert(r.id.clone(), r);
                }
                Err(e) => {
                    // one bad record must not take every image down: set it aside
                    tracing::warn!(path = %p.display(), error = %e, "image record is corrupt; moved aside");
                    let _ = fs::rename(&p, p.with_extension("corrupt"));
                }
            }
        }
    }
    Ok(records)
}

static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes a file and flushes it to disk, so a rename of it is never of an empty file.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = fs::File::create(path).map_err(io_at(path))?;
    f.write_all(bytes).map_err(io_at(path))?;
    f.sync_all().map_err(io_at(path))
}

pub(crate) fn check_blob(
    what: &str,
    expected: &Digest,
    size: Option<u64>,
    actual: &Digest,
    n: u64,
) -> Result<(), StoreError> {
    if let Some(s) = size {
        if s != n {
            return Err(StoreError::SizeMismatch {
                what: what.into(),
                digest: expected.clone(),
                expected: s,
                actual: n,
            });
        }
    }
    if actual != expected {
        return Err(StoreError::DigestMismatch {
            what: what.into(),
            expected: expected.clone(),
            actual: actual.clone(),
        });
    }
    Ok(())
}

/// `docker.io/library/busybox:latest` → `busybox:latest`.
pub fn display_tag(t: &str) -> String {
    match t.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
        Some((name, tag)) => format!("{}:{}", familiar(name), tag),
        None => familiar(t),
    }
}

pub(crate) fn remove_path(p: &Path) -> Result<(), StoreError> {
    let res = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    res.map_err(io_at(p))
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
