//! Raft for the store, with openraft: one type config, the log and snapshots on disk in
//! redb ([`storage`]), the state machine applying batches to the [`Store`], and a
//! [`Proposer`] that commits a batch through Raft and waits for it to be applied here.

pub mod network;
pub mod seal;
pub mod storage;

use std::io::Cursor;
use std::sync::Arc;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use shoal_proto::StoreBatch;

use super::store::{encode_batch, Proposer, StoreError};

/// A store batch as a Raft log entry: its protobuf bytes (base64 in JSON), and when the
/// leader proposed it: the time every manager stamps on what it changes, at first apply
/// and at every replay alike (0 in entries written before: the time of applying).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proposal {
    #[serde(with = "b64")]
    pub batch: Vec<u8>,
    #[serde(default)]
    pub at_ms: i64,
}

/// What applying one entry gave: nothing, or why the batch was refused whole.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub error: Option<StoreError>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// How long a write waits for Raft to commit it.
pub const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Commits batches through Raft. On a follower the write is refused with the leader's
/// address; the control API forwards it there.
pub struct RaftProposer {
    pub raft: Raft,
    /// Where the Raft log is kept: its free space is checked before each proposal.
    pub dir: std::path::PathBuf,
}

/// The free space the managers keep on the Raft log's filesystem: a change is refused
/// ("no space left on device") while less is free, before anything is written, so the
/// log never meets a full disk half-way through an entry and reads keep working.
pub const NO_SPACE_RESERVE: u64 = 16 << 20;

/// What a follower keeps free: half the leader's reserve, so that on equal disks the
/// leader refuses changes first, and a follower only refuses entries that would meet a
/// full disk (the leader sends them again until it has room).
pub const FOLLOWER_RESERVE: u64 = NO_SPACE_RESERVE / 2;

/// Refuses a write of about `need` bytes to the Raft log in `dir` while less than
/// `reserve` would be left free there.
pub fn check_space(dir: &std::path::Path, need: u64, reserve: u64) -> Result<(), StoreError> {
    let Ok(free) = shoal_runtime::files::free_bytes(dir) else {
        return Ok(()); // the write will tell
    };
    if free < reserve.saturating_add(need) {
        return Err(StoreError::NoSpace(format!(
            "{} has {} MiB free, and the managers keep {} MiB free for the Raft log: make room there; nothing was changed",
            dir.display(),
            free >> 20,
            reserve >> 20
        )));
    }
    Ok(())
}

impl Proposer for RaftProposer {
    fn propose(
        &self,
        batch: StoreBatch,
    ) -> futures::future::BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let batch = encode_batch(&batch);
            check_space(&self.dir, batch.len() as u64, NO_SPACE_RESERVE)?;
            let write = self.raft.client_write(Proposal {
                batch,
                at_ms: super::store::now_ms(),
            });
            // without a majority of managers nothing commits: say so instead of hanging
            let r = tokio::time::timeout(COMMIT_TIMEOUT, write)
                .await
                .map_err(|_| {
                    StoreError::Proposal(format!(
                        "the change was not committed within {} s: is a majority of managers down? (it may still be applied if they return)",
                        COMMIT_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| match e.forward_to_leader::<BasicNode>() {
                    Some(f) => StoreError::Proposal(format!(
                        "not the leader (leader: {:?})",
                        f.leader_node.as_ref().map(|n| n.addr.clone())
                    )),
                    None if e.to_string().contains("No space left on device") => {
                        StoreError::NoSpace(format!("{}: {e}", self.dir.display()))
                    }
                    None => StoreError::Proposal(e.to_string()),
                })?;
            match r.data.error {
                Some(e) => Err(e),
                None => Ok(r.log_id.index),
            }
        })
    }
}

/// Raft settings: elections within about a second, snapshots every 1000 entries (or
/// every `storage::SNAPSHOT_BYTES` of log), keeping 50 entries behind the snapshot for
/// followers that lag (one further behind is sent the snapshot): entries may be up to
/// `store::MAX_TX_BYTES` each, and what is kept is kept on disk.
pub fn config() -> Result<Arc<openraft::Config>, Box<openraft::ConfigError>> {
    config_with_snapshots_every(1000, 50)
}

/// [`config`] with another snapshot interval (tests use a small one).
pub fn config_with_snapshots_every(
    every: u64,
    keep: u64,
) -> Result<Arc<openraft::Config>, Box<openraft::ConfigError>> {
    let c = openraft::Config {
        cluster_name: "shoal".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(every),
        max_in_snapshot_log_to_keep: keep,
        // purge as soon as there is anything to purge
        purge_batch_size: 1,
        ..Default::default()
    };
    Ok(Arc::new(c.validate().map_err(Box::new)?))
}
