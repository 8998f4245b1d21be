//! The node's state on disk: its ID (`node-id`), what it is in its swarm
//! (`swarm/node.json`), and the data root made root's alone.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::manager::store::new_id;

/// What this node is in its swarm; `swarm/node.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwarmState {
    /// "manager" or "worker"
    pub role: String,
    /// The cluster port this node serves (managers), as bound.
    pub listen_addr: String,
    /// The address other nodes reach this node at.
    pub advertise_addr: String,
    /// Managers' cluster addresses, tried in turn.
    pub managers: Vec<String>,
    pub cluster_id: String,
    /// A manager's ID in the Raft group.
    #[serde(default)]
    pub raft_id: u64,
    /// The digest of the root CA that signed this node's certificate.
    #[serde(default)]
    pub cert_root_digest: String,
}

/// The node's identity and swarm state, as on disk.
pub struct LocalState {
    pub data_root: PathBuf,
    node_id: RwLock<String>,
    swarm: RwLock<Option<SwarmState>>,
}

impl LocalState {
    /// What `data_root` holds: the node's ID (made on first start) and its swarm state.
    pub fn load(data_root: PathBuf) -> anyhow::Result<LocalState> {
        let node_id = match std::fs::read_to_string(data_root.join("node-id")) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => new_node_id(&data_root)?,
        };
        let file = state_file(&data_root);
        let swarm: Option<SwarmState> = match std::fs::read(&file) {
            Ok(b) => Some(
                serde_json::from_slice(&b)
                    .with_context(|| format!("{} is unreadable", file.display()))?,
            ),
            Err(_) => None,
        };
        Ok(LocalState {
            data_root,
            node_id: RwLock::new(node_id),
            swarm: RwLock::new(swarm),
        })
    }

    pub fn node_id(&self) -> String {
        self.node_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A node that left joins again as a new node, as in Swarm.
    pub fn renew_node_id(&self) -> anyhow::Result<()> {
        *self.node_id.write().unwrap_or_else(|p| p.into_inner()) = new_node_id(&self.data_root)?;
        Ok(())
    }

    pub fn swarm(&self) -> Option<SwarmState> {
        self.swarm.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The swarm this node is in ("" when none).
    pub fn cluster_id(&self) -> String {
        self.swarm
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.cluster_id.clone())
            .unwrap_or_default()
    }

    /// Where the swarm's state is kept (the Raft log, the node's assignments).
    pub fn swarm_dir(&self) -> PathBuf {
        self.data_root.join("swarm")
    }

    /// Writes `st` (None: the node is in no swarm), replacing the file atomically.
    pub fn save(&self, st: Option<SwarmState>) -> anyhow::Result<()> {
        let path = state_file(&self.data_root);
        match &st {
            Some(st) => {
                shoal_runtime::files::private_dir(&self.swarm_dir())?;
                shoal_runtime::files::write_atomic(&path, &serde_json::to_vec_pretty(st)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        *self.swarm.write().unwrap_or_else(|p| p.into_inner()) = st;
        Ok(())
    }
}

fn state_file(root: &Path) -> PathBuf {
    root.join("swarm").join("node.json")
}

fn new_node_id(data_root: &Path) -> anyhow::Result<String> {
    let id = new_id();
    let file = data_root.join("node-id");
    shoal_runtime::files::write_atomic(&file, id.as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(id)
}

/// Makes the data root (0700) and what the daemon keeps in it root's alone, also in a
/// data root made before shoal said so (0755, with a 0644 Raft log that held the CA key
/// and the join tokens): the swarm's state, the certificates, network namespaces'
/// files, top-level files, and the volumes' directories (a volume's `_data` keeps the
/// mode its container sees). The image store and the containers secure their own.
pub fn secure_data_root(root: &Path) -> std::io::Result<()> {
    use shoal_runtime::files::{private_dir, secure_tree};
    private_dir(root)?;
    for e in std::fs::read_dir(root)?.flatten() {
        let p = e.path();
        match e.file_name().to_str() {
            // (task-files: tmpfs mounts, made 0700 and released by the agent)
            Some("images" | "containers" | "task-files") => {}
            Some("volumes") => {
                private_dir(&p)?;
                for v in std::fs::read_dir(&p)?.flatten() {
                    if v.path().is_dir() {
                        private_dir(&v.path())?;
                    }
                }
            }
            _ => {
                secure_tree(&p)?;
            }
        }
    }
    Ok(())
}
