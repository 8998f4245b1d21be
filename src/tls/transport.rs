//! Mutual TLS for the cluster port (2377) with rustls, under tonic.
//!
//! The server accepts TCP, does the TLS handshake itself (in its own task, so one slow
//! peer does not hold up the others) and hands tonic a connection that carries the
//! peer's [`Identity`], read once from its verified certificate. Handlers and
//! interceptors find it as a [`Peer`] in the request's extensions; a request without a
//! `Peer` came over the local Unix socket. Client certificates are optional at the TLS
//! level because a joining node has none yet: it may call only the CA's two methods,
//! everything else checks the role (see `api::cluster`). Plaintext is never accepted:
//! the port speaks only TLS.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

use super::{identity, Identity, NodeCerts, TlsError, MANAGER_SERVER_NAME};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(m: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid(m.to_string())
}

fn roots(pem: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        store
            .add(c.map_err(|e| bad(format!("trusted roots: {e}")))?)
            .map_err(|e| bad(format!("trusted roots: {e}")))?;
    }
    if store.is_empty() {
        return Err(bad("trusted roots: no certificate"));
    }
    Ok(store)
}

fn chain_and_key(
    certs: &NodeCerts,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("node certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())
        .map_err(|e| bad(format!("node key: {e}")))?;
    Ok((chain, key))
}

/// The cluster port's TLS: our certificate, client certificates verified against the
/// roots when presented.
pub fn server_config(certs: &NodeCerts) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&certs.roots_pem)?), provider())
            .allow_unauthenticated()
            .build()
            .map_err(bad)?;
    let (chain, key) = chain_and_key(certs)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(bad)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(bad)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A node talking to a manager: the manager must hold a manager certificate of our
/// roots; we show ours.
pub fn client_config(certs: &NodeCerts) -> Result<Arc<ClientConfig>, TlsError> {
    let (chain, key) = chain_and_key(certs)?;
    h2(client_builder()?
        .with_root_certificates(roots(&certs.roots_pem)?)
        .with_client_auth_cert(chain, key)
        .map_err(bad)?)
}

type ClientBuilder = rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>;

fn client_builder() -> Result<ClientBuilder, TlsError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(bad)
}

/// gRPC speaks HTTP/2: say so in ALPN.
fn h2(mut cfg: ClientConfig) -> Result<Arc<ClientConfig>, TlsError> {
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A joining node that has checked the CA against its token: it verifies the manager
/// against that CA but has no certificate of its own yet.
pub fn bootstrap_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    h2(client_builder()?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth())
}

/// Only to fetch the CA certificate at join: the server is not verified here, because
/// what it returns is checked against the digest in the join token before anything
/// secret is sent (as Swarm does).
pub fn unverified_config() -> Result<Arc<ClientConfig>, TlsError> {
    h2(client_builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth())
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A gRPC channel to a manager's cluster port over TLS with `cfg`. Connects lazily and
/// reconnects by itself. An HTTP/2 ping every second, answered within two, finds a
/// manager whose host died (powered off: no reset ever comes) within three seconds, so
/// that calls on the channel fail instead of hanging until their own timeout (found on
/// the VM suite's guests: a follower forwarded calls to a powered-off leader for 10 s).
pub fn channel(addr: &str, cfg: Arc<ClientConfig>) -> Result<Channel, TlsError> {
    let addr = addr.to_string();
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| bad(format!("manager address {addr:?}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(30))
        .http2_keep_alive_interval(std::time::Duration::from_secs(1))
        .keep_alive_timeout(std::time::Duration::from_secs(2))
        .keep_alive_while_idle(true);
    Ok(
        ep.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let (addr, cfg) = (addr.clone(), cfg.clone());
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(MANAGER_SERVER_NAME)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

/// Who is on the other end of a cluster connection: their certificate's identity, if
/// they showed one.
#[derive(Clone, Debug)]
pub struct Peer {
    pub identity: Option<Identity>,
    pub addr: SocketAddr,
}

/// A server-side TLS connection that tells tonic who the peer is.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The server's TLS configuration; replaced when the node's certificate is renewed or
/// the CA rotates, and read at every handshake.
pub type SharedServerConfig = Arc<RwLock<Arc<ServerConfig>>>;

/// Accepts TLS connections on `listener` and yields them to tonic; failed handshakes
/// (plaintext, wrong CA) are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    cfg: SharedServerConfig,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster port: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(
                cfg.read().unwrap_or_else(|p| p.into_inner()).clone(),
            );
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                        .await;
                let tls = match handshake {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %addr, error = %e, "cluster port: TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| identity(c).ok());
                let conn = TlsConn {
                    inner: tls,
                    peer: Peer { identity, addr },
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{new_key_and_csr, Role, RootCa, DEFAULT_CERT_EXPIRY};
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;

    fn leaf(ca: &RootCa, role: Role) -> CertificateDer<'static> {
        let (_, csr) = new_key_and_csr().unwrap();
        let pem = ca
            .issue(&csr, "node1", role, "cluster1", DEFAULT_CERT_EXPIRY)
            .unwrap();
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// What the cluster port's TLS accepts, checked with the same rustls verifiers a
    /// handshake uses: a certificate of our root, as a client whatever its role, and as
    /// the server only a manager's (a worker cannot pose as a manager to another node);
    /// nothing of another root.
    #[test]
    fn issued_chains_verify_against_the_root_only_and_name_managers() {
        let ca = RootCa::generate().unwrap();
        let other = RootCa::generate().unwrap();
        let roots = Arc::new(roots(&ca.cert_pem).unwrap());
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .unwrap();
        let servers = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .unwrap();
        let manager_name = ServerName::try_from(MANAGER_SERVER_NAME).unwrap();
        let now = UnixTime::now();
        let as_client = |c: &CertificateDer<'_>| clients.verify_client_cert(c, &[], now);
        let as_server =
            |c: &CertificateDer<'_>| servers.verify_server_cert(c, &[], &manager_name, &[], now);

        let manager = leaf(&ca, Role::Manager);
        let worker = leaf(&ca, Role::Worker);
        let stranger = leaf(&other, Role::Manager);
        as_client(&manager).unwrap();
        as_client(&worker).unwrap();
        as_server(&manager).unwrap();
        let e = as_server(&worker).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                    | rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForNameContext { .. }
                    )
            ),
            "{e:?}"
        );
        // every shoal root has the same subject, so webpki finds "the" issuer by name and
        // then the signature does not hold
        for e in [
            as_client(&stranger).unwrap_err(),
            as_server(&stranger).unwrap_err(),
        ] {
            assert!(
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::BadSignature
                            | rustls::CertificateError::UnknownIssuer
                    )
                ),
                "{e:?}"
            );
        }
        // a certificate no longer in its validity: an hour's life, checked a day on
        let (_, csr) = new_key_and_csr().unwrap();
        let short = ca
            .issue(
                &csr,
                "n",
                Role::Manager,
                "c",
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
        let short = CertificateDer::from_pem_slice(short.as_bytes()).unwrap();
        let later =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs() + 86400));
        let e = clients.verify_client_cert(&short, &[], later).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired
                        | rustls::CertificateError::ExpiredContext { .. }
                )
            ),
            "{e:?}"
        );
    }
}
