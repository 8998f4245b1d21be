//! Log fan-out: the lines of the tasks that ran on this node, for `service logs`, and,
//! when followed, of its tasks that start later.

use shoal_proto::store_object::Object;
use shoal_proto::*;
use shoal_runtime::container::logs::{follow_logs, read_logs, LogQuery, Stream as LogStream};
use shoal_runtime::container::ContainerRuntime;
use tokio::sync::mpsc;

use super::Daemon;
use crate::manager::store::{Events, Store};

impl Daemon {
    /// Log lines of tasks that ran on this node. With `follow` and a service's events
    /// (`watch`), tasks that start later are followed too, until the caller goes away.
    pub fn task_logs(
        &self,
        tasks: Vec<Task>,
        follow: bool,
        tail: u64,
        watch: Option<(String, Store, Events)>,
    ) -> mpsc::Receiver<Result<LogMessage, tonic::Status>> {
        let (tx, rx) = mpsc::channel(256);
        let logs = TaskLogs {
            rt: self.runtime.clone(),
            node: self.node_id(),
            tx,
            follow,
        };
        let mut followed = std::collections::HashSet::new();
        for t in tasks.into_iter().filter(|t| t.node_id == logs.node) {
            followed.insert(t.id.clone());
            logs.spawn(t, tail);
        }
        if let (true, Some((service_id, store, mut events))) = (follow, watch) {
            tokio::spawn(async move {
                loop {
                    let ev = tokio::select! {
                        _ = logs.tx.closed() => return,
                        ev = events.recv() => ev,
                    };
                    let candidates: Vec<Task> = match ev {
                        Ok(e) if !e.restored => e
                            .changes
                            .iter()
                            .filter_map(|c| match &*c.object {
                                Object::Task(t) => Some(t.clone()),
                                _ => None,
                            })
                            .collect(),
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            store.view(|t| t.tasks_of_service(&service_id).cloned().collect())
                        }
                        Err(_) => return, // the manager stopped
                    };
                    for t in candidates {
                        // a task's logs exist once its container does
                        if t.service_id == service_id
                            && t.node_id == logs.node
                            && !followed.contains(&t.id)
                            && logs.rt.logs_dir(&t.id).exists()
                        {
                            followed.insert(t.id.clone());
                            logs.spawn(t, 0);
                        }
                    }
                }
            });
        }
        rx
    }
}

/// What one `service logs` request sends its lines through.
struct TaskLogs {
    rt: ContainerRuntime,
    node: String,
    tx: mpsc::Sender<Result<LogMessage, tonic::Status>>,
    follow: bool,
}

impl TaskLogs {
    /// Sends one task's lines (the last `tail`, or all when 0), following if asked.
    pub(super) fn spawn(&self, t: Task, tail: u64) {
        let (rt, node, tx, follow) = (
            self.rt.clone(),
            self.node.clone(),
            self.tx.clone(),
            self.follow,
        );
        tokio::spawn(async move {
            let dir = rt.logs_dir(&t.id);
            if !dir.exists() {
                return;
            }
            let q = LogQuery {
                tail: (tail > 0).then_some(tail as usize),
                ..Default::default()
            };
            let conv = |e: shoal_runtime::container::logs::LogEntry| LogMessage {
                task_id: t.id.clone(),
                node_id: node.clone(),
                stream: if e.stream == LogStream::Stdout {
                    "stdout"
                } else {
                    "stderr"
                }
                .into(),
                time_ms: e.time.timestamp_millis(),
                data: e.log.into_bytes(),
            };
            if follow {
                let exit = rt.dir(&t.id).join("exit.json");
                let tx2 = tx.clone();
                let _ = follow_logs(&dir, &q, &|| exit.exists() || tx2.is_closed(), |e| {
                    let (tx, m) = (tx.clone(), conv(e));
                    async move { tx.send(Ok(m)).await.is_ok() }
                })
                .await;
            } else if let Ok(lines) = read_logs(&dir, &q) {
                for e in lines {
                    if tx.send(Ok(conv(e))).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}
