//! The embedded DNS server (hickory-server): one per task, listening on 127.0.0.11:53
//! inside the task's network namespace, so it knows whose question it answers and
//! answers only with names of that task's networks. Other names go to the host's
//! resolvers. Names come from the cluster state the managers push (`Directory::set`) and
//! are read at every question, so answers follow task changes as soon as they arrive.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, Message, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::netns::Netns;
use crate::NetError;

/// Where a task's resolver listens, as Docker's does.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// Names by network: name (lower case, no trailing dot) → addresses.
pub type Names = HashMap<String, HashMap<String, Vec<Ipv4Addr>>>;

/// The node's names and upstream resolvers, shared by every task's server.
#[derive(Clone, Default)]
pub struct Directory {
    names: Arc<RwLock<Names>>,
    upstream: Arc<Vec<SocketAddr>>,
}

/// The nameservers of a resolv.conf text.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Directory {
    /// A directory forwarding to the host's resolvers (/etc/resolv.conf).
    pub fn from_host() -> Directory {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Directory::forwarding_to(nameservers(&conf))
    }

    /// A directory forwarding names it does not have to `upstream`, in order.
    pub fn forwarding_to(upstream: Vec<SocketAddr>) -> Directory {
        Directory {
            names: Arc::default(),
            upstream: Arc::new(upstream),
        }
    }

    pub fn set(&self, names: Names) {
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// The addresses of `name` on any of `networks`; None if no network has it.
    pub fn lookup(&self, networks: &[String], name: &str) -> Option<Vec<Ipv4Addr>> {
        let names = self.names.read().unwrap_or_else(|p| p.into_inner());
        let mut found: Option<Vec<Ipv4Addr>> = None;
        for n in networks {
            if let Some(addrs) = names.get(n).and_then(|m| m.get(name)) {
                let f = found.get_or_insert_with(Vec::new);
                for a in addrs {
                    if !f.contains(a) {
                        f.push(*a);
                    }
                }
            }
        }
        found
    }

    async fn forward(&self, question: &[u8]) -> Option<Message> {
        for up in self.upstream.iter() {
            let bind: SocketAddr = if up.is_ipv4() {
                "0.0.0.0:0".parse().ok()?
            } else {
                "[::]:0".parse().ok()?
            };
            let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
                continue;
            };
            if sock.send_to(question, up).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
            {
                if let Ok(m) = Message::from_vec(&buf[..n]) {
                    return Some(m);
                }
            }
        }
        None
    }
}

/// One task's resolver.
struct TaskResolver {
    dir: Directory,
    networks: Vec<String>,
}

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut m = Metadata::response_from_request(&request.metadata);
    m.response_code = code;
    ResponseInfo::from(Header {
        metadata: m,
        counts: Default::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for TaskResolver {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let Some(q) = request.queries.queries().first() else {
            meta.response_code = ResponseCode::FormErr;
            return response
                .send_response(builder.build_no_records(meta))
                .await
                .unwrap_or_else(|_| failed(request, ResponseCode::ServFail));
        };
        let name = q.name().to_string();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(addrs) = self.dir.lookup(&self.networks, &name) {
            meta.authoritative = true;
            let records: Vec<Record> = if q.query_type() == RecordType::A {
                addrs
                    .iter()
                    .map(|a| Record::from_rdata(q.original().name().clone(), 0, RData::A(A(*a))))
                    .collect()
            } else {
                vec![] // the name exists, with IPv4 addresses only
            };
            let r = builder.build(meta, records.iter(), [], [], []);
            return response
                .send_response(r)
                .await
                .unwrap_or_else(|_| failed(request, ResponseCode::ServFail));
        }
        match self.dir.forward(request.as_slice()).await {
            Some(m) => {
                meta.response_code = m.metadata.response_code;
                let r = builder.build(meta, m.answers.iter(), m.authorities.iter(), [], []);
                response
                    .send_response(r)
                    .await
                    .unwrap_or_else(|_| failed(request, ResponseCode::ServFail))
            }
            None => {
                meta.response_code = ResponseCode::ServFail;
                response
                    .send_response(builder.build_no_records(meta))
                    .await
                    .unwrap_or_else(|_| failed(request, ResponseCode::ServFail))
            }
        }
    }
}

/// A task's running resolver; dropping it stops it.
pub struct TaskDns {
    _server: hickory_server::Server<TaskResolver>,
}

/// Starts a resolver for a task on `networks`, listening (UDP and TCP) on
/// 127.0.0.11:53 inside the task's namespace.
pub async fn serve(ns: &Netns, dir: Directory, networks: Vec<String>) -> Result<TaskDns, NetError> {
    let addr = SocketAddr::new(RESOLVER.into(), 53);
    let (udp, tcp) = crate::netns::run_in(ns, move || {
        let u = std::net::UdpSocket::bind(addr)
            .map_err(|e| NetError::io(format!("binding the resolver on {addr}"), e))?;
        let t = std::net::TcpListener::bind(addr)
            .map_err(|e| NetError::io(format!("binding the resolver on {addr}/tcp"), e))?;
        u.set_nonblocking(true)
            .and_then(|_| t.set_nonblocking(true))
            .map_err(|e| NetError::io("a non-blocking resolver socket".into(), e))?;
        Ok((u, t))
    })
    .await?;
    let udp = tokio::net::UdpSocket::from_std(udp)
        .map_err(|e| NetError::io("the resolver's UDP socket".into(), e))?;
    let tcp = tokio::net::TcpListener::from_std(tcp)
        .map_err(|e| NetError::io("the resolver's TCP socket".into(), e))?;
    let mut server = hickory_server::Server::new(TaskResolver { dir, networks });
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 64);
    Ok(TaskDns { _server: server })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_scoped_to_the_asking_task_s_networks() {
        let d = Directory::default();
        let a = Ipv4Addr::new(10, 0, 1, 2);
        let b = Ipv4Addr::new(10, 0, 2, 2);
        d.set(Names::from([
            (
                "front".to_string(),
                HashMap::from([("web".to_string(), vec![a])]),
            ),
            (
                "back".to_string(),
                HashMap::from([("db".to_string(), vec![b])]),
            ),
        ]));
        assert_eq!(d.lookup(&["front".into()], "web"), Some(vec![a]));
        assert_eq!(
            d.lookup(&["front".into()], "db"),
            None,
            "db is not on front"
        );
        assert_eq!(
            d.lookup(&["front".into(), "back".into()], "db"),
            Some(vec![b])
        );
    }

    #[test]
    fn upstream_resolvers_come_from_resolv_conf() {
        let conf = "# x\nnameserver 10.1.2.3\nsearch example\nnameserver ::1\nnameserver junk\n";
        let ns = nameservers(conf);
        assert_eq!(ns.len(), 2);
        assert_eq!(ns[0], "10.1.2.3:53".parse().unwrap());
    }
}
