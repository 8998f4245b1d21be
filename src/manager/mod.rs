//! The manager: the replicated store and the leader-only loops that reconcile it.

pub mod allocator;
pub mod ca;
pub mod control;
pub mod dispatcher;
pub mod error;
pub mod ipam;
pub mod lifecycle;
pub mod membership;
pub mod network;
pub mod node;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
pub mod store;
pub mod tasks;

#[cfg(test)]
mod tests;
