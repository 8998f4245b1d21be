//! shoal: a Docker-Swarm-class orchestrator in one binary: the CLI, the daemon, the
//! manager and the agent. Images and containers are `shoal-runtime`'s, a node's networks
//! `shoal-net`'s, the API's types `shoal-proto`'s.
//!
//! Layout, from the front door down:
//! - `cli`: clap and printing; each command turns its flags into `spec` types or calls.
//! - `spec`: Docker-shaped service definitions in one place: parsers, `ServiceInput`,
//!   `ServiceEdit`, the one validation (errors name a field path), JSON views.
//! - `api`: the gRPC services on the local socket and the cluster port; they convert
//!   and forward to `node` and `manager`.
//! - `node`: the daemon, split by concern (state on disk, swarm life cycle, role, trust,
//!   links to managers, log fan-out).
//! - `manager`: the replicated store, Raft, and the leader's loops (orchestrators,
//!   allocator, scheduler, restart supervisor, task reaper, dispatcher, CA).
//! - `agent`: the worker side: one task manager per task, the node's networks.
//! - `tls`: the CA, certificates, join tokens and the mTLS transport.
//!
//! Nothing below `api` imports it; nothing in `manager` imports `node`; `spec` imports
//! neither.

mod agent;
mod api;
mod cli;
mod manager;
mod node;
mod spec;
mod tls;

fn main() -> std::process::ExitCode {
    cli::main()
}
