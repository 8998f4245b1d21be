//! Pulling images from an OCI / Docker registry v2 with oci-client.
//!
//! Manifest lists and OCI indexes resolve to linux/amd64. Every blob streams through a
//! hash into `tmp/` and is refused unless both its digest and its size match the
//! descriptor (a registry that sends more bytes than declared is cut off as soon as it
//! does). Blobs and layers are locked by digest while they are fetched, so concurrent
//! pulls of one image fetch each blob once. Plain http is used only for loopback
//! registries and those listed as insecure.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::import::{
    parse_config, pick_platform, Index, Manifest, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX,
    OCI_MANIFEST,
};
use super::reference::{ImageRef, ReferenceError};
use super::store::{check_blob, io_at, now_secs, ImageRecord, ImageStore, LayerRecord, StoreError};
use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("pull access denied for {image}: {registry} requires authentication or refused the credentials (run `shoal login {registry}`)")]
    Unauthorized { image: String, registry: String },
    #[error("{image}: manifest not found: {detail}")]
    NotFound { image: String, detail: String },
    #[error("{image}: {why}")]
    Invalid { image: String, why: String },
    #[error("{image}: registry {registry}: {source}")]
    Registry {
        image: String,
        registry: String,
        source: OciDistributionError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("login to {registry} refused: unauthorized: incorrect username or password")]
    LoginRefused { registry: String },
    #[error("registry credentials {path}: {why}")]
    Credentials { path: PathBuf, why: String },
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    Anonymous,
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username}, ****)"),
            RegistryAuth::Bearer(_) => f.write_str("Bearer(****)"),
        }
    }
}

impl From<&RegistryAuth> for oci_client::secrets::RegistryAuth {
    fn from(a: &RegistryAuth) -> Self {
        match a {
            RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryAuth::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
            RegistryAuth::Bearer(t) => oci_client::secrets::RegistryAuth::Bearer(t.clone()),
        }
    }
}

/// Registry credentials kept in a root-only file in Docker's `config.json` shape
/// (`{"auths": {"host:port": {"auth": base64("user:pass")}}}`), so an existing Docker
/// config can be pointed at as it is.
#[derive(Default, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, CredentialEntry>,
}

#[derive(Default, Serialize, Deserialize, Clone)]
struct CredentialEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identitytoken: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registrytoken: Option<String>,
}

impl Credentials {
    /// Loads credentials; a missing file means none.
    pub fn load(path: &Path) -> Result<Credentials, PullError> {
        let bad = |why: String| PullError::Credentials {
            path: path.to_path_buf(),
            why,
        };
        match fs::read(path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| bad(format!("not a credentials file: {e}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::default()),
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// Saves basic credentials for `registry`, readable by root only.
    pub fn store(
        path: &Path,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), PullError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut c = Credentials::load(path)?;
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        c.auths.insert(
            registry.to_string(),
            CredentialEntry {
                auth: Some(auth),
                ..Default::default()
            },
        );
        let bad = |why: String| PullError::Credentials {
            path: path.to_path_buf(),
            why,
        };
        let bytes = serde_json::to_vec_pretty(&c).map_err(|e| bad(e.to_string()))?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| bad(e.to_string()))?;
        f.write_all(&bytes).map_err(|e| bad(e.to_string()))?;
        fs::rename(&tmp, path).map_err(|e| bad(e.to_string()))
    }

    /// The credentials for `registry` (`docker.io` also matches Docker's index URL).
    pub fn get(&self, registry: &str) -> RegistryAuth {
        let keys: Vec<&str> = if registry == "docker.io" {
            vec![
                "docker.io",
                "index.docker.io",
                "https://index.docker.io/v1/",
                "registry-1.docker.io",
            ]
        } else {
            vec![registry]
        };
        let entry = keys.iter().find_map(|k| {
            self.auths
                .get(*k)
                .or_else(|| self.auths.get(&format!("https://{k}")))
        });
        let Some(e) = entry else {
            return RegistryAuth::Anonymous;
        };
        if let Some(t) = e.registrytoken.as_ref().or(e.identitytoken.as_ref()) {
            return RegistryAuth::Bearer(t.clone());
        }
        let decoded = e
            .auth
            .as_ref()
            .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok());
        match decoded
            .as_deref()
            .map(String::from_utf8_lossy)
            .as_deref()
            .and_then(|s| s.split_once(':'))
        {
            Some((u, p)) => RegistryAuth::Basic {
                username: u.into(),
                password: p.into(),
            },
            None => RegistryAuth::Anonymous,
        }
    }
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Credentials to use; `None` looks them up in `credentials_file`.
    pub auth: Option<RegistryAuth>,
    /// Where `shoal login` stored credentials.
    pub credentials_file: Option<PathBuf>,
    /// Registries (`host:port`) that may be reached over plain http. Loopback always may.
    pub insecure_registries: Vec<String>,
}

/// The result of a pull: the image, and how many blobs had to be fetched for it.
#[derive(Debug)]
pub struct Pulled {
    pub image: ImageRecord,
    pub fetched_blobs: usize,
}

const MANIFEST_TYPES: [&str; 4] = [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX];

fn install_crypto() {
    // oci-client's reqwest is built without a default provider; ring is ours. An error
    // means one is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A registry client for `r`'s registry: plain http only for loopback and registries
/// listed as insecure.
fn client_for(
    r: &ImageRef,
    insecure: &[String],
) -> Result<oci_client::Client, OciDistributionError> {
    install_crypto();
    let resolved = r.oci().resolve_registry().to_string();
    let protocol =
        if r.is_loopback() || insecure.iter().any(|i| i == r.registry() || *i == resolved) {
            ClientProtocol::HttpsExcept(vec![resolved])
        } else {
            ClientProtocol::Https
        };
    oci_client::Client::try_from(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    })
}

/// Checks credentials with the registry, as `docker login` does: a token service must
/// issue a token for them, or the registry must accept them on a request.
pub async fn verify_login(
    registry: &str,
    auth: &RegistryAuth,
    insecure: &[String],
) -> Result<(), PullError> {
    let probe = ImageRef::parse(&format!("{registry}/shoal-login-probe/none:latest"))?;
    let refused = || PullError::LoginRefused {
        registry: registry.to_string(),
    };
    let other = |source| PullError::Registry {
        image: registry.to_string(),
        registry: registry.to_string(),
        source,
    };
    let client = client_for(&probe, insecure).map_err(other)?;
    let oauth: oci_client::secrets::RegistryAuth = auth.into();
    match client
        .auth(probe.oci(), &oauth, oci_client::RegistryOperation::Pull)
        .await
    {
        Err(OciDistributionError::AuthenticationFailure(_)) => return Err(refused()),
        Err(e) => return Err(other(e)),
        Ok(_) => {}
    }
    client
        .store_auth_if_needed(probe.oci().resolve_registry(), &oauth)
        .await;
    match client.fetch_manifest_digest(probe.oci(), &oauth).await {
        Err(OciDistributionError::UnauthorizedError { .. }) => Err(refused()),
        Err(OciDistributionError::RegistryError { envelope, .. })
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, oci_client::errors::OciErrorCode::Unauthorized)) =>
        {
            Err(refused())
        }
        Err(OciDistributionError::RequestError(e)) => {
            Err(other(OciDistributionError::RequestError(e)))
        }
        // the probe image does not exist; what matters is that we were let in
        _ => Ok(()),
    }
}

/// The credentials to reach `r`'s registry with.
fn auth_for(r: &ImageRef, opts: &PullOptions) -> Result<RegistryAuth, PullError> {
    Ok(match &opts.auth {
        Some(a) => a.clone(),
        None => match &opts.credentials_file {
            Some(p) => Credentials::load(p)?.get(r.registry()),
            None => RegistryAuth::Anonymous,
        },
    })
}

/// What a registry's refusal means for a pull of `r`: unauthorized, not found, or else.
fn registry_error(r: &ImageRef) -> impl Fn(OciDistributionError) -> PullError {
    let image = r.to_string();
    let registry = r.registry().to_string();
    move |source: OciDistributionError| {
        let codes = |want: &[oci_client::errors::OciErrorCode]| match &source {
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|e| want.contains(&e.code))
            }
            _ => false,
        };
        use oci_client::errors::OciErrorCode as C;
        if matches!(
            source,
            OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::AuthenticationFailure(_)
        ) || codes(&[C::Unauthorized, C::Denied])
        {
            return PullError::Unauthorized {
                image: image.clone(),
                registry: registry.clone(),
            };
        }
        if codes(&[C::ManifestUnknown, C::NameUnknown, C::NotFound]) {
            let detail = match &source {
                OciDistributionError::RegistryError { envelope, .. } => envelope
                    .errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
                _ => String::new(),
            };
            return PullError::NotFound {
                image: image.clone(),
                detail,
            };
        }
        PullError::Registry {
            image: image.clone(),
            registry: registry.clone(),
            source,
        }
    }
}

/// The digest the registry has for `reference` now (of its manifest list, for a
/// multi-platform image), as `docker service create` pins a tag: every node then pulls
/// that same image, whatever the tag points to later.
pub async fn resolve_digest(reference: &str, opts: &PullOptions) -> Result<Digest, PullError> {
    let r = ImageRef::parse(reference)?;
    let reg_err = registry_error(&r);
    let auth = auth_for(&r, opts)?;
    let client = client_for(&r, &opts.insecure_registries).map_err(&reg_err)?;
    let oauth: oci_client::secrets::RegistryAuth = (&auth).into();
    client
        .store_auth_if_needed(r.oci().resolve_registry(), &oauth)
        .await;
    // the manifest itself, with the Accept types of a pull: the digest is then the one a
    // pull gets (a HEAD with other types may name a converted manifest)
    let (bytes, digest) = client
        .pull_manifest_raw(r.oci(), &oauth, &MANIFEST_TYPES)
        .await
        .map_err(&reg_err)?;
    let digest: Digest =
        digest
            .parse()
            .map_err(|e: crate::digest::DigestError| PullError::Invalid {
                image: r.to_string(),
                why: e.to_string(),
            })?;
    check_blob(
        "manifest",
        &digest,
        None,
        &Digest::of(&bytes),
        bytes.len() as u64,
    )?;
    Ok(digest)
}

impl ImageStore {
    /// Pulls `reference` into the store (or finds every blob already there).
    pub async fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Pulled, PullError> {
        let r = ImageRef::parse(reference)?;
        let image = r.to_string();
        let auth = auth_for(&r, opts)?;
        let oci_ref = r.oci().clone();
        let resolved = oci_ref.resolve_registry().to_string();
        let reg_err = registry_error(&r);
        let client = client_for(&r, &opts.insecure_registries).map_err(&reg_err)?;
        let oauth: oci_client::secrets::RegistryAuth = (&auth).into();
        client.store_auth_if_needed(&resolved, &oauth).await;

        let _g = self.gc_lock.read().await;
        let (top_bytes, top_digest) = client
            .pull_manifest_raw(&oci_ref, &oauth, &MANIFEST_TYPES)
            .await
            .map_err(&reg_err)?;
        let top_digest: Digest = top_digest
            .parse()
            .map_err(|e: crate::digest::DigestError| PullError::Invalid {
                image: image.clone(),
                why: e.to_string(),
            })?;
        let invalid = |why: String| PullError::Invalid {
            image: image.clone(),
            why,
        };
        let media_type = serde_json::from_slice::<serde_json::Value>(&top_bytes)
            .map_err(|e| invalid(format!("manifest is not JSON: {e}")))?
            .get("mediaType")
            .and_then(|m| m.as_str().map(String::from));
        let is_index = matches!(media_type.as_deref(), Some(DOCKER_LIST) | Some(OCI_INDEX))
            || (media_type.is_none()
                && serde_json::from_slice::<Index>(&top_bytes).is_ok()
                && serde_json::from_slice::<Manifest>(&top_bytes).is_err());
        let (mbytes, mdigest, mtype) = if is_index {
            let idx: Index = serde_json::from_slice(&top_bytes)
                .map_err(|e| invalid(format!("manifest list is invalid: {e}")))?;
            let d = pick_platform(&idx.manifests)
                .ok_or_else(|| invalid("the manifest list has no linux/amd64 image".into()))?
                .clone();
            let inner = oci_ref.clone_with_digest(d.digest.to_string());
            let (b, got) = client
                .pull_manifest_raw(&inner, &oauth, &MANIFEST_TYPES)
                .await
                .map_err(&reg_err)?;
            check_blob(
                "manifest",
                &d.digest,
                Some(d.size),
                &Digest::of(&b),
                b.len() as u64,
            )?;
            let _ = got;
            (b, d.digest.clone(), d.media_type.clone())
        } else {
            (
                top_bytes.clone(),
                top_digest.clone(),
                media_type.clone().unwrap_or_else(|| OCI_MANIFEST.into()),
            )
        };
        let m: Manifest = serde_json::from_slice(&mbytes)
            .map_err(|e| invalid(format!("manifest {mdigest} is invalid: {e}")))?;
        let fetched = AtomicUsize::new(0);

        // config
        let cbytes = self
            .fetch_blob(
                &client,
                &oci_ref,
                &m.config.digest,
                m.config.size,
                "config",
                &fetched,
            )
            .await
            .map_err(|e| e.into_pull(&reg_err))?;
        let cbytes = match cbytes {
            Some(b) => b,
            None => fs::read(self.blob_path(&m.config.digest))
                .map_err(io_at(&self.blob_path(&m.config.digest)))?,
        };
        let config =
            parse_config(&format!("config {}", m.config.digest), &cbytes).map_err(invalid)?;
        if config.rootfs.diff_ids.len() != m.layers.len() {
            return Err(invalid(format!(
                "manifest has {} layers but its config has {} diff IDs",
                m.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }

        // layers, concurrently, each fetched and unpacked once
        let jobs = m
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(l, diff_id)| {
                let (client, oci_ref, fetched) = (&client, &oci_ref, &fetched);
                async move {
                    self.fetch_blob(client, oci_ref, &l.digest, l.size, "layer", fetched)
                        .await?;
                    let mut rec = LayerRecord {
                        blob: l.digest.clone(),
                        media_type: l.media_type.clone(),
                        blob_size: l.size,
                        diff_id: diff_id.clone(),
                        size: 0,
                    };
                    let lock = self.key_lock(diff_id.as_str());
                    let _held = lock.lock().await;
                    let store = self.clone();
                    let r2 = rec.clone();
                    rec.size = tokio::task::spawn_blocking(move || store.unpack(&r2))
                        .await
                        .map_err(|e| {
                            FetchError::Store(StoreError::Io {
                                path: PathBuf::from("unpack"),
                                source: std::io::Error::other(e),
                            })
                        })??;
                    Ok::<_, FetchError>(rec)
                }
            });
        let mut layers = Vec::new();
        for res in futures::future::join_all(jobs).await {
            layers.push(res.map_err(|e| e.into_pull(&reg_err))?);
        }
        self.put_blob_bytes("manifest", &mdigest, &mbytes)?;
        let rec = self.commit_image(ImageRecord {
            id: m.config.digest.clone(),
            manifest: mdigest,
            manifest_media_type: m.media_type.clone().unwrap_or(mtype),
            config_media_type: m.config.media_type.clone(),
            layers,
            // `repo:tag@digest` (a pinned service image) tags it too: the tag names what
            // the managers resolved it to last
            repo_tags: r.tagged().into_iter().collect(),
            repo_digests: vec![format!("{}@{}", r.name(), top_digest)],
            stored_at: now_secs(),
        })?;
        Ok(Pulled {
            image: rec,
            fetched_blobs: fetched.load(Ordering::Relaxed),
        })
    }

    /// Fetches one blob into the store unless it is there. Returns its bytes if it was
    /// fetched and is small (a config), so the caller need not read it back.
    async fn fetch_blob(
        &self,
        client: &oci_client::Client,
        r: &oci_client::Reference,
        digest: &Digest,
        size: u64,
        what: &str,
        fetched: &AtomicUsize,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        let lock = self.key_lock(digest.as_str());
        let _held = lock.lock().await;
        if self.has_blob(digest) {
            return Ok(None);
        }
        let mut stream = client
            .pull_blob_stream(r, digest.as_str())
            .await
            .map_err(FetchError::Registry)?;
        let tmp = self.temp_path("blob");
        let res = async {
            let mut f = fs::File::create(&tmp).map_err(io_at(&tmp))?;
            let mut h = Sha256::new();
            let mut n: u64 = 0;
            let mut small = (size <= 1 << 20).then(Vec::new);
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    // oci-client's own digest check fails the last chunk; ours below says more
                    Err(e)
                        if e.get_ref()
                            .is_some_and(|i| i.to_string().contains("digest")) =>
                    {
                        break
                    }
                    Err(e) => {
                        return Err(StoreError::Io {
                            path: tmp.clone(),
                            source: e,
                        })
                    }
                };
                n += chunk.len() as u64;
                if n > size {
                    return Err(StoreError::SizeMismatch {
                        what: what.into(),
                        digest: digest.clone(),
                        expected: size,
                        actual: n,
                    });
                }
                h.update(&chunk);
                if let Some(s) = small.as_mut() {
                    s.extend_from_slice(&chunk);
                }
                f.write_all(&chunk).map_err(io_at(&tmp))?;
            }
            let actual: Digest = format!("sha256:{}", hex::encode(h.finalize()))
                .parse()
                .map_err(|_| StoreError::Io {
                    path: tmp.clone(),
                    source: std::io::Error::other("digest"),
                })?;
            check_blob(what, digest, Some(size), &actual, n)?;
            f.sync_all().map_err(io_at(&tmp))?;
            self.commit_blob(&tmp, digest)?;
            Ok(small)
        }
        .await;
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        } else {
            fetched.fetch_add(1, Ordering::Relaxed);
        }
        res.map_err(FetchError::Store)
    }
}

enum FetchError {
    Registry(OciDistributionError),
    Store(StoreError),
}

impl From<StoreError> for FetchError {
    fn from(e: StoreError) -> Self {
        FetchError::Store(e)
    }
}

impl FetchError {
    fn into_pull(self, reg: &dyn Fn(OciDistributionError) -> PullError) -> PullError {
        match self {
            FetchError::Registry(e) => reg(e),
            FetchError::Store(e) => PullError::Store(e),
        }
    }
}
