//! shoal-net: the node's side of overlay networking. Network namespaces, and each
//! overlay built with netlink: a VXLAN device and a bridge in a namespace of the
//! network's own, a veth into each task's namespace, and forwarding and neighbour
//! entries set from cluster state (no multicast, no flood-and-learn).

pub mod dns;
pub mod lb;
pub mod netns;
pub mod overlay;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Netlink(String),
    #[error("{0}")]
    Sys(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl NetError {
    pub fn io(what: String, source: std::io::Error) -> NetError {
        NetError::Io { what, source }
    }
}
