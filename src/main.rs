//! shoal: a Docker-Swarm-class orchestrator in one binary. This is the thin binary: the
//! CLI parses and calls the library crates (`shoal-runtime` for images and containers).

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
