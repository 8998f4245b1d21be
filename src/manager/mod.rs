//! The manager: the replicated store and the leader-only loops that reconcile it.
//!
//! - `store/`: every object, `view` / `update` (a transaction) / `watch`; `raft/`: the log.
//! - `node.rs`: one manager's life: Raft, the store, and the leader's loops started and
//!   stopped as leadership comes and goes.
//! - `control.rs`, `network.rs`, `membership.rs`: the control API's logic (the one
//!   validation is `crate::spec`'s; what only the store can tell is checked here);
//!   `error.rs`: their refusals, and finding objects by ID, name or prefix.
//! - `lifecycle.rs`: the task state machine, written once.
//! - `orchestrator/` (replicated, global, jobs, restart supervisor, task reaper),
//!   `allocator.rs` and `scheduler.rs` (one commit: allocated, then placed),
//!   `dispatcher/` (sessions, assignments, node monitor, status batches): leader-only
//!   components that talk to nothing but the store.
//! - `files.rs`: secrets and configs, and services' references to them.
//! - `images.rs`: a service's image pinned to its registry's digest (create, update).
//! - `ca.rs`, `ipam.rs`, `tasks.rs` (task helpers and the loops' `run_loop`).

pub mod allocator;
pub mod ca;
pub mod control;
pub mod dispatcher;
pub mod error;
pub mod files;
pub mod images;
pub mod ipam;
pub mod lifecycle;
pub mod membership;
pub mod network;
pub mod node;
pub mod orchestrator;
pub mod raft;
pub mod revisions;
pub mod scheduler;
pub mod store;
pub mod tasks;

#[cfg(test)]
mod tests;
