//! The Raft log, vote and snapshots in redb (one file, `raft.redb`), and the state
//! machine: the in-memory [`Store`], rebuilt at start from the last snapshot and the log.
//! Every write is committed with redb's default durability (fsync) before openraft is
//! told it happened. Checked against openraft's own storage test suite.

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
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shoal_proto::StoreSnapshot;

use super::{Applied, TypeConfig};
use crate::manager::store::{decode_batch, now_ms, Store, Tables};

type NodeId = u64;
type SErr = StorageError<NodeId>;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

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

/// Opens (creating) the Raft database and its tables. A file grown well past what it
/// holds (a big log, since purged) is compacted first, so it shrinks back.
pub fn open_db(path: &Path) -> Result<RaftDb, redb::Error> {
    // a small page cache: the log is written once and read back rarely, and edge hosts
    // have little memory (redb's default cache grows to 1 GiB)
    let db = Database::builder().set_cache_size(4 << 20).create(path)?;
    let txn = db.begin_write()?;
    {
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
    }
    txn.commit()?;
    let db = RaftDb(Arc::new(RwLock::new(db)));
    db.compact_if_sparse(path)
        .map_err(|e| redb::Error::from(redb::StorageError::Io(std::io::Error::other(e))))?;
    Ok(db)
}

/// The Raft database, shared by the log and the state machine. Each use holds it for
/// reading; [`RaftDb::compact_if_sparse`] holds it alone.
#[derive(Clone)]
pub struct RaftDb(Arc<RwLock<Database>>);

/// A file above twice this size (a log since purged) is compacted, at start and while
/// it runs, once a quarter of it is free space.
pub const COMPACT_BYTES: u64 = SNAPSHOT_BYTES;

impl RaftDb {
    fn get(&self) -> std::sync::RwLockReadGuard<'_, Database> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
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
            let db = self.get();
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            let stats = txn.stats().map_err(|e| e.to_string())?;
            let _ = txn.abort();
            before.saturating_sub(stats.allocated_pages() * stats.page_size() as u64)
        };
        if free <= before / 4 {
            return Ok(());
        }
        let mut db = self.0.write().unwrap_or_else(|p| p.into_inner());
        while db.compact().map_err(|e| e.to_string())? {}
        let after = len();
        tracing::info!(before, after, path = %path.display(), "compacted the Raft database");
        Ok(())
    }
}

fn get_meta<T: serde::de::DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, SErr> {
    let txn = db.begin_read().map_err(r)?;
    let t = txn.open_table(META).map_err(r)?;
    let Some(v) = t.get(key).map_err(r)? else {
        return Ok(None);
    };
    serde_json::from_slice(v.value()).map(Some).map_err(r)
}

fn put_meta<T: serde::Serialize>(db: &Database, key: &str, v: &T) -> Result<(), SErr> {
    let bytes = serde_json::to_vec(v).map_err(w)?;
    let txn = db.begin_write().map_err(w)?;
    {
        let mut t = txn.open_table(META).map_err(w)?;
        t.insert(key, bytes.as_slice()).map_err(w)?;
    }
    txn.commit().map_err(w)
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
        let txn = db.begin_read().map_err(r)?;
        let t = txn.open_table(LOGS).map_err(r)?;
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let mut out = Vec::new();
        for item in t.range(bounds).map_err(r)? {
            let (_, v) = item.map_err(r)?;
            out.push(serde_json::from_slice(v.value()).map_err(r)?);
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
            let txn = db.begin_read().map_err(r)?;
            let t = txn.open_table(LOGS).map_err(r)?;
            let last = t.last().map_err(r)?;
            let id = match last {
                Some((_, v)) => Some(
                    serde_json::from_slice::<Entry<TypeConfig>>(v.value())
                        .map_err(r)?
                        .log_id,
                ),
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
            let txn = db.begin_write().map_err(w)?;
            {
                let mut t = txn.open_table(LOGS).map_err(w)?;
                for e in entries {
                    let bytes = serde_json::to_vec(&e).map_err(w)?;
                    t.insert(e.log_id.index, bytes.as_slice()).map_err(w)?;
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
        let txn = db.begin_write().map_err(w)?;
        {
            let mut t = txn.open_table(LOGS).map_err(w)?;
            t.retain_in(log_id.index.., |_, _| false).map_err(w)?;
        }
        txn.commit().map_err(w)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(w)?;
        let db = self.db.get();
        let txn = db.begin_write().map_err(w)?;
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
                    let error = decode_batch(&p.batch)
                        .and_then(|b| self.store.apply(b, e.log_id.index, now_ms()))
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
            let db = open_db(&dir.path().join("raft.redb")).map_err(w)?;
            let written = LogBytes::default();
            let sm = StateMachine::open(Store::new(), db.clone(), written.clone())?;
            Ok((dir, LogStore::new(db, written), sm))
        }
    }

    #[test]
    fn openraft_storage_suite() -> Result<(), SErr> {
        Suite::test_all(Builder)
    }
}
