//! The daemon's gRPC services on its Unix socket: `Swarm` (init, leave, info), `Control`
//! (services, tasks, nodes, logs) and `Dispatcher` (for this node's agent). They convert
//! between the wire and the manager's logic, nothing more.

pub mod client;
pub mod cluster;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shoal_proto::control_server::Control;
use shoal_proto::dispatcher_server::Dispatcher as DispatcherApi;
use shoal_proto::swarm_server::Swarm;
use shoal_proto::*;
use tonic::{Request, Response, Status};

use crate::daemon::Daemon;
use crate::manager::control::{self as ctl, ControlError};
use crate::manager::node::Manager;

pub const NOT_MANAGER: &str = "This node is not a swarm manager. Use \"shoal swarm init\" or \"shoal swarm join\" to connect this node to swarm and try again.";

pub(crate) fn status(e: ControlError) -> Status {
    match e {
        ControlError::Invalid(m) => Status::invalid_argument(m),
        ControlError::NotFound { .. } => Status::not_found(e.to_string()),
        ControlError::Ambiguous { .. } => Status::invalid_argument(e.to_string()),
        ControlError::Store(s) => match s {
            crate::manager::store::StoreError::Proposal(m) => Status::unavailable(m),
            crate::manager::store::StoreError::NameInUse { .. }
            | crate::manager::store::StoreError::Exists { .. } => {
                Status::already_exists(s.to_string())
            }
            crate::manager::store::StoreError::NotFound { .. } => Status::not_found(s.to_string()),
            s => Status::failed_precondition(s.to_string()),
        },
    }
}

#[derive(Clone)]
pub struct Api {
    pub daemon: Arc<Daemon>,
}

impl Api {
    fn manager(&self) -> Result<Arc<Manager>, Status> {
        self.daemon
            .manager()
            .ok_or_else(|| Status::failed_precondition(NOT_MANAGER))
    }
}

#[tonic::async_trait]
impl Swarm for Api {
    async fn init(&self, req: Request<SwarmInitRequest>) -> Result<Response<SwarmInfo>, Status> {
        self.daemon
            .init(req.into_inner())
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(self.daemon.info()))
    }
    async fn join(&self, req: Request<SwarmJoinRequest>) -> Result<Response<SwarmInfo>, Status> {
        self.daemon
            .join(req.into_inner())
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(self.daemon.info()))
    }
    async fn join_token(
        &self,
        req: Request<JoinTokenRequest>,
    ) -> Result<Response<JoinTokenResponse>, Status> {
        let r = req.into_inner();
        let (token, manager_addr) = self
            .daemon
            .join_token(&r.role, r.rotate)
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(JoinTokenResponse {
            token,
            manager_addr,
        }))
    }
    async fn leave(&self, req: Request<SwarmLeaveRequest>) -> Result<Response<Empty>, Status> {
        self.daemon
            .leave(req.into_inner().force)
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(Empty {}))
    }
    async fn info(&self, _req: Request<Empty>) -> Result<Response<SwarmInfo>, Status> {
        Ok(Response::new(self.daemon.info()))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Control for Api {
    type ServiceLogsStream = BoxStream<LogMessage>;

    async fn get_node(&self, req: Request<GetRequest>) -> Result<Response<Node>, Status> {
        let m = self.manager()?;
        m.store
            .view(|t| ctl::find(&t.nodes, &req.get_ref().id_or_name))
            .map(Response::new)
            .map_err(status)
    }
    async fn list_nodes(
        &self,
        _req: Request<ListRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let m = self.manager()?;
        Ok(Response::new(ListNodesResponse {
            nodes: m.store.view(|t| t.nodes.values().cloned().collect()),
        }))
    }
    async fn update_node(
        &self,
        _req: Request<UpdateNodeRequest>,
    ) -> Result<Response<Node>, Status> {
        Err(Status::unimplemented(
            "node update comes with multi-node clusters",
        ))
    }
    async fn remove_node(&self, _req: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented(
            "node rm comes with multi-node clusters",
        ))
    }
    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        let m = self.manager()?;
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("no service spec"))?;
        ctl::create_service(&m.store, spec)
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn get_service(&self, req: Request<GetRequest>) -> Result<Response<Service>, Status> {
        let m = self.manager()?;
        m.store
            .view(|t| ctl::find(&t.services, &req.get_ref().id_or_name))
            .map(Response::new)
            .map_err(status)
    }
    async fn update_service(
        &self,
        req: Request<UpdateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        let m = self.manager()?;
        let r = req.into_inner();
        let spec = r.spec.unwrap_or_default();
        ctl::update_service(&m.store, &r.id_or_name, r.version, spec, r.rollback)
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn remove_service(&self, req: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
        let m = self.manager()?;
        ctl::remove_service(&m.store, &req.get_ref().id_or_name)
            .await
            .map_err(status)?;
        Ok(Response::new(Empty {}))
    }
    async fn list_services(
        &self,
        _req: Request<ListRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let m = self.manager()?;
        let (services, (running, desired)) = m.store.view(|t| {
            (
                t.services.values().cloned().collect(),
                ctl::replica_counts(t),
            )
        });
        Ok(Response::new(ListServicesResponse {
            services,
            running: running.into_iter().collect(),
            desired: desired.into_iter().collect(),
        }))
    }
    async fn get_task(&self, req: Request<GetRequest>) -> Result<Response<Task>, Status> {
        let m = self.manager()?;
        m.store
            .view(|t| ctl::find(&t.tasks, &req.get_ref().id_or_name))
            .map(Response::new)
            .map_err(status)
    }
    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let m = self.manager()?;
        let tasks = m
            .store
            .view(|t| ctl::list_tasks(t, &req.get_ref().filters))
            .map_err(status)?;
        Ok(Response::new(ListTasksResponse { tasks }))
    }
    async fn get_cluster(&self, _req: Request<GetRequest>) -> Result<Response<Cluster>, Status> {
        let m = self.manager()?;
        m.store
            .view(|t| t.clusters.values().next().cloned())
            .map(|c| Response::new(ctl::without_secrets(c)))
            .ok_or_else(|| Status::not_found("no cluster"))
    }
    async fn update_cluster(
        &self,
        req: Request<UpdateClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        let m = self.manager()?;
        let r = req.into_inner();
        ctl::update_cluster(&m.store, r.version, r.spec.unwrap_or_default())
            .await
            .map(|c| Response::new(ctl::without_secrets(c)))
            .map_err(status)
    }
    async fn service_logs(
        &self,
        req: Request<ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        let m = self.manager()?;
        let r = req.into_inner();
        // the events start where the read ends: no task that starts in between is missed
        let (found, events) =
            m.store
                .view_and_watch(|t| match ctl::find(&t.services, &r.service_or_task) {
                    Ok(s) => Ok((
                        t.tasks
                            .values()
                            .filter(|x| x.service_id == s.id)
                            .cloned()
                            .collect::<Vec<_>>(),
                        Some(s.id),
                    )),
                    Err(e) => ctl::find(&t.tasks, &r.service_or_task)
                        .map(|x| (vec![x], None))
                        .map_err(|_| e),
                });
        let (tasks, service) = found.map_err(status)?;
        let watch = service.map(|id| (id, m.store.clone(), events));
        let rx = self.daemon.task_logs(tasks, r.follow, r.tail, watch);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[tonic::async_trait]
impl DispatcherApi for Api {
    type SessionStream = BoxStream<SessionMessage>;
    type AssignmentsStream = BoxStream<AssignmentsMessage>;

    async fn session(
        &self,
        req: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.manager()?.dispatcher.session(req).await
    }
    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.manager()?.dispatcher.heartbeat(req).await
    }
    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        self.manager()?.dispatcher.update_task_status(req).await
    }
    async fn assignments(
        &self,
        req: Request<AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        self.manager()?.dispatcher.assignments(req).await
    }
    async fn publish_logs(
        &self,
        req: Request<tonic::Streaming<PublishLogsMessage>>,
    ) -> Result<Response<PublishLogsResponse>, Status> {
        self.manager()?.dispatcher.publish_logs(req).await
    }
}
