//! The interface the agent drives a task's container through, with the real
//! implementation ([`ContainerRuntime`]) and a fake one for scale tests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use super::spec::ContainerSpec;
use super::{ContainerError, ContainerRuntime, Exit, Status};
use crate::image::RegistryAuth;

/// What the agent needs to know of a container.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerStatus {
    pub status: Status,
    pub pid: Option<i32>,
    pub exit: Option<Exit>,
    pub healthy: Option<bool>,
}

/// prepare → start → wait, and shutdown/remove at any point; every call is idempotent
/// enough to be retried after a daemon restart.
pub trait Executor: Send + Sync + 'static {
    /// Makes the container, pulling its image if it is missing: with `auth` when given
    /// (a service's `--with-registry-auth`), else with the node's own credentials.
    fn prepare(
        &self,
        id: &str,
        spec: &ContainerSpec,
        auth: Option<&RegistryAuth>,
    ) -> impl Future<Output = Result<(), ContainerError>> + Send;
    /// Starts the container (again a no-op if it runs); returns its pid when known.
    fn start(&self, id: &str) -> impl Future<Output = Result<Option<i32>, ContainerError>> + Send;
    fn wait(&self, id: &str) -> impl Future<Output = Result<Exit, ContainerError>> + Send;
    fn shutdown(
        &self,
        id: &str,
        grace: Option<Duration>,
    ) -> impl Future<Output = Result<(), ContainerError>> + Send;
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), ContainerError>> + Send;
    fn inspect(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<ContainerStatus, ContainerError>> + Send;
    /// The container's health as it changes, when it has a health check.
    fn health(&self, _id: &str) -> Option<watch::Receiver<super::health::Health>> {
        None
    }
}

impl Executor for ContainerRuntime {
    fn health(&self, id: &str) -> Option<watch::Receiver<super::health::Health>> {
        self.watch_health(id)
    }
    async fn prepare(
        &self,
        id: &str,
        spec: &ContainerSpec,
        auth: Option<&RegistryAuth>,
    ) -> Result<(), ContainerError> {
        if self.dir(id).join("container.json").is_file() {
            return Ok(()); // prepared before a restart
        }
        let mut pull = self.config().pull.clone();
        if let Some(a) = auth {
            pull.auth = Some(a.clone());
        }
        self.ensure_image(&spec.image, &pull).await?;
        self.prepare(id, spec).await.map(|_| ())
    }
    async fn start(&self, id: &str) -> Result<Option<i32>, ContainerError> {
        ContainerRuntime::start(self, id).await.map(Some)
    }
    async fn wait(&self, id: &str) -> Result<Exit, ContainerError> {
        ContainerRuntime::wait(self, id).await
    }
    async fn shutdown(&self, id: &str, grace: Option<Duration>) -> Result<(), ContainerError> {
        match self.inspect(id).await?.status {
            Status::Running | Status::Created => self.stop(id, grace).await.map(|_| ()),
            _ => Ok(()),
        }
    }
    async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        match ContainerRuntime::remove(self, id).await {
            Err(ContainerError::NotFound(_)) => Ok(()),
            r => r,
        }
    }
    async fn inspect(&self, id: &str) -> Result<ContainerStatus, ContainerError> {
        let i = ContainerRuntime::inspect(self, id).await?;
        Ok(ContainerStatus {
            status: i.status,
            pid: i.pid,
            exit: i.exit,
            healthy: i
                .health
                .map(|h| h.status == super::health::HealthStatus::Healthy),
        })
    }
}

/// An in-memory executor: containers "run" until [`FakeExecutor::exit`] ends them or
/// they are shut down. For agent tests and simulations of thousands of nodes.
#[derive(Clone, Default)]
pub struct FakeExecutor {
    inner: Arc<Mutex<HashMap<String, FakeContainer>>>,
    /// Images whose prepare fails, to test rejections.
    pub failing_images: Arc<Mutex<Vec<String>>>,
}

struct FakeContainer {
    status: watch::Sender<(Status, Option<Exit>)>,
}

impl FakeExecutor {
    /// Ends a running container with `code`, as if its process exited.
    pub fn exit(&self, id: &str, code: i32) -> bool {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match g.get(id) {
            Some(c) if c.status.borrow().0 == Status::Running => {
                c.status.send_replace((
                    Status::Exited,
                    Some(Exit {
                        code,
                        signal: None,
                        oom: false,
                        finished_at: Utc::now(),
                        known: true,
                    }),
                ));
                true
            }
            _ => false,
        }
    }

    pub fn ids(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn get(&self, id: &str) -> Result<watch::Sender<(Status, Option<Exit>)>, ContainerError> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|c| c.status.clone())
            .ok_or_else(|| ContainerError::NotFound(id.into()))
    }
}

impl Executor for FakeExecutor {
    async fn prepare(
        &self,
        id: &str,
        spec: &ContainerSpec,
        _auth: Option<&RegistryAuth>,
    ) -> Result<(), ContainerError> {
        super::validate_id(id)?;
        if self
            .failing_images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&spec.image)
        {
            return Err(ContainerError::Image {
                image: spec.image.clone(),
                source: crate::image::StoreError::NotFound(spec.image.clone()),
            });
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(id.to_string()).or_insert_with(|| FakeContainer {
            status: watch::channel((Status::Prepared, None)).0,
        });
        Ok(())
    }
    async fn start(&self, id: &str) -> Result<Option<i32>, ContainerError> {
        let s = self.get(id)?;
        s.send_if_modified(|v| {
            let go = v.0 == Status::Prepared;
            if go {
                v.0 = Status::Running;
            }
            go
        });
        Ok(None)
    }
    async fn wait(&self, id: &str) -> Result<Exit, ContainerError> {
        let mut rx = self.get(id)?.subscribe();
        loop {
            if let Some(x) = rx.borrow_and_update().1.clone() {
                return Ok(x);
            }
            if rx.changed().await.is_err() {
                return Err(ContainerError::NotFound(id.into()));
            }
        }
    }
    async fn shutdown(&self, id: &str, _grace: Option<Duration>) -> Result<(), ContainerError> {
        let s = self.get(id)?;
        s.send_if_modified(|v| {
            let go = v.1.is_none();
            if go {
                *v = (
                    Status::Exited,
                    Some(Exit {
                        code: 143,
                        signal: Some(15),
                        oom: false,
                        finished_at: Utc::now(),
                        known: true,
                    }),
                );
            }
            go
        });
        Ok(())
    }
    async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }
    async fn inspect(&self, id: &str) -> Result<ContainerStatus, ContainerError> {
        let s = self.get(id)?;
        let (status, exit) = s.borrow().clone();
        Ok(ContainerStatus {
            status,
            pid: None,
            exit,
            healthy: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_life_cycle() {
        let f = FakeExecutor::default();
        let spec = ContainerSpec {
            image: "img".into(),
            ..Default::default()
        };
        f.prepare("t1", &spec, None).await.unwrap();
        assert_eq!(f.inspect("t1").await.unwrap().status, Status::Prepared);
        f.start("t1").await.unwrap();
        let waiter = {
            let f = f.clone();
            tokio::spawn(async move { f.wait("t1").await })
        };
        assert!(f.exit("t1", 3));
        assert_eq!(waiter.await.unwrap().unwrap().code, 3);
        assert!(!f.exit("t1", 4), "an exited container does not exit again");
        f.remove("t1").await.unwrap();
        assert!(matches!(
            f.inspect("t1").await,
            Err(ContainerError::NotFound(_))
        ));
        f.failing_images.lock().unwrap().push("bad".into());
        assert!(f
            .prepare(
                "t2",
                &ContainerSpec {
                    image: "bad".into(),
                    ..Default::default()
                },
                None
            )
            .await
            .is_err());
        assert!(f.prepare("-bad-id", &spec, None).await.is_err());
    }
}
