//! The manager: the replicated store and the leader-only loops that reconcile it.

pub mod raft;
pub mod store;
