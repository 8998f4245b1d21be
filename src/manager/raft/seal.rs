//! Sealing what Raft writes to disk: every log entry, the snapshot and Raft's own
//! records go into redb sealed with this manager's data key (DEK), XChaCha20-Poly1305
//! with a random 24-byte nonce per record. The associated data binds a record to its
//! place (table and key) and to the key that sealed it, so a record moved to another
//! row, or a row's bytes changed, is refused on reading.
//!
//! The DEK is kept beside the node's TLS key (`certificates/swarm-raft-dek.json`, root's
//! alone). As in Swarm without autolock, it is there in plain: sealing keeps the store's
//! secrets (the root CA key, the join tokens, secrets' data) out of the Raft database,
//! its copies and its backups, and rotation retires a key that may have leaked.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The first byte of a sealed record (a plain one, JSON, starts with `{`).
const SEALED: u8 = 0xF1;
/// The first byte of a record kept plain by [`Sealer::unsealed`] (the scale benchmark's
/// baseline), which a real sealer refuses.
const UNSEALED: u8 = 0xF0;
/// The sealed record's header: the marker and the sealing key's ID.
const HEADER: usize = 5;
const NONCE: usize = 24;
/// What every record's associated data starts with: the format, so that a record of
/// another use of the same key could never pass for a Raft record.
const DOMAIN: &[u8] = b"shoal raft record v1\0";

/// The DEK file's name, in the node's certificate directory.
pub const DEK_FILE: &str = "swarm-raft-dek.json";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the record at {0} is not sealed")]
    Plain(String),
    #[error("the record at {place} was sealed with key {id}, which this manager does not have")]
    UnknownKey { place: String, id: u32 },
    #[error("the record at {0} does not open with this manager's key: it was changed, moved or sealed by another key")]
    Forged(String),
    #[error("the data key file {path}: {why}")]
    KeyFile { path: PathBuf, why: String },
}

/// A data key as kept in the file.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: u32,
    #[serde(with = "key_b64")]
    key: Zeroizing<Vec<u8>>,
}

/// What the DEK file holds: the key records are sealed with, and while the store is
/// re-sealed after a rotation, the one before, still needed to read what is not yet.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    current: u32,
    keys: Vec<StoredKey>,
    /// The cluster's `dek_rotation` this manager's key was made for.
    #[serde(default)]
    rotation: u64,
}

/// The keys one manager seals and opens its Raft records with. Its Debug shows IDs only.
pub struct Sealer {
    /// Records kept plain: only [`Sealer::unsealed`], for the scale benchmark.
    plain: bool,
    current: u32,
    keys: Vec<(u32, XChaCha20Poly1305)>,
    stored: KeyFile,
    path: PathBuf,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("current", &self.current)
            .field("keys", &self.keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .field("path", &self.path)
            .finish()
    }
}

fn new_key(id: u32) -> StoredKey {
    let mut key = Zeroizing::new(vec![0u8; 32]);
    crate::tls::fill_random(&mut key);
    StoredKey { id, key }
}

impl Sealer {
    /// The keys in the file at `path`, or a new key written there (0600) when there is
    /// no file yet.
    pub fn load_or_create(path: &Path) -> Result<Sealer, SealError> {
        let bad = |why: String| SealError::KeyFile {
            path: path.to_path_buf(),
            why,
        };
        let stored = match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                serde_json::from_slice::<KeyFile>(&bytes).map_err(|e| bad(e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let stored = KeyFile {
                    current: 1,
                    keys: vec![new_key(1)],
                    rotation: 0,
                };
                write_key_file(path, &stored)?;
                stored
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        Sealer::from_stored(path, stored)
    }

    fn from_stored(path: &Path, stored: KeyFile) -> Result<Sealer, SealError> {
        let bad = |why: String| SealError::KeyFile {
            path: path.to_path_buf(),
            why,
        };
        let mut keys = Vec::new();
        for k in &stored.keys {
            let cipher = XChaCha20Poly1305::new_from_slice(&k.key)
                .map_err(|_| bad(format!("key {} is not 32 bytes", k.id)))?;
            keys.push((k.id, cipher));
        }
        if !keys.iter().any(|k| k.0 == stored.current) {
            return Err(bad(format!(
                "it names key {} but holds no such key",
                stored.current
            )));
        }
        Ok(Sealer {
            plain: false,
            current: stored.current,
            keys,
            stored,
            path: path.to_path_buf(),
        })
    }

    /// A sealer that keeps records plain, to measure what sealing costs (`shoal bench
    /// scale --unsealed`); the daemon never makes one, and a real sealer refuses its
    /// records.
    pub fn unsealed() -> Sealer {
        Sealer {
            plain: true,
            current: 0,
            keys: Vec::new(),
            stored: KeyFile {
                current: 0,
                keys: Vec::new(),
                rotation: 0,
            },
            path: PathBuf::new(),
        }
    }

    /// The ID of the key new records are sealed with.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// The cluster rotation this manager's key answers.
    pub fn rotation(&self) -> u64 {
        self.stored.rotation
    }

    /// Whether an older key is still kept (a re-seal to finish).
    pub fn has_old_keys(&self) -> bool {
        self.keys.len() > 1
    }

    /// A new current key for cluster rotation `rotation`, the old ones kept to read what
    /// is not yet re-sealed; written to the file before it is used. A rotation cut short
    /// (old keys still kept) goes on with the key it made: a record may be sealed with it.
    pub fn rotated(&self, rotation: u64) -> Result<Sealer, SealError> {
        if self.plain {
            return Err(SealError::KeyFile {
                path: self.path.clone(),
                why: "an unsealed store has no key to rotate".into(),
            });
        }
        let pending = self.has_old_keys();
        let id = if pending {
            self.current
        } else {
            self.keys.iter().map(|k| k.0).max().unwrap_or(0) + 1
        };
        let mut keys: Vec<StoredKey> = self
            .stored
            .keys
            .iter()
            .map(|k| StoredKey {
                id: k.id,
                key: k.key.clone(),
            })
            .collect();
        if !pending {
            keys.push(new_key(id));
        }
        let stored = KeyFile {
            current: id,
            keys,
            rotation,
        };
        write_key_file(&self.path, &stored)?;
        Sealer::from_stored(&self.path, stored)
    }

    /// Only the current key from now on (every record is sealed with it).
    pub fn retire_old_keys(&self) -> Result<Sealer, SealError> {
        if self.plain {
            return Ok(Sealer::unsealed());
        }
        let stored = KeyFile {
            current: self.current,
            keys: self
                .stored
                .keys
                .iter()
                .filter(|k| k.id == self.current)
                .map(|k| StoredKey {
                    id: k.id,
                    key: k.key.clone(),
                })
                .collect(),
            rotation: self.stored.rotation,
        };
        write_key_file(&self.path, &stored)?;
        Sealer::from_stored(&self.path, stored)
    }

    /// `plain`, sealed for the row `key` of `table`.
    pub fn seal(&self, table: &str, key: &[u8], plain: &[u8]) -> Vec<u8> {
        if self.plain {
            let mut out = Vec::with_capacity(plain.len() + 1);
            out.push(UNSEALED);
            out.extend_from_slice(plain);
            return out;
        }
        let mut out = Vec::with_capacity(HEADER + NONCE + plain.len() + 16);
        out.push(SEALED);
        out.extend_from_slice(&self.current.to_be_bytes());
        let mut nonce = [0u8; NONCE];
        crate::tls::fill_random(&mut nonce);
        out.extend_from_slice(&nonce);
        let cipher = &self
            .keys
            .iter()
            .find(|k| k.0 == self.current)
            .expect("the current key is one of the keys (checked on load)")
            .1;
        let aad = associated(table, key, &out[..HEADER]);
        // encryption only fails on a message longer than the cipher's limit (256 GiB)
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .expect("a Raft record is far below XChaCha20's limit");
        out.extend_from_slice(&sealed);
        out
    }

    /// The plain bytes of the record at row `key` of `table`.
    pub fn open(&self, table: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let place = || place(table, key);
        if self.plain {
            return match sealed.split_first() {
                Some((&UNSEALED, rest)) => Ok(rest.to_vec()),
                _ => Err(SealError::Forged(place())),
            };
        }
        if sealed.len() < HEADER + NONCE || sealed[0] != SEALED {
            return Err(SealError::Plain(place()));
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&sealed[1..HEADER]);
        let id = u32::from_be_bytes(id);
        let cipher = &self
            .keys
            .iter()
            .find(|k| k.0 == id)
            .ok_or_else(|| SealError::UnknownKey { place: place(), id })?
            .1;
        let mut nonce = [0u8; NONCE];
        nonce.copy_from_slice(&sealed[HEADER..HEADER + NONCE]);
        let aad = associated(table, key, &sealed[..HEADER]);
        cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed[HEADER + NONCE..],
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Forged(place()))
    }

    /// Whether `record` was sealed with the current key.
    #[cfg(test)]
    pub fn is_current(&self, record: &[u8]) -> bool {
        !self.plain
            && record.len() >= HEADER
            && record[0] == SEALED
            && record[1..HEADER] == self.current.to_be_bytes()
    }
}

fn place(table: &str, key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(k) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic()) => {
            format!("{table}/{k}")
        }
        _ if key.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(key);
            format!("{table}/{}", u64::from_be_bytes(b))
        }
        _ => format!("{table}/{}", hex::encode(key)),
    }
}

fn associated(table: &str, key: &[u8], header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DOMAIN.len() + table.len() + key.len() + 16);
    aad.extend_from_slice(DOMAIN);
    aad.extend_from_slice(table.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&(key.len() as u32).to_be_bytes());
    aad.extend_from_slice(key);
    aad.extend_from_slice(header);
    aad
}

fn write_key_file(path: &Path, stored: &KeyFile) -> Result<(), SealError> {
    let bad = |why: String| SealError::KeyFile {
        path: path.to_path_buf(),
        why,
    };
    let bytes = Zeroizing::new(serde_json::to_vec(stored).map_err(|e| bad(e.to_string()))?);
    if let Some(dir) = path.parent() {
        shoal_runtime::files::private_dir(dir).map_err(|e| bad(e.to_string()))?;
    }
    shoal_runtime::files::write_atomic(path, &bytes).map_err(|e| bad(e.to_string()))
}

mod key_b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;
    pub fn serialize<S: Serializer>(v: &Zeroizing<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(v.as_slice()));
        s.serialize_str(&text)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Zeroizing::new)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(dir: &Path) -> Sealer {
        Sealer::load_or_create(&dir.join(DEK_FILE)).unwrap()
    }

    #[test]
    fn a_record_opens_only_at_its_place_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer(dir.path());
        let plain = b"{\"root_ca_key\":\"MARKER\"}";
        let rec = s.seal("logs", &7u64.to_be_bytes(), plain);
        assert!(
            !rec.windows(6).any(|w| w == b"MARKER"),
            "sealed bytes hold the plain text"
        );
        assert_eq!(s.open("logs", &7u64.to_be_bytes(), &rec).unwrap(), plain);
        // moved to another row or table
        assert!(matches!(
            s.open("logs", &8u64.to_be_bytes(), &rec),
            Err(SealError::Forged(_))
        ));
        assert!(matches!(
            s.open("meta", &7u64.to_be_bytes(), &rec),
            Err(SealError::Forged(_))
        ));
        // one bit changed, in the body or in the header's key ID
        let mut bad = rec.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            s.open("logs", &7u64.to_be_bytes(), &bad),
            Err(SealError::Forged(_))
        ));
        let mut bad = rec.clone();
        bad[4] ^= 1;
        assert!(matches!(
            s.open("logs", &7u64.to_be_bytes(), &bad),
            Err(SealError::UnknownKey { .. })
        ));
        // plain JSON is not taken
        assert!(matches!(
            s.open("logs", &7u64.to_be_bytes(), plain),
            Err(SealError::Plain(_))
        ));
        // each record has its own nonce
        assert_ne!(s.seal("logs", &7u64.to_be_bytes(), plain), rec);
        // another manager's key does not open it
        let other = tempfile::tempdir().unwrap();
        assert!(sealer(other.path())
            .open("logs", &7u64.to_be_bytes(), &rec)
            .is_err());
        // the benchmark's plain records are refused by a real sealer, and the other way
        let u = Sealer::unsealed();
        let p = u.seal("logs", &7u64.to_be_bytes(), plain);
        assert_eq!(u.open("logs", &7u64.to_be_bytes(), &p).unwrap(), plain);
        assert!(matches!(
            s.open("logs", &7u64.to_be_bytes(), &p),
            Err(SealError::Plain(_))
        ));
        assert!(u.open("logs", &7u64.to_be_bytes(), &rec).is_err());
    }

    #[test]
    fn the_key_file_is_kept_and_a_rotation_retires_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs").join(DEK_FILE);
        let s = Sealer::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let old = s.seal("meta", b"vote", b"v");
        let again = Sealer::load_or_create(&path).unwrap();
        assert_eq!(again.open("meta", b"vote", &old).unwrap(), b"v");

        let r = again.rotated(3).unwrap();
        assert_eq!((r.current(), r.rotation(), r.has_old_keys()), (2, 3, true));
        assert!(!r.is_current(&old));
        // a rotation cut short goes on with the key it made
        let sealed_then = r.seal("meta", b"vote", b"x");
        let r = r.rotated(4).unwrap();
        assert_eq!((r.current(), r.rotation(), r.has_old_keys()), (2, 4, true));
        assert_eq!(r.open("meta", b"vote", &sealed_then).unwrap(), b"x");
        // a restart during the re-seal reads both
        let reloaded = Sealer::load_or_create(&path).unwrap();
        assert_eq!(reloaded.open("meta", b"vote", &old).unwrap(), b"v");
        let new = reloaded.seal("meta", b"vote", b"w");
        assert!(reloaded.is_current(&new));
        let done = reloaded.retire_old_keys().unwrap();
        assert!(!done.has_old_keys());
        let reloaded = Sealer::load_or_create(&path).unwrap();
        assert!(matches!(
            reloaded.open("meta", b"vote", &old),
            Err(SealError::UnknownKey { id: 1, .. })
        ));
        assert_eq!(reloaded.open("meta", b"vote", &new).unwrap(), b"w");
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD
            .encode(reloaded.stored.keys[0].key.as_slice());
        assert!(std::fs::read_to_string(&path).unwrap().contains(&key));
        assert!(
            !format!("{reloaded:?}").contains(&key),
            "Debug shows the key"
        );
    }
}
