//! The CA's side of joining, on the store: the cluster object holds the root CA and the
//! join tokens; a node that shows a valid token gets a node object and a certificate.

use std::time::Duration;

use shoal_proto::*;

use super::error::{invalid, ControlError};
use super::store::{new_id, Store, StoreError};
use crate::tls::{same_secret, JoinToken, Role, RootCa, DEFAULT_CERT_EXPIRY};

/// The cluster object (there is one).
pub fn cluster(store: &Store) -> Result<Cluster, ControlError> {
    store
        .view(|t| t.clusters.values().next().cloned())
        .ok_or_else(|| invalid("the swarm has no cluster object yet"))
}

/// The root CA of the cluster, with its key.
pub fn root_ca(c: &Cluster) -> Result<RootCa, ControlError> {
    let cert_pem = String::from_utf8_lossy(&c.root_ca_cert).into_owned();
    let der = crate::tls::pem_cert_der(&cert_pem)
        .map_err(|e| invalid(format!("the cluster's root CA is unreadable: {e}")))?;
    Ok(RootCa {
        cert_pem,
        cert_der: der,
        key_pem: String::from_utf8_lossy(&c.root_ca_key).into_owned(),
    })
}

/// The roots every node trusts: the current one, and while the CA rotates the one it
/// replaces.
pub fn trusted_roots(c: &Cluster) -> String {
    let mut pem = String::from_utf8_lossy(&c.previous_root_ca_cert).into_owned();
    if !pem.is_empty() && !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem.push_str(&String::from_utf8_lossy(&c.root_ca_cert));
    pem
}

/// `swarm ca --rotate`: a new root signs from now on; the old one stays trusted until
/// every node has a certificate from the new one ([`finish_rotation`]). The join
/// tokens change with the root (they pin its digest).
pub async fn rotate_ca(store: &Store, new: RootCa) -> Result<Cluster, ControlError> {
    let c = cluster(store)?;
    if !c.previous_root_ca_cert.is_empty() {
        return Err(invalid(
            "a CA rotation is in progress: wait until every node has a certificate from the new root",
        ));
    }
    let mut next = c.clone();
    next.previous_root_ca_cert = c.root_ca_cert.clone();
    next.root_ca_cert = new.cert_pem.clone().into_bytes();
    next.root_ca_key = new.key_pem.clone().into_bytes();
    next.join_tokens = Some(JoinTokens {
        worker: JoinToken::generate(&new.cert_der).to_string(),
        manager: JoinToken::generate(&new.cert_der).to_string(),
    });
    let id = next.id.clone();
    store.update(|tx| tx.update(next)).await?;
    Ok(store.view(|t| t.clusters[&id].clone()))
}

/// Ends a rotation once every node that is not down says its certificate is from the
/// new root: the old root is no longer trusted. (A node that was down all along joins
/// again.) Returns whether it ended one.
pub async fn finish_rotation(store: &Store) -> Result<bool, ControlError> {
    // called every tick of the node monitor: nothing is copied unless a rotation runs
    let rotating = store.view(|t| {
        t.clusters
            .values()
            .next()
            .is_some_and(|c| !c.previous_root_ca_cert.is_empty())
    });
    if !rotating {
        return Ok(false);
    }
    let c = cluster(store)?;
    let digest = root_ca(&c)?.digest();
    let done = store.view(|t| {
        t.nodes.values().all(|n| {
            n.cert_root_digest == digest
                || n.status
                    .as_ref()
                    .is_some_and(|s| s.state == NodeState::Down as i32)
        })
    });
    if !done {
        return Ok(false);
    }
    let mut next = c;
    next.previous_root_ca_cert.clear();
    store.update(|tx| tx.update(next)).await?;
    tracing::info!("CA rotation done: the previous root is no longer trusted");
    Ok(true)
}

/// A new cluster object with `ca` and fresh join tokens.
pub fn new_cluster(ca: &RootCa, cert_expiry: Duration) -> Cluster {
    Cluster {
        id: new_id(),
        spec: Some(ClusterSpec {
            annotations: Some(Annotations {
                name: "default".into(),
                ..Default::default()
            }),
            ca_config: Some(CaConfig {
                node_cert_expiry: Some(prost_types::Duration {
                    seconds: cert_expiry.as_secs() as i64,
                    nanos: 0,
                }),
            }),
            ..Default::default()
        }),
        join_tokens: Some(JoinTokens {
            worker: JoinToken::generate(&ca.cert_der).to_string(),
            manager: JoinToken::generate(&ca.cert_der).to_string(),
        }),
        root_ca_cert: ca.cert_pem.clone().into_bytes(),
        root_ca_key: ca.key_pem.clone().into_bytes(),
        ..Default::default()
    }
}

pub fn cert_expiry(c: &Cluster) -> Duration {
    c.spec
        .as_ref()
        .and_then(|s| s.ca_config.as_ref())
        .and_then(|c| c.node_cert_expiry.as_ref())
        .filter(|d| d.seconds > 0)
        .map(|d| Duration::from_secs(d.seconds as u64))
        .unwrap_or(DEFAULT_CERT_EXPIRY)
}

/// `swarm join-token ROLE [--rotate]`.
pub async fn join_token(store: &Store, role: Role, rotate: bool) -> Result<String, ControlError> {
    let c = cluster(store)?;
    if rotate {
        let ca = root_ca(&c)?;
        let mut next = c.clone();
        let tokens = next.join_tokens.get_or_insert_with(JoinTokens::default);
        let fresh = JoinToken::generate(&ca.cert_der).to_string();
        match role {
            Role::Worker => tokens.worker = fresh,
            Role::Manager => tokens.manager = fresh,
        }
        store.update(|tx| tx.update(next)).await?;
    }
    let c = cluster(store)?;
    let tokens = c.join_tokens.unwrap_or_default();
    Ok(match role {
        Role::Worker => tokens.worker,
        Role::Manager => tokens.manager,
    })
}

/// Node IDs are what `new_id` makes: lowercase letters and digits.
fn valid_node_id(id: &str) -> bool {
    (10..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// A manager's Raft ID: random, never one in use (it becomes a member when it asks the
/// leader to add it, see the Raft service's Join).
fn new_raft_id(store: &Store) -> u64 {
    let used: Vec<u64> = store.view(|t| {
        t.nodes
            .values()
            .filter_map(|n| n.manager_status.as_ref().map(|m| m.raft_id))
            .collect()
    });
    loop {
        let mut b = [0u8; 8];
        crate::tls::fill_random(&mut b);
        let id = u64::from_le_bytes(b) >> 1;
        if id != 0 && !used.contains(&id) {
            return id;
        }
    }
}

/// The managers' cluster addresses, as nodes are told them.
pub fn manager_addrs(t: &super::store::Tables) -> Vec<String> {
    t.nodes
        .values()
        .filter_map(|n| n.manager_status.as_ref().map(|m| m.addr.clone()))
        .collect()
}

fn managers(store: &Store) -> Vec<String> {
    store.view(manager_addrs)
}

/// A member's new certificate, for the role the managers want it to have now.
pub fn renew_node_certificate(
    store: &Store,
    node_id: &str,
    csr_pem: &str,
) -> Result<IssueNodeCertificateResponse, ControlError> {
    let c = cluster(store)?;
    let ca = root_ca(&c)?;
    let node = store
        .view(|t| t.nodes.get(node_id).cloned())
        .filter(|_| !c.removed_nodes.iter().any(|r| r == node_id))
        .ok_or_else(|| invalid(format!("node {node_id} is not a member of this swarm")))?;
    let desired = node.spec.as_ref().map(|s| s.desired_role).unwrap_or(0);
    let (role, raft_id) = if desired == NodeRole::Manager as i32 {
        let id = node
            .manager_status
            .as_ref()
            .map(|m| m.raft_id)
            .unwrap_or_else(|| new_raft_id(store));
        (Role::Manager, id)
    } else {
        (Role::Worker, 0)
    };
    let cert = ca
        .issue(csr_pem, node_id, role, &c.id, cert_expiry(&c))
        .map_err(|e| invalid(e.to_string()))?;
    Ok(IssueNodeCertificateResponse {
        node_id: node_id.to_string(),
        cert_pem: cert,
        roots_pem: trusted_roots(&c),
        cert_root_digest: ca.digest(),
        role: desired,
        cluster_id: c.id,
        managers: managers(store),
        raft_id,
    })
}

/// Checks the token, registers the node and signs its certificate.
pub async fn issue_node_certificate(
    store: &Store,
    req: IssueNodeCertificateRequest,
) -> Result<IssueNodeCertificateResponse, ControlError> {
    let c = cluster(store)?;
    let ca = root_ca(&c)?;
    let token = JoinToken::parse(&req.token).map_err(|e| invalid(e.to_string()))?;
    if token.ca_digest != ca.digest() {
        return Err(invalid(
            "the join token is for a different CA: it was made by another swarm, or this swarm's CA was rotated since",
        ));
    }
    let tokens = c.join_tokens.clone().unwrap_or_default();
    let secret_of = |t: &str| JoinToken::parse(t).map(|t| t.secret).unwrap_or_default();
    let role = if same_secret(&token.secret, &secret_of(&tokens.manager)) {
        Role::Manager
    } else if same_secret(&token.secret, &secret_of(&tokens.worker)) {
        Role::Worker
    } else {
        return Err(invalid(
            "the join token is not valid (it may have been rotated): get the current one with `shoal swarm join-token worker|manager` on a manager",
        ));
    };
    if !valid_node_id(&req.node_id) {
        return Err(invalid(format!(
            "node ID {:?} is not valid (10 to 64 lowercase letters and digits)",
            req.node_id
        )));
    }
    if c.removed_nodes.contains(&req.node_id) {
        return Err(invalid(format!(
            "node {} was removed from this swarm; a node that left joins again with a new ID",
            req.node_id
        )));
    }
    // what every `node ls` prints and every placement matches: checked before it is kept
    crate::spec::limits::check_hostname(&req.hostname)
        .and_then(|_| crate::spec::limits::check_node_addr(&req.addr))
        .map_err(|e| invalid(format!("the joining node's {e}")))?;
    let cert = ca
        .issue(&req.csr_pem, &req.node_id, role, &c.id, cert_expiry(&c))
        .map_err(|e| invalid(e.to_string()))?;
    let desired = match role {
        Role::Manager => NodeRole::Manager,
        Role::Worker => NodeRole::Worker,
    };
    let raft_id = if role == Role::Manager {
        new_raft_id(store)
    } else {
        0
    };
    let node = Node {
        id: req.node_id.clone(),
        spec: Some(NodeSpec {
            desired_role: desired as i32,
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: req.hostname.clone(),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Unknown as i32,
            addr: req.addr.clone(),
            ..Default::default()
        }),
        role: NodeRole::Worker as i32,
        ..Default::default()
    };
    let id = req.node_id.clone();
    store
        .update(move |tx| match tx.get::<Node>(&id) {
            Some(_) => Err(StoreError::Exists {
                kind: "node".into(),
                id,
            }),
            None => tx.create(node),
        })
        .await?;
    let managers = managers(store);
    Ok(IssueNodeCertificateResponse {
        node_id: req.node_id,
        cert_pem: cert,
        roots_pem: trusted_roots(&c),
        cert_root_digest: ca.digest(),
        role: desired as i32,
        cluster_id: c.id,
        managers,
        raft_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn joins_with_a_wrong_hostname_or_address_are_refused_before_anything_is_kept() {
        let store = Store::in_memory();
        let ca = RootCa::generate().unwrap();
        let c = new_cluster(&ca, crate::tls::DEFAULT_CERT_EXPIRY);
        let token = c.join_tokens.clone().unwrap().worker;
        store.update(|tx| tx.create(c)).await.unwrap();
        let join = |hostname: String, addr: &str| {
            let (_, csr_pem) = crate::tls::new_key_and_csr().unwrap();
            IssueNodeCertificateRequest {
                csr_pem,
                token: token.clone(),
                node_id: new_id(),
                hostname,
                addr: addr.into(),
            }
        };
        for (req, says) in [
            (
                join("h".repeat(100_000), "192.0.2.7"),
                "hostname: 100000 characters",
            ),
            (
                join("edge\n1".into(), "192.0.2.7"),
                "is not allowed in a hostname",
            ),
            (
                join("edge-1".into(), "not an addr:99999"),
                "addr \"not an addr:99999\"",
            ),
        ] {
            let e = issue_node_certificate(&store, req).await.unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
        assert!(
            store.view(|t| t.nodes.is_empty()),
            "no refused node was kept"
        );
        issue_node_certificate(&store, join("edge-1".into(), "192.0.2.7:2377"))
            .await
            .unwrap();
        assert_eq!(store.view(|t| t.nodes.len()), 1);
    }
}
