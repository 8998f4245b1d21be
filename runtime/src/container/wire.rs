//! The keeper's protocol: one JSON request per line on its Unix socket, one JSON
//! response per line back, one request per connection (a `wait` simply answers late).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::spec::LogConfig;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    /// Create the container from `bundle`, its stdio on the FIFOs in `dir`, its log in `dir/logs`.
    Create {
        id: String,
        bundle: PathBuf,
        dir: PathBuf,
        log: LogConfig,
    },
    Start {
        id: String,
    },
    Kill {
        id: String,
        signal: i32,
        all: bool,
    },
    Delete {
        id: String,
    },
    State {
        id: String,
    },
    List,
    /// Answers when the container has exited (at once if it has).
    Wait {
        id: String,
    },
    /// Runs a process in the container's namespaces and cgroup; answers with its exit
    /// code and the first 4 KiB of its output.
    Exec {
        id: String,
        args: Vec<String>,
        env: Vec<String>,
        uid: u32,
        gid: u32,
        timeout_ms: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Exit {
    /// The exit code, or 128 + signal for a killed process (as a shell reports it).
    pub code: i32,
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container.
    pub oom: bool,
    pub finished_at: DateTime<Utc>,
    /// False when the keeper could not see the exit itself (it was restarted while the
    /// container ran, and is no longer its parent): `code` is then meaningless.
    pub known: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeptState {
    pub id: String,
    /// created, running, stopped.
    pub status: String,
    pub pid: Option<i32>,
    pub exit: Option<Exit>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Pong {
        pid: i32,
    },
    Done,
    Created {
        pid: i32,
    },
    State(KeptState),
    List {
        containers: Vec<KeptState>,
    },
    Exited(Exit),
    Exec {
        code: i32,
        output: String,
        timed_out: bool,
    },
    Error {
        message: String,
    },
}
