//! The daemon's gRPC services on its Unix socket: `Swarm` (init, leave, info), `Control`
//! (services, tasks, nodes, logs) and `Dispatcher` (for this node's agent), and on the
//! cluster port (`cluster.rs`). They convert between the wire and the node's or the
//! manager's logic, and pass a follower's calls to the leader, nothing more.

pub mod cluster;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shoal_proto::control_client::ControlClient;
use shoal_proto::control_server::Control;
use shoal_proto::dispatcher_server::Dispatcher as DispatcherApi;
use shoal_proto::swarm_server::Swarm;
use shoal_proto::*;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::manager::control as ctl;
use crate::manager::error::find;
use crate::manager::files;
use crate::manager::membership;
use crate::manager::node::Manager;
use crate::node::{Daemon, NOT_MANAGER};

pub(crate) use crate::manager::error::grpc_status as status;

#[derive(Clone)]
pub struct Api {
    pub daemon: Arc<Daemon>,
}

pub const NO_LEADER: &str =
    "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";

impl Api {
    fn manager(&self) -> Result<Arc<Manager>, Status> {
        self.daemon
            .manager()
            .ok_or_else(|| Status::failed_precondition(NOT_MANAGER))
    }

    /// On a follower: a channel to the leader (with this manager's certificate), so
    /// that every control call, reads included, is served by the leader and is
    /// linearizable. None on the leader itself.
    pub(crate) async fn leader_channel(&self) -> Result<Option<Channel>, Status> {
        let m = self.manager()?;
        if m.is_leader() {
            return Ok(None);
        }
        let addr = m
            .leader_addr()
            .ok_or_else(|| Status::unavailable(NO_LEADER))?;
        self.daemon
            .channel_to(&addr)
            .map(Some)
            .map_err(|e| Status::unavailable(format!("the leader at {addr}: {e}")))
    }

    /// How a create or an update reaches registries: with this daemon's credentials and
    /// insecure registries, and the client's credentials when it sent them.
    fn image_options(
        &self,
        no_resolve: bool,
        auth: Option<RegistryCredential>,
    ) -> crate::manager::images::ImageOptions {
        crate::manager::images::ImageOptions {
            resolve: !no_resolve,
            pull: self.daemon.runtime.config().pull.clone(),
            auth,
        }
    }

    /// The dispatcher runs on the leader only; agents elsewhere are told to go there.
    fn leading_dispatcher(&self) -> Result<Arc<Manager>, Status> {
        let m = self.manager()?;
        if m.is_leader() {
            return Ok(m);
        }
        Err(Status::unavailable(match m.leader_addr() {
            Some(a) => format!("not the leader: the leader is at {a}"),
            None => NO_LEADER.into(),
        }))
    }
}

/// On a follower, sends a list call to the leader and passes its stream on.
macro_rules! on_leader_stream {
    ($self:ident, $req:ident, $method:ident) => {
        if let Some(ch) = $self.leader_channel().await? {
            let s = ControlClient::new(ch)
                .$method($req.into_inner())
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(s)));
        }
    };
}

/// How much of a list one message carries, encoded: far below what a client takes in
/// one message (4 MiB), even with one object more (at most `store::MAX_OBJECT_BYTES`).
const LIST_CHUNK_BYTES: usize = 1 << 20;

/// A list as a stream of messages of about [`LIST_CHUNK_BYTES`] each (at least one, so
/// that an empty list still answers), each made by `wrap` from its part.
fn in_chunks<T: prost::Message, R: Send + 'static>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> R,
) -> BoxStream<R> {
    let mut out = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0;
    for x in items {
        let n = x.encoded_len();
        if !part.is_empty() && bytes + n > LIST_CHUNK_BYTES {
            out.push(Ok(wrap(std::mem::take(&mut part))));
            bytes = 0;
        }
        bytes += n;
        part.push(x);
    }
    if !part.is_empty() || out.is_empty() {
        out.push(Ok(wrap(part)));
    }
    Box::pin(futures::stream::iter(out))
}

/// On a follower, sends the call to the leader and returns its answer.
macro_rules! on_leader {
    ($self:ident, $req:ident, $method:ident) => {
        if let Some(ch) = $self.leader_channel().await? {
            return ControlClient::new(ch).$method($req.into_inner()).await;
        }
    };
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
    async fn attach_container(
        &self,
        req: Request<AttachContainerRequest>,
    ) -> Result<Response<AttachContainerResponse>, Status> {
        let r = req.into_inner();
        let (id, n) = self
            .daemon
            .attach_container(r.container_id, r.networks)
            .await
            .map_err(passed_on)?;
        Ok(Response::new(AttachContainerResponse {
            attachment_id: id,
            netns: n.netns.display().to_string(),
            resolv_conf: n.resolv_conf.display().to_string(),
        }))
    }
    async fn detach_container(
        &self,
        req: Request<DetachContainerRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.daemon
            .detach_container(req.into_inner().attachment_id)
            .await
            .map_err(passed_on)?;
        Ok(Response::new(Empty {}))
    }
}

/// A refusal the managers made, passed on as it came (a spec problem keeps its fields);
/// any other failure as a failed precondition.
fn passed_on(e: anyhow::Error) -> Status {
    match e.downcast::<Status>() {
        Ok(s) => s,
        Err(e) => Status::failed_precondition(format!("{e:#}")),
    }
}

/// A node as the leader sees it now: which manager leads (Raft), and whether a manager
/// is reachable (its node answers heartbeats).
fn manager_view(m: &Manager, mut n: Node) -> Node {
    let leader = m.raft.metrics().borrow().current_leader;
    let ready = n
        .status
        .as_ref()
        .is_some_and(|s| s.state == NodeState::Ready as i32);
    if let Some(ms) = n.manager_status.as_mut() {
        ms.leader = Some(ms.raft_id) == leader;
        ms.reachability = if ready || ms.leader {
            Reachability::Reachable
        } else {
            Reachability::Unreachable
        } as i32;
    }
    n
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Control for Api {
    type ServiceLogsStream = BoxStream<LogMessage>;
    type ListNodesStream = BoxStream<ListNodesResponse>;
    type ListServicesStream = BoxStream<ListServicesResponse>;
    type ListTasksStream = BoxStream<ListTasksResponse>;
    type ListNetworksStream = BoxStream<ListNetworksResponse>;
    type ListSecretsStream = BoxStream<ListSecretsResponse>;
    type ListConfigsStream = BoxStream<ListConfigsResponse>;

    async fn get_node(&self, req: Request<GetRequest>) -> Result<Response<Node>, Status> {
        on_leader!(self, req, get_node);
        let m = self.manager()?;
        m.store
            .view(|t| find(&t.nodes, &req.get_ref().id_or_name))
            .map(|n| Response::new(manager_view(&m, n)))
            .map_err(status)
    }
    async fn list_nodes(
        &self,
        req: Request<ListRequest>,
    ) -> Result<Response<Self::ListNodesStream>, Status> {
        on_leader_stream!(self, req, list_nodes);
        let m = self.manager()?;
        let nodes = m
            .store
            .view(|t| t.nodes.values().cloned().collect::<Vec<_>>());
        let nodes = nodes.into_iter().map(|n| manager_view(&m, n)).collect();
        Ok(Response::new(in_chunks(nodes, |nodes| ListNodesResponse {
            nodes,
        })))
    }
    async fn update_node(&self, req: Request<UpdateNodeRequest>) -> Result<Response<Node>, Status> {
        on_leader!(self, req, update_node);
        let m = self.manager()?;
        let r = req.into_inner();
        let spec = r.spec.unwrap_or_default();
        membership::update_node(&m, &r.id_or_name, r.version, spec, r.force)
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn remove_node(&self, req: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
        on_leader!(self, req, remove_node);
        let m = self.manager()?;
        let r = req.into_inner();
        membership::remove_node(&m, &r.id_or_name, r.force)
            .await
            .map_err(status)?;
        Ok(Response::new(Empty {}))
    }
    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        on_leader!(self, req, create_service);
        let m = self.manager()?;
        let r = req.into_inner();
        let images = self.image_options(r.no_resolve_image, r.registry_auth);
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("no service spec"))?;
        ctl::create_service(&m.store, spec, &images)
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn get_service(&self, req: Request<GetRequest>) -> Result<Response<Service>, Status> {
        on_leader!(self, req, get_service);
        let m = self.manager()?;
        m.store
            .view(|t| {
                find(&t.services, &req.get_ref().id_or_name).map(|mut s| {
                    crate::manager::revisions::fill(t, &mut s);
                    ctl::answer(s)
                })
            })
            .map(Response::new)
            .map_err(status)
    }
    async fn update_service(
        &self,
        req: Request<UpdateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        on_leader!(self, req, update_service);
        let m = self.manager()?;
        let r = req.into_inner();
        let change = if r.rollback {
            ctl::Change::Rollback {
                to_revision: (r.to_revision > 0).then_some(r.to_revision),
            }
        } else {
            ctl::Change::Spec(Box::new(r.spec.unwrap_or_default()))
        };
        let images = self.image_options(r.no_resolve_image, r.registry_auth);
        ctl::update_service(&m.store, &r.id_or_name, r.version, change, &images)
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn remove_service(&self, req: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
        on_leader!(self, req, remove_service);
        let m = self.manager()?;
        ctl::remove_service(&m.store, &req.get_ref().id_or_name)
            .await
            .map_err(status)?;
        Ok(Response::new(Empty {}))
    }
    async fn list_services(
        &self,
        req: Request<ListRequest>,
    ) -> Result<Response<Self::ListServicesStream>, Status> {
        on_leader_stream!(self, req, list_services);
        let m = self.manager()?;
        let (services, (running, desired)) = m.store.view(|t| {
            (
                t.services.values().cloned().map(ctl::answer).collect(),
                ctl::replica_counts(t),
            )
        });
        // each part with the counts of its own services
        let count = |m: &std::collections::HashMap<String, u64>, part: &[Service]| {
            part.iter()
                .filter_map(|s| m.get(&s.id).map(|n| (s.id.clone(), *n)))
                .collect()
        };
        Ok(Response::new(in_chunks(services, move |services| {
            ListServicesResponse {
                running: count(&running, &services),
                desired: count(&desired, &services),
                services,
            }
        })))
    }
    async fn get_task(&self, req: Request<GetRequest>) -> Result<Response<Task>, Status> {
        on_leader!(self, req, get_task);
        let m = self.manager()?;
        m.store
            .view(|t| find(&t.tasks, &req.get_ref().id_or_name))
            .map(Response::new)
            .map_err(status)
    }
    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<Self::ListTasksStream>, Status> {
        on_leader_stream!(self, req, list_tasks);
        let m = self.manager()?;
        let tasks = m
            .store
            .view(|t| ctl::list_tasks(t, &req.get_ref().filters))
            .map_err(status)?;
        Ok(Response::new(in_chunks(tasks, |tasks| ListTasksResponse {
            tasks,
        })))
    }
    async fn create_network(
        &self,
        req: Request<CreateNetworkRequest>,
    ) -> Result<Response<Network>, Status> {
        on_leader!(self, req, create_network);
        let m = self.manager()?;
        let spec = req.into_inner().spec.unwrap_or_default();
        crate::manager::network::create_network(&m.store, spec)
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn get_network(&self, req: Request<GetRequest>) -> Result<Response<Network>, Status> {
        on_leader!(self, req, get_network);
        let m = self.manager()?;
        m.store
            .view(|t| find(&t.networks, &req.get_ref().id_or_name))
            .map(Response::new)
            .map_err(status)
    }
    async fn list_networks(
        &self,
        req: Request<ListRequest>,
    ) -> Result<Response<Self::ListNetworksStream>, Status> {
        on_leader_stream!(self, req, list_networks);
        let m = self.manager()?;
        let networks = m.store.view(|t| t.networks.values().cloned().collect());
        Ok(Response::new(in_chunks(networks, |networks| {
            ListNetworksResponse { networks }
        })))
    }
    async fn remove_network(&self, req: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
        on_leader!(self, req, remove_network);
        let m = self.manager()?;
        crate::manager::network::remove_network(&m.store, &req.get_ref().id_or_name)
            .await
            .map_err(status)?;
        Ok(Response::new(Empty {}))
    }
    async fn create_secret(
        &self,
        req: Request<CreateSecretRequest>,
    ) -> Result<Response<Secret>, Status> {
        on_leader!(self, req, create_secret);
        let m = self.manager()?;
        let secret = Secret {
            spec: req.into_inner().spec,
            ..Default::default()
        };
        files::create(&m.store, secret)
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn get_secret(&self, req: Request<GetRequest>) -> Result<Response<Secret>, Status> {
        on_leader!(self, req, get_secret);
        let m = self.manager()?;
        files::get(&m.store, &req.get_ref().id_or_name)
            .map(Response::new)
            .map_err(status)
    }
    async fn list_secrets(
        &self,
        req: Request<ListRequest>,
    ) -> Result<Response<Self::ListSecretsStream>, Status> {
        on_leader_stream!(self, req, list_secrets);
        let m = self.manager()?;
        Ok(Response::new(in_chunks(files::list(&m.store), |secrets| {
            ListSecretsResponse { secrets }
        })))
    }
    async fn remove_secret(&self, req: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
        on_leader!(self, req, remove_secret);
        let m = self.manager()?;
        files::remove::<Secret>(&m.store, &req.get_ref().id_or_name)
            .await
            .map_err(status)?;
        Ok(Response::new(Empty {}))
    }
    async fn create_config(
        &self,
        req: Request<CreateConfigRequest>,
    ) -> Result<Response<Config>, Status> {
        on_leader!(self, req, create_config);
        let m = self.manager()?;
        let config = Config {
            spec: req.into_inner().spec,
            ..Default::default()
        };
        files::create(&m.store, config)
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn get_config(&self, req: Request<GetRequest>) -> Result<Response<Config>, Status> {
        on_leader!(self, req, get_config);
        let m = self.manager()?;
        files::get(&m.store, &req.get_ref().id_or_name)
            .map(Response::new)
            .map_err(status)
    }
    async fn list_configs(
        &self,
        req: Request<ListRequest>,
    ) -> Result<Response<Self::ListConfigsStream>, Status> {
        on_leader_stream!(self, req, list_configs);
        let m = self.manager()?;
        Ok(Response::new(in_chunks(files::list(&m.store), |configs| {
            ListConfigsResponse { configs }
        })))
    }
    async fn remove_config(&self, req: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
        on_leader!(self, req, remove_config);
        let m = self.manager()?;
        files::remove::<Config>(&m.store, &req.get_ref().id_or_name)
            .await
            .map_err(status)?;
        Ok(Response::new(Empty {}))
    }
    async fn update_secret(
        &self,
        req: Request<UpdateSecretRequest>,
    ) -> Result<Response<UpdateFileResponse>, Status> {
        on_leader!(self, req, update_secret);
        let r = req.into_inner();
        let spec = r.spec.unwrap_or_default();
        let (what, labels_set) = (r.id_or_name, r.labels_set);
        let u = (r.version, spec.annotations, spec.data);
        self.update_file::<Secret>(&what, u, labels_set).await
    }
    async fn update_config(
        &self,
        req: Request<UpdateConfigRequest>,
    ) -> Result<Response<UpdateFileResponse>, Status> {
        on_leader!(self, req, update_config);
        let r = req.into_inner();
        let spec = r.spec.unwrap_or_default();
        let (what, labels_set) = (r.id_or_name, r.labels_set);
        let u = (r.version, spec.annotations, spec.data);
        self.update_file::<Config>(&what, u, labels_set).await
    }
    async fn get_cluster(&self, req: Request<GetRequest>) -> Result<Response<Cluster>, Status> {
        on_leader!(self, req, get_cluster);
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
        on_leader!(self, req, update_cluster);
        let m = self.manager()?;
        let r = req.into_inner();
        if r.rotate_ca {
            let ca = match (r.ca_cert_pem.is_empty(), r.ca_key_pem.is_empty()) {
                (true, true) => crate::tls::RootCa::generate(),
                (false, false) => crate::tls::RootCa::from_pem(&r.ca_cert_pem, &r.ca_key_pem),
                _ => {
                    return Err(Status::invalid_argument(
                        "--ca-cert and --ca-key go together: give both or neither",
                    ))
                }
            }
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
            return crate::manager::ca::rotate_ca(&m.store, ca)
                .await
                .map(|c| Response::new(ctl::without_secrets(c)))
                .map_err(status);
        }
        ctl::update_cluster(
            &m.store,
            r.version,
            r.spec.unwrap_or_default(),
            r.rotate_dek,
        )
        .await
        .map(|c| Response::new(ctl::without_secrets(c)))
        .map_err(status)
    }
    async fn service_logs(
        &self,
        req: Request<ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        if let Some(ch) = self.leader_channel().await? {
            let s = ControlClient::new(ch)
                .service_logs(req.into_inner())
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(s)));
        }
        let m = self.manager()?;
        let r = req.into_inner();
        // the events start where the read ends: no task that starts in between is missed
        let (found, events) =
            m.store
                .view_and_watch(|t| match find(&t.services, &r.service_or_task) {
                    Ok(s) => Ok((
                        t.tasks_of_service(&s.id).cloned().collect::<Vec<_>>(),
                        Some(s.id),
                    )),
                    Err(e) => find(&t.tasks, &r.service_or_task)
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
        self.leading_dispatcher()?.dispatcher.session(req).await
    }
    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.leading_dispatcher()?.dispatcher.heartbeat(req).await
    }
    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        self.leading_dispatcher()?
            .dispatcher
            .update_task_status(req)
            .await
    }
    async fn assignments(
        &self,
        req: Request<AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        self.leading_dispatcher()?.dispatcher.assignments(req).await
    }
    async fn publish_logs(
        &self,
        req: Request<tonic::Streaming<PublishLogsMessage>>,
    ) -> Result<Response<PublishLogsResponse>, Status> {
        self.leading_dispatcher()?
            .dispatcher
            .publish_logs(req)
            .await
    }
    async fn attach_network(
        &self,
        req: Request<AttachNetworkRequest>,
    ) -> Result<Response<AttachNetworkResponse>, Status> {
        self.leading_dispatcher()?
            .dispatcher
            .attach_network(req)
            .await
    }
    async fn detach_network(
        &self,
        req: Request<DetachNetworkRequest>,
    ) -> Result<Response<DetachNetworkResponse>, Status> {
        self.leading_dispatcher()?
            .dispatcher
            .detach_network(req)
            .await
    }
}

impl Api {
    /// `secret update` / `config update`: `u` is the meta version read, the annotations
    /// (their labels replace the object's when `labels_set`) and the new data (none when
    /// empty).
    async fn update_file<T: files::FileObject>(
        &self,
        what: &str,
        u: (u64, Option<Annotations>, Vec<u8>),
        labels_set: bool,
    ) -> Result<Response<UpdateFileResponse>, Status> {
        let m = self.manager()?;
        let (version, annotations, data) = u;
        let a = annotations.unwrap_or_default();
        let data = (!data.is_empty()).then_some(data);
        let labels = labels_set.then_some(a.labels);
        let u = files::update::<T>(&m.store, what, version, &a.name, labels, data)
            .await
            .map_err(status)?;
        Ok(Response::new(UpdateFileResponse {
            id: u.object.id().to_string(),
            data_version: files::FileObject::version(&u.object),
            rolled: u.rolled,
        }))
    }
}
