//! The Raft log, vote and snapshots in redb (one file, `raft.redb`), and the state
//! machine: the in-memory [`Store`], rebuilt at start from the last snapshot and the log.
//! Every write is committed with redb's default durability (fsync) before openraft is
//! told it happened. Checked against openraft's own storage test suite.
//!
//! Every record is sealed with the manager's data key ([`super::seal`]) but the format
//! marker. A database written before sealing is re-written sealed when it is opened, into
//! a new file that replaces it, so no plain page of it is left in the file.

#![allow(clippy::result_large_err)] // openraft's StorageError is what its traits return

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use shoal_proto::StoreSnapshot;

use super::seal::{SealError, Sealer};
use super::{Applied, TypeConfig};
use crate::manager::store::{decode_batch, now_ms, Store, Tables};

type NodeId = u64;
type SErr = StorageError<NodeId>;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The one plain record, in META: which format the others are in.
const FORMAT: &str = "format";
const SEALED_V1: &[u8] = b"sealed-v1";

fn w<E: std::error::Error + 'static>(e: E) -> SErr {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn r<E: std::error::Error + 'static>(e: E) -> SErr {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

/// Bytes of log written since the last snapshot: shared by the log (which adds) and the
/// state machine (which starts over when it takes a snapshot), read by the manager to
/// take a snapshot early when entries are big ([`SNAPSHOT_BYTES`]).
pub type LogBytes = Arc<std::sync::atomic::AtomicU64>;

/// A snapshot is taken once this much log has been written since the last, even before
/// the number of entries asks for one (`raft::config`): the log then holds little more
/// than this, and the file's space is used again.
pub const SNAPSHOT_BYTES: u64 = 32 << 20;

fn io_err(e: impl std::fmt::Display) -> redb::Error {
    redb::Error::from(redb::StorageError::Io(std::io::Error::other(e.to_string())))
}

fn create_db(path: &Path) -> Result<Database, redb::Error> {
    // a small page cache: the log is written once and read back rarely, and edge hosts
    // have little memory (redb's default cache grows to 1 GiB)
    let db = Database::builder().set_cache_size(4 << 20).create(path)?;
    let txn = db.begin_write()?;
    {
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
    }
    txn.commit()?;
    Ok(db)
}

/// Opens (creating) the Raft database and its tables, sealed with `seal`. A database
/// written before sealing is re-written sealed; one left half re-sealed by a rotation
/// (`seal` still holds the old key) is finished. A file grown well past what it holds
/// (a big log, since purged) is compacted, so it shrinks back.
pub fn open_db(path: &Path, seal: Sealer) -> Result<RaftDb, redb::Error> {
    let _ = std::fs::remove_file(sealing_path(path)); // a re-write cut short: the old file stands
    let mut db = create_db(path)?;
    let (format, empty) = {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let format = meta.get(FORMAT)?.map(|v| v.value().to_vec());
        let empty = meta.len()? == 0 && txn.open_table(LOGS)?.len()? == 0;
        (format, empty)
    };
    let mut seal = seal;
    match format.as_deref() {
        Some(SEALED_V1) if seal.has_old_keys() => {
            db = rewrite(&db, path, |t, k, v| seal.open(t, k, v), &seal).map_err(io_err)?;
            reseal_backup(path, &seal).map_err(io_err)?;
            seal = seal.retire_old_keys().map_err(io_err)?;
            tracing::info!(
                key = seal.current(),
                "finished re-sealing the Raft database"
            );
        }
        Some(SEALED_V1) => {}
        Some(other) => {
            return Err(io_err(format!(
                "{}: unknown format {:?}: written by a newer shoal?",
                path.display(),
                String::from_utf8_lossy(other)
            )))
        }
        None if empty => {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(FORMAT, SEALED_V1)?;
            txn.commit()?;
        }
        None => {
            db = rewrite(&db, path, |_, _, v| Ok(v.to_vec()), &seal).map_err(io_err)?;
            tracing::info!(
                path = %path.display(),
                "sealed the Raft database written before sealing (data key {})",
                seal.current()
            );
        }
    }
    if backup_is_plain(path) {
        reseal_backup(path, &seal).map_err(io_err)?;
    }
    let db = RaftDb(Arc::new(RwLock::new(Sealed { db, seal })));
    db.compact_if_sparse(path).map_err(io_err)?;
    Ok(db)
}

fn sealing_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".sealing");
    p.into()
}

/// Copies every record of `src` into a new file sealed with `seal` (`read` gives a
/// record's plain bytes), then puts the new file in `path`'s place. A crash before the
/// rename leaves the old file as it was.
fn rewrite(
    src: &Database,
    path: &Path,
    read: impl Fn(&str, &[u8], &[u8]) -> Result<Vec<u8>, SealError>,
    seal: &Sealer,
) -> Result<Database, String> {
    let tmp = sealing_path(path);
    let _ = std::fs::remove_file(&tmp);
    let e = |e: &dyn std::fmt::Display| format!("re-sealing {}: {e}", path.display());
    let dst = create_db(&tmp).map_err(|x| e(&x))?;
    {
        let rt = src.begin_read().map_err(|x| e(&x))?;
        let wt = dst.begin_write().map_err(|x| e(&x))?;
        {
            let from = rt.open_table(LOGS).map_err(|x| e(&x))?;
            let mut to = wt.open_table(LOGS).map_err(|x| e(&x))?;
            for item in from.iter().map_err(|x| e(&x))? {
                let (k, v) = item.map_err(|x| e(&x))?;
                let place = k.value().to_be_bytes();
                let plain =
                    zeroize::Zeroizing::new(read("logs", &place, v.value()).map_err(|x| e(&x))?);
                to.insert(k.value(), seal.seal("logs", &place, &plain).as_slice())
                    .map_err(|x| e(&x))?;
            }
            let from = rt.open_table(META).map_err(|x| e(&x))?;
            let mut to = wt.open_table(META).map_err(|x| e(&x))?;
            for item in from.iter().map_err(|x| e(&x))? {
                let (k, v) = item.map_err(|x| e(&x))?;
                if k.value() == FORMAT {
                    continue;
                }
                let plain = zeroize::Zeroizing::new(
                    read("meta", k.value().as_bytes(), v.value()).map_err(|x| e(&x))?,
                );
                to.insert(
                    k.value(),
                    seal.seal("meta", k.value().as_bytes(), &plain).as_slice(),
                )
                .map_err(|x| e(&x))?;
            }
            to.insert(FORMAT, SEALED_V1).map_err(|x| e(&x))?;
        }
        wt.commit().map_err(|x| e(&x))?; // durable before it replaces the old file
    }
    std::fs::rename(&tmp, path).map_err(|x| e(&x))?;
    // the new file is in place: a failed sync of the directory is no reason to use the
    // old one any more (it is gone from the directory)
    if let Some(dir) = path.parent() {
        if let Err(x) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(path = %path.display(), error = %x, "could not sync the directory after re-sealing");
        }
    }
    Ok(dst)
}

/// Re-seals with `seal` the copy of the database that `--force-new-cluster` set aside
/// beside `path`, when there is one: a plain one (written before sealing) is sealed, a
/// sealed one is sealed again with the current key.
fn reseal_backup(path: &Path, seal: &Sealer) -> Result<(), String> {
    let backup = path.with_extension("redb.before-force-new-cluster");
    if !backup.exists() {
        return Ok(());
    }
    let e = |x: &dyn std::fmt::Display| format!("{}: {x}", backup.display());
    let old = Database::builder()
        .set_cache_size(1 << 20)
        .open(&backup)
        .map_err(|x| e(&x))?;
    let sealed = {
        let txn = old.begin_read().map_err(|x| e(&x))?;
        let meta = txn.open_table(META).map_err(|x| e(&x))?;
        let format = meta.get(FORMAT).map_err(|x| e(&x))?;
        format.is_some_and(|v| v.value() == SEALED_V1)
    };
    if sealed {
        rewrite(&old, &backup, |t, k, v| seal.open(t, k, v), seal)?;
    } else {
        rewrite(&old, &backup, |_, _, v| Ok(v.to_vec()), seal)?;
    }
    Ok(())
}

/// Whether the force-new-cluster copy beside `path` is still in plain.
fn backup_is_plain(path: &Path) -> bool {
    let backup = path.with_extension("redb.before-force-new-cluster");
    if !backup.exists() {
        return false;
    }
    let Ok(db) = Database::builder().set_cache_size(1 << 20).open(&backup) else {
        return false;
    };
    let format = (|| -> Result<Option<Vec<u8>>, redb::Error> {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let v = meta.get(FORMAT)?.map(|v| v.value().to_vec());
        Ok(v)
    })();
    !matches!(format, Ok(Some(f)) if f == SEALED_V1)
}

/// The database and the keys its records are sealed with.
pub struct Sealed {
    db: Database,
    seal: Sealer,
}

/// The Raft database, shared by the log and the state machine. Each use holds it for
/// reading; [`RaftDb::compact_if_sparse`] and [`RaftDb::rotate_key`] hold it alone.
#[derive(Clone)]
pub struct RaftDb(Arc<RwLock<Sealed>>);

/// A file above twice this size (a log since purged) is compacted, at start and while
/// it runs, once a quarter of it is free space.
pub const COMPACT_BYTES: u64 = SNAPSHOT_BYTES;

impl RaftDb {
    fn get(&self) -> std::sync::RwLockReadGuard<'_, Sealed> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster rotation this manager's data key answers.
    #[cfg(test)]
    pub fn key_rotation(&self) -> u64 {
        self.get().seal.rotation()
    }

    /// Whether cluster rotation `wanted` is still to be done here (a rotation cut short
    /// counts as not done).
    pub fn rotation_due(&self, wanted: u64) -> bool {
        let g = self.get();
        wanted > g.seal.rotation() || g.seal.has_old_keys()
    }

    /// A new data key for cluster rotation `rotation`: every record is re-sealed with
    /// it, into a new file that replaces the old one (so no page sealed with the old key
    /// is left in it), and the old key is forgotten. The copy set aside by
    /// `--force-new-cluster` is re-sealed too. Raft's storage calls wait meanwhile.
    /// Blocking. A failure at any step leaves what is on disk readable with the keys
    /// in the key file, and a new call (or the next start) goes on from there.
    pub fn rotate_key(&self, path: &Path, rotation: u64) -> Result<(), String> {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        let next = g.seal.rotated(rotation).map_err(|e| e.to_string())?;
        // until the new file is in place the old one stands, read by the old keys
        let db = rewrite(&g.db, path, |t, k, v| next.open(t, k, v), &next)?;
        // from here on the new file is the database, whatever fails next
        *g = Sealed { db, seal: next };
        reseal_backup(path, &g.seal)?;
        g.seal = g.seal.retire_old_keys().map_err(|e| e.to_string())?;
        tracing::info!(
            key = g.seal.current(),
            rotation,
            "re-sealed the Raft database with a new data key"
        );
        Ok(())
    }

    /// How many handles are open (Raft's tasks hold some until they end).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// Compacts the file at `path` when it is above twice [`COMPACT_BYTES`] and a
    /// quarter of it is free space: the live pages (the snapshot and the log kept behind
    /// it) move to its front and the rest is cut off, so that the file shrinks back
    /// after a flood of big entries. Raft's storage calls wait meanwhile. Blocking.
    pub fn compact_if_sparse(&self, path: &Path) -> Result<(), String> {
        let len = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let before = len();
        if before <= 2 * COMPACT_BYTES {
            return Ok(());
        }
        let free = {
            let g = self.get();
            let txn = g.db.begin_write().map_err(|e| e.to_string())?;
            let stats = txn.stats().map_err(|e| e.to_string())?;
            let _ = txn.abort();
            before.saturating_sub(stats.allocated_pages() * stats.page_size() as u64)
        };
        if free <= before / 4 {
            return Ok(());
        }
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        while g.db.compact().map_err(|e| e.to_string())? {}
        let after = len();
        tracing::info!(before, after, path = %path.display(), "compacted the Raft database");
        Ok(())
    }
}

fn get_meta<T: serde::de::DeserializeOwned>(db: &Sealed, key: &str) -> Result<Option<T>, SErr> {
    let txn = db.db.begin_read().map_err(r)?;
    let t = txn.open_table(META).map_err(r)?;
    let Some(v) = t.get(key).map_err(r)? else {
        return Ok(None);
    };
    let plain =
        zeroize::Zeroizing::new(db.seal.open("meta", key.as_bytes(), v.value()).map_err(r)?);
    serde_json::from_slice(&plain).map(Some).map_err(r)
}

fn put_meta<T: serde::Serialize>(db: &Sealed, key: &str, v: &T) -> Result<(), SErr> {
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(v).map_err(w)?);
    let bytes = db.seal.seal("meta", key.as_bytes(), &plain);
    let txn = db.db.begin_write().map_err(w)?;
    {
        let mut t = txn.open_table(META).map_err(w)?;
        t.insert(key, bytes.as_slice()).map_err(w)?;
    }
    txn.commit().map_err(w)
}

/// One log entry from its sealed record at `index`.
fn open_entry(seal: &Sealer, index: u64, sealed: &[u8]) -> Result<Entry<TypeConfig>, SErr> {
    let plain =
        zeroize::Zeroizing::new(seal.open("logs", &index.to_be_bytes(), sealed).map_err(r)?);
    serde_json::from_slice(&plain).map_err(r)
}

/// The log and the vote.
#[derive(Clone)]
pub struct LogStore {
    db: RaftDb,
    written: LogBytes,
}

impl LogStore {
    pub fn new(db: RaftDb, written: LogBytes) -> LogStore {
        LogStore { db, written }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let db = self.db.get();
        let txn = db.db.begin_read().map_err(r)?;
        let t = txn.open_table(LOGS).map_err(r)?;
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let mut out = Vec::new();
        for item in t.range(bounds).map_err(r)? {
            let (k, v) = item.map_err(r)?;
            out.push(open_entry(&db.seal, k.value(), v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged: Option<LogId<NodeId>> = get_meta(&self.db.get(), "last_purged")?;
        let last = {
            let db = self.db.get();
            let txn = db.db.begin_read().map_err(r)?;
            let t = txn.open_table(LOGS).map_err(r)?;
            let last = t.last().map_err(r)?;
            let id = match last {
                Some((k, v)) => Some(open_entry(&db.seal, k.value(), v.value())?.log_id),
                None => None,
            };
            id
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        put_meta(&self.db.get(), "vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        get_meta(&self.db.get(), "vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        put_meta(&self.db.get(), "committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(get_meta::<Option<LogId<NodeId>>>(&self.db.get(), "committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let res = (|| {
            let db = self.db.get();
            let txn = db.db.begin_write().map_err(w)?;
            {
                let mut t = txn.open_table(LOGS).map_err(w)?;
                for e in entries {
                    let plain = zeroize::Zeroizing::new(serde_json::to_vec(&e).map_err(w)?);
                    let index = e.log_id.index;
                    let bytes = db.seal.seal("logs", &index.to_be_bytes(), &plain);
                    t.insert(index, bytes.as_slice()).map_err(w)?;
                    self.written
                        .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            txn.commit().map_err(w) // durable (fsync) before openraft hears of it
        })();
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let db = self.db.get();
        let txn = db.db.begin_write().map_err(w)?;
        {
            let mut t = txn.open_table(LOGS).map_err(w)?;
            t.retain_in(log_id.index.., |_, _| false).map_err(w)?;
        }
        txn.commit().map_err(w)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let db = self.db.get();
        let bytes = db.seal.seal(
            "meta",
            b"last_purged",
            &serde_json::to_vec(&Some(log_id)).map_err(w)?,
        );
        let txn = db.db.begin_write().map_err(w)?;
        {
            let mut m = txn.open_table(META).map_err(w)?;
            m.insert("last_purged", bytes.as_slice()).map_err(w)?;
            let mut t = txn.open_table(LOGS).map_err(w)?;
            t.retain_in(..=log_id.index, |_, _| false).map_err(w)?;
        }
        txn.commit().map_err(w)
    }
}

/// What the state machine has applied, guarded together with the store's contents.
#[derive(Default)]
struct Applied_ {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
}

/// The state machine: the store, what it has applied, and the current snapshot (kept in
/// redb so a restart starts from it).
#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    db: RaftDb,
    /// Started over at each snapshot.
    written: LogBytes,
    /// Held while applying and while taking a snapshot, so a snapshot is consistent.
    state: Arc<Mutex<Applied_>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    #[serde(with = "super::b64")]
    data: Vec<u8>,
}

impl StateMachine {
    /// The state machine over `store`, restored from the last snapshot on disk.
    pub fn open(store: Store, db: RaftDb, written: LogBytes) -> Result<StateMachine, SErr> {
        let sm = StateMachine {
            store,
            db,
            written,
            state: Arc::default(),
        };
        if let Some(s) = get_meta::<StoredSnapshot>(&sm.db.get(), "snapshot")? {
            sm.restore(&s.meta, &s.data)?;
        }
        Ok(sm)
    }

    fn restore(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: &[u8],
    ) -> Result<(), SErr> {
        let snap = StoreSnapshot::decode(data)
            .map_err(|e| SErr::from(StorageIOError::read_snapshot(None, AnyError::new(&e))))?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.store.restore(
            Tables::from_snapshot(&snap),
            meta.last_log_id.map(|l| l.index).unwrap_or(0),
        );
        st.last_applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        self.written.store(0, std::sync::atomic::Ordering::Relaxed);
        let (meta, data) = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let (snap, _) = self.store.snapshot();
            let id = format!(
                "{}-{}",
                st.last_applied.map(|l| l.index).unwrap_or(0),
                now_ms()
            );
            let meta = SnapshotMeta {
                last_log_id: st.last_applied,
                last_membership: st.membership.clone(),
                snapshot_id: id,
            };
            (meta, snap.encode_to_vec())
        };
        put_meta(
            &self.db.get(),
            "snapshot",
            &StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            },
        )?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        SErr,
    > {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for e in entries {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.last_applied = Some(e.log_id);
            let res = match e.payload {
                EntryPayload::Blank => Applied::default(),
                EntryPayload::Membership(m) => {
                    st.membership = StoredMembership::new(Some(e.log_id), m);
                    Applied::default()
                }
                EntryPayload::Normal(p) => {
                    // a refused batch is a normal outcome (a conflict), not a storage error
                    // the proposal's time: the same on every manager and at every replay
                    let at = if p.at_ms > 0 { p.at_ms } else { now_ms() };
                    let error = decode_batch(&p.batch)
                        .and_then(|b| self.store.apply(b, e.log_id.index, at))
                        .err();
                    Applied { error }
                }
            };
            out.push(res);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        self.restore(meta, &data)?;
        put_meta(
            &self.db.get(),
            "snapshot",
            &StoredSnapshot {
                meta: meta.clone(),
                data,
            },
        )
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        Ok(
            get_meta::<StoredSnapshot>(&self.db.get(), "snapshot")?.map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.data)),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), SErr> {
            let dir = tempfile::tempdir().map_err(w)?;
            let seal = Sealer::load_or_create(&dir.path().join(super::super::seal::DEK_FILE))
                .map_err(w)?;
            let db = open_db(&dir.path().join("raft.redb"), seal).map_err(w)?;
            let written = LogBytes::default();
            let sm = StateMachine::open(Store::new(), db.clone(), written.clone())?;
            Ok((dir, LogStore::new(db, written), sm))
        }
    }

    #[test]
    fn openraft_storage_suite() -> Result<(), SErr> {
        Suite::test_all(Builder)
    }

    /// The plain forms of `marker` a file could hold: as is, and in base64 (Raft's
    /// entries carry store batches as base64) at each of the three alignments.
    pub(crate) fn plain_forms(marker: &[u8]) -> Vec<Vec<u8>> {
        use base64::Engine as _;
        let mut out = vec![marker.to_vec()];
        for pad in 0..3 {
            let mut m = vec![0u8; pad];
            m.extend_from_slice(marker);
            let e = base64::engine::general_purpose::STANDARD.encode(&m);
            // skip the characters the padding touches, and the last group
            let from = (pad * 4).div_ceil(3) + 1;
            out.push(e.as_bytes()[from..e.len() - 4].to_vec());
        }
        out
    }

    pub(crate) fn holds_plain(bytes: &[u8], marker: &[u8]) -> bool {
        plain_forms(marker)
            .iter()
            .any(|f| bytes.windows(f.len()).any(|w| w == f.as_slice()))
    }

    /// A Raft database written by shoal before sealing (at 5c2002a: `swarm init`, a
    /// network, and a config whose data is the marker) is opened sealed: nothing is
    /// lost, and no plain form of the marker or of the CA key is left in the file.
    #[tokio::test]
    async fn a_database_written_before_sealing_is_sealed_whole() {
        let marker = b"PLAINMARKER-config-0123456789abcdef";
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/raft-before-sealing.redb");
        let before = std::fs::read(&fixture).unwrap();
        assert!(
            holds_plain(&before, marker),
            "the fixture should hold the marker in plain"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        std::fs::copy(&fixture, &path).unwrap();
        // and as the copy a `--force-new-cluster` of that time set aside
        let backup = dir.path().join("raft.redb.before-force-new-cluster");
        std::fs::copy(&fixture, &backup).unwrap();
        let dek = dir.path().join(super::super::seal::DEK_FILE);

        let open = || {
            let db = open_db(&path, Sealer::load_or_create(&dek).unwrap()).unwrap();
            let written = LogBytes::default();
            let store = Store::new();
            let sm = StateMachine::open(store.clone(), db.clone(), written.clone()).unwrap();
            (db.clone(), LogStore::new(db, written), sm, store)
        };
        let (db, mut log, mut sm, store) = open();
        let state = log.get_log_state().await.unwrap();
        let last = state.last_log_id.unwrap().index;
        let entries = log.try_get_log_entries(..=last).await.unwrap();
        assert_eq!(
            entries.len() as u64,
            last - state.last_purged_log_id.map_or(0, |l| l.index + 1) + 1
        );
        sm.apply(entries).await.unwrap();
        let (configs, ca_key) = store.view(|t| {
            let c: Vec<_> = t
                .configs
                .values()
                .map(|c| c.spec.clone().unwrap_or_default())
                .collect();
            let k = t.clusters.values().next().unwrap().root_ca_key.clone();
            (c, k)
        });
        assert_eq!(configs.len(), 1);
        assert_eq!(configs[0].data, marker);
        assert!(String::from_utf8_lossy(&ca_key).contains("PRIVATE KEY"));
        assert!(log.read_vote().await.unwrap().is_some());

        drop((log, sm));
        assert!(db.handles() >= 1);
        drop(db);
        let after = std::fs::read(&path).unwrap();
        assert!(
            !holds_plain(&after, marker),
            "the marker is still in the file in plain"
        );
        let copy = std::fs::read(&backup).unwrap();
        assert!(holds_plain(&std::fs::read(&fixture).unwrap(), marker));
        assert!(
            !holds_plain(&copy, marker),
            "the marker is still in the set-aside copy"
        );
        let key_body = String::from_utf8_lossy(&ca_key)
            .lines()
            .nth(1)
            .unwrap()
            .as_bytes()
            .to_vec();
        assert!(holds_plain(&before, &key_body[..24]));
        assert!(
            !holds_plain(&after, &key_body[..24]),
            "the CA key is still in the file in plain"
        );
        assert!(!dir.path().join("raft.redb.sealing").exists());

        // it opens again (sealed now), and a plain record put in is refused
        let (db, mut log, _, _) = open();
        assert_eq!(
            log.get_log_state()
                .await
                .unwrap()
                .last_log_id
                .unwrap()
                .index,
            last
        );
        {
            let g = db.get();
            let txn = g.db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("vote", b"{}".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = log.read_vote().await.unwrap_err();
        assert!(err.to_string().contains("meta/vote is not sealed"), "{err}");
    }

    /// A rotation re-seals every record with the new key: the old key opens none of the
    /// file's records, and what Raft had is all there.
    #[tokio::test]
    async fn a_rotated_key_re_seals_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/raft-before-sealing.redb"),
            &path,
        )
        .unwrap();
        let dek = dir.path().join(super::super::seal::DEK_FILE);
        let backup = dir.path().join("raft.redb.before-force-new-cluster");
        std::fs::copy(&path, &backup).unwrap();
        let db = open_db(&path, Sealer::load_or_create(&dek).unwrap()).unwrap();
        let mut log = LogStore::new(db.clone(), LogBytes::default());
        let before = log.try_get_log_entries(..).await.unwrap();
        let old_key = std::fs::read(&dek).unwrap();
        assert_eq!(db.key_rotation(), 0);
        db.rotate_key(&path, 4).unwrap();
        assert_eq!(db.key_rotation(), 4);
        let after = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(format!("{before:?}"), format!("{after:?}"));
        assert!(log.read_vote().await.unwrap().is_some());
        // the old key opens nothing in the file
        let old_dir = tempfile::tempdir().unwrap();
        let old_dek = old_dir.path().join(super::super::seal::DEK_FILE);
        std::fs::write(&old_dek, &old_key).unwrap();
        let old = Sealer::load_or_create(&old_dek).unwrap();
        let g = db.get();
        // every log record of `file`, opened by the new key and not by the old
        let check = |file: &Database| {
            let txn = file.begin_read().unwrap();
            let mut n = 0;
            for item in txn.open_table(LOGS).unwrap().iter().unwrap() {
                let (k, v) = item.unwrap();
                let place = k.value().to_be_bytes();
                assert!(old.open("logs", &place, v.value()).is_err());
                assert!(g.seal.is_current(v.value()));
                assert!(g.seal.open("logs", &place, v.value()).is_ok());
                n += 1;
            }
            n
        };
        assert!(check(&g.db) > 0);
        assert!(!g.seal.has_old_keys());
        // the set-aside copy too
        assert!(check(&Database::builder().open(&backup).unwrap()) > 0);
    }
}
