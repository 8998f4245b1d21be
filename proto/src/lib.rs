//! shoal-proto: the API. Objects the managers store (nodes, services, tasks, networks,
//! secrets, configs, the cluster), the control API the CLI calls, the dispatcher API the
//! agents call, and the Raft transport, all generated from `proto/shoal/v1/*.proto` at
//! build time, plus small helpers on the generated types.

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

pub use v1::*;

impl TaskState {
    /// Swarm's word for the state, as `service ps` prints it ("Running", "Failed", …).
    pub fn display(self) -> &'static str {
        match self {
            TaskState::New => "New",
            TaskState::Pending => "Pending",
            TaskState::Assigned => "Assigned",
            TaskState::Accepted => "Accepted",
            TaskState::Preparing => "Preparing",
            TaskState::Ready => "Ready",
            TaskState::Starting => "Starting",
            TaskState::Running => "Running",
            TaskState::Complete => "Complete",
            TaskState::Shutdown => "Shutdown",
            TaskState::Failed => "Failed",
            TaskState::Rejected => "Rejected",
            TaskState::Remove => "Remove",
            TaskState::Orphaned => "Orphaned",
        }
    }

    /// Whether the task has ended (it will never run again).
    pub fn is_terminal(self) -> bool {
        self as i32 >= TaskState::Complete as i32
    }
}

impl Task {
    /// The task's observed state (NEW when it has no status yet).
    pub fn observed_state(&self) -> TaskState {
        self.status
            .as_ref()
            .and_then(|s| TaskState::try_from(s.state).ok())
            .unwrap_or(TaskState::New)
    }
}

impl update_status::State {
    /// An update or a rollback is replacing tasks.
    pub fn is_rolling(self) -> bool {
        matches!(self, Self::Updating | Self::RollbackStarted)
    }

    /// An update or a rollback stopped half-way (by a failure).
    pub fn is_paused(self) -> bool {
        matches!(self, Self::Paused | Self::RollbackPaused)
    }
}

impl Task {
    /// Whether it may still run: its desired state is at most COMPLETE (a task told to
    /// shut down, or to go, never starts again). Its secrets and configs matter only
    /// while it may.
    pub fn may_run(&self) -> bool {
        self.desired_state <= TaskState::Complete as i32
    }
}

impl Service {
    /// The state of its update, when one was ever started.
    pub fn update_state(&self) -> Option<update_status::State> {
        self.update_status
            .as_ref()
            .and_then(|u| update_status::State::try_from(u.state).ok())
    }

    /// The service's mode, as its spec says.
    pub fn mode(&self) -> Option<&service_spec::Mode> {
        self.spec.as_ref().and_then(|x| x.mode.as_ref())
    }
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "****" };
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .finish()
    }
}

impl std::fmt::Debug for FileVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileVersion")
            .field("version", &self.version)
            .field("data", &format_args!("<{} bytes hidden>", self.data.len()))
            .finish()
    }
}

impl std::fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSpec")
            .field("annotations", &self.annotations)
            .field("data", &format_args!("<{} bytes hidden>", self.data.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn states_keep_swarmkit_order_and_values() {
        let order = [
            TaskState::New,
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Accepted,
            TaskState::Preparing,
            TaskState::Ready,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Complete,
            TaskState::Shutdown,
            TaskState::Failed,
            TaskState::Rejected,
            TaskState::Remove,
            TaskState::Orphaned,
        ];
        assert!(order.windows(2).all(|w| (w[0] as i32) < (w[1] as i32)));
        assert_eq!(
            (TaskState::Running as i32, TaskState::Orphaned as i32),
            (512, 832)
        );
        assert!(TaskState::Failed.is_terminal() && !TaskState::Running.is_terminal());
        assert_eq!(TaskState::Running.display(), "Running");
    }

    #[test]
    fn objects_round_trip() {
        let svc = Service {
            id: "s1".into(),
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: "web".into(),
                    ..Default::default()
                }),
                mode: Some(service_spec::Mode::Replicated(ReplicatedService {
                    replicas: 3,
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let o = StoreObject {
            object: Some(store_object::Object::Service(svc.clone())),
        };
        let back = StoreObject::decode(o.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.object, Some(store_object::Object::Service(svc)));
    }
}
