//! The cluster's trust: a root CA, node certificates and join tokens, as Swarm has them.
//!
//! - The root CA (ECDSA P-256, 20 years) is made by `swarm init` or given as files; its
//!   certificate and key live in the cluster object in the store (so every manager can
//!   issue), never in a worker's hands.
//! - A node certificate names the node: CN = node ID, OU = `swarm-manager` or
//!   `swarm-worker`, O = cluster ID, DNS SANs = role and node ID. The CA writes the
//!   subject itself; of a CSR it uses only the public key. Default expiry 90 days.
//! - A join token is `SWMTKN-1-<digest>-<secret>`: the digest is the SHA-256 of the root
//!   certificate (DER) in base 36, 50 characters, so a joining node can check the CA it
//!   is shown before it sends anything secret; the secret (128 random bits, base 36, 25
//!   characters) says which role the node joins as.

pub mod transport;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest as _, Sha256};

pub const MANAGER_OU: &str = "swarm-manager";
pub const WORKER_OU: &str = "swarm-worker";
/// The name a node's certificate is checked against when it serves the cluster port.
pub const MANAGER_SERVER_NAME: &str = "swarm-manager";
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);
const ROOT_EXPIRY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Invalid(String),
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

fn invalid(m: impl Into<String>) -> TlsError {
    TlsError::Invalid(m.into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    pub fn ou(self) -> &'static str {
        match self {
            Role::Manager => MANAGER_OU,
            Role::Worker => WORKER_OU,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

/// What a node certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl Identity {
    /// Whether the certificate is past two thirds of its life (or expired): the time to
    /// renew it, as Swarm does, so an outage of a third of the lifetime is survived.
    pub fn due_for_renewal(&self, now: i64) -> bool {
        let life = (self.not_after - self.not_before).max(1);
        now >= self.not_before + life * 2 / 3
    }
}

/// Reads the identity out of a node certificate (DER). The chain has been verified by
/// then; this only reads the subject.
pub fn identity(der: &[u8]) -> Result<Identity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
            .unwrap_or_default()
    };
    let node_id = first(&mut subject.iter_common_name());
    let ou = first(&mut subject.iter_organizational_unit());
    let cluster_id = first(&mut subject.iter_organization());
    let role = match ou.as_str() {
        MANAGER_OU => Role::Manager,
        WORKER_OU => Role::Worker,
        _ => {
            return Err(invalid(format!(
                "certificate role {ou:?} is not a swarm role"
            )))
        }
    };
    if node_id.is_empty() {
        return Err(invalid("certificate names no node"));
    }
    Ok(Identity {
        node_id,
        role,
        cluster_id,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The SHA-256 of a certificate's DER, as the 50 base-36 digits a join token carries.
pub fn ca_digest(der: &[u8]) -> String {
    base36(&Sha256::digest(der), 50)
}

/// Big-endian bytes as a base-36 number, zero-padded to `width` digits.
fn base36(bytes: &[u8], width: usize) -> String {
    let mut n: Vec<u8> = bytes.to_vec();
    let mut digits = Vec::new();
    while n.iter().any(|b| *b != 0) {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        digits.push(char::from_digit(rem, 36).unwrap_or('0'));
    }
    while digits.len() < width {
        digits.push('0');
    }
    digits.iter().rev().collect()
}

/// A join token, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub secret: String,
}

impl JoinToken {
    /// A new token for the CA whose certificate (DER) is given.
    pub fn generate(ca_der: &[u8]) -> JoinToken {
        let mut secret = [0u8; 16];
        fill_random(&mut secret);
        JoinToken {
            ca_digest: ca_digest(ca_der),
            secret: base36(&secret, 25),
        }
    }

    pub fn parse(s: &str) -> Result<JoinToken, TlsError> {
        let bad = |why: &str| {
            invalid(format!(
                "invalid join token: {why} (a token looks like SWMTKN-1-<50 characters>-<25 characters>; get one with `shoal swarm join-token worker` on a manager)"
            ))
        };
        let parts: Vec<&str> = s.trim().split('-').collect();
        if parts.len() != 4 || parts[0] != "SWMTKN" {
            return Err(bad("it does not have the SWMTKN-1-…-… shape"));
        }
        if parts[1] != "1" {
            return Err(bad(&format!("version {:?} is not supported", parts[1])));
        }
        let b36 = |p: &str| {
            p.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        };
        if parts[2].len() != 50 || !b36(parts[2]) {
            return Err(bad("the CA digest part is not 50 base-36 characters"));
        }
        if parts[3].len() != 25 || !b36(parts[3]) {
            return Err(bad("the secret part is not 25 base-36 characters"));
        }
        Ok(JoinToken {
            ca_digest: parts[2].into(),
            secret: parts[3].into(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SWMTKN-1-{}-{}", self.ca_digest, self.secret)
    }
}

pub fn fill_random(buf: &mut [u8]) {
    use rustls::crypto::ring::default_provider;
    // the same CSPRNG rustls uses
    let _ = default_provider().secure_random.fill(buf);
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The cluster's root CA: its certificate, and its key when this process may sign.
#[derive(Clone)]
pub struct RootCa {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
}

impl RootCa {
    pub fn generate() -> Result<RootCa, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "swarm-ca");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + ROOT_EXPIRY;
        let cert = params.self_signed(&key)?;
        Ok(RootCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// An external root CA (`swarm init --ca-cert --ca-key`): it must be a CA
    /// certificate, valid now, and the key must be its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa, TlsError> {
        let der = pem_cert_der(cert_pem).map_err(|e| invalid(format!("--ca-cert: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| invalid(format!("--ca-cert: not an X.509 certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(invalid(
                "--ca-cert: the certificate is not a CA (basicConstraints CA:TRUE is missing)",
            ));
        }
        if !cert.validity().is_valid() {
            return Err(invalid(
                "--ca-cert: the certificate is expired or not yet valid",
            ));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| invalid(format!("--ca-key: not a private key in PEM: {e}")))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(invalid("--ca-key: the key does not belong to --ca-cert"));
        }
        Ok(RootCa {
            cert_pem: cert_pem.to_string(),
            cert_der: der,
            key_pem: key_pem.to_string(),
        })
    }

    pub fn digest(&self) -> String {
        ca_digest(&self.cert_der)
    }

    /// Signs a node certificate for the public key of `csr_pem`; the subject is ours.
    pub fn issue(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        expiry: Duration,
    ) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| invalid(format!("the certificate request is not valid: {e}")))?;
        let key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, role.ou());
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(role.ou().try_into()?),
            SanType::DnsName(node_id.try_into()?),
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5); // some clock skew
        params.not_after = now + expiry;
        let mut serial = [0u8; 16];
        fill_random(&mut serial);
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        Ok(params.signed_by(&csr.public_key, &issuer)?.pem())
    }
}

/// A new private key and a CSR for it (the subject is the CA's to write).
pub fn new_key_and_csr() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The first certificate of a PEM text, as DER.
pub fn pem_cert_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| format!("no PEM certificate found: {e}"))
}

/// This node's certificate, key and trusted roots, as files in the data root (Swarm's
/// names: `certificates/swarm-node.crt`, `swarm-node.key`, `swarm-root-ca.crt`).
#[derive(Clone)]
pub struct NodeCerts {
    pub cert_pem: String,
    pub key_pem: String,
    /// One root, or two while the CA rotates.
    pub roots_pem: String,
}

impl NodeCerts {
    pub fn dir(data_root: &Path) -> PathBuf {
        data_root.join("certificates")
    }

    pub fn load(data_root: &Path) -> Result<Option<NodeCerts>, TlsError> {
        let dir = Self::dir(data_root);
        let read = |n: &str| {
            let path = dir.join(n);
            std::fs::read_to_string(&path).map_err(|err| TlsError::Io { path, err })
        };
        if !dir.join("swarm-node.crt").exists() {
            return Ok(None);
        }
        Ok(Some(NodeCerts {
            cert_pem: read("swarm-node.crt")?,
            key_pem: read("swarm-node.key")?,
            roots_pem: read("swarm-root-ca.crt")?,
        }))
    }

    /// Writes the files (0600, in a 0700 directory), each replaced atomically.
    pub fn save(&self, data_root: &Path) -> Result<(), TlsError> {
        let dir = Self::dir(data_root);
        let io = |path: &Path, err| TlsError::Io {
            path: path.to_path_buf(),
            err,
        };
        shoal_runtime::files::private_dir(&dir).map_err(|e| io(&dir, e))?;
        for (name, text) in [
            ("swarm-root-ca.crt", &self.roots_pem),
            ("swarm-node.key", &self.key_pem),
            ("swarm-node.crt", &self.cert_pem),
        ] {
            let path = dir.join(name);
            shoal_runtime::files::write_atomic(&path, text.as_bytes()).map_err(|e| io(&path, e))?;
        }
        Ok(())
    }

    pub fn remove(data_root: &Path) {
        let _ = std::fs::remove_dir_all(Self::dir(data_root));
    }

    pub fn identity(&self) -> Result<Identity, TlsError> {
        identity(&pem_cert_der(&self.cert_pem).map_err(invalid)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_node_role_and_cluster() {
        let ca = RootCa::generate().unwrap();
        let (key, csr) = new_key_and_csr().unwrap();
        let pem = ca
            .issue(&csr, "node1", Role::Worker, "cluster1", DEFAULT_CERT_EXPIRY)
            .unwrap();
        let id = identity(&pem_cert_der(&pem).unwrap()).unwrap();
        assert_eq!(
            (id.node_id.as_str(), id.role, id.cluster_id.as_str()),
            ("node1", Role::Worker, "cluster1")
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let days = (id.not_after - now) / 86400;
        assert!((89..=90).contains(&days), "{days} days");
        assert!(!id.due_for_renewal(now));
        assert!(!id.due_for_renewal(now + 59 * 86400));
        assert!(id.due_for_renewal(now + 61 * 86400));
        assert!(id.due_for_renewal(id.not_after + 1));
        // the certificate and its key make TLS configurations (that the chain verifies
        // is transport's test)
        let certs = NodeCerts {
            cert_pem: pem,
            key_pem: key,
            roots_pem: ca.cert_pem.clone(),
        };
        transport::client_config(&certs).unwrap();
        transport::server_config(&certs).unwrap();
    }

    #[test]
    fn external_ca_must_be_a_ca_with_its_key() {
        let ca = RootCa::generate().unwrap();
        assert!(RootCa::from_pem(&ca.cert_pem, &ca.key_pem).is_ok());
        let other = RootCa::generate().unwrap();
        let e = RootCa::from_pem(&ca.cert_pem, &other.key_pem)
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not belong"), "{e}");
        let e = RootCa::from_pem("junk", &ca.key_pem).err().unwrap();
        assert!(e.to_string().contains("--ca-cert"), "{e}");
        // a leaf certificate is not a CA
        let (_, csr) = new_key_and_csr().unwrap();
        let leaf = ca
            .issue(&csr, "n", Role::Manager, "c", DEFAULT_CERT_EXPIRY)
            .unwrap();
        let e = RootCa::from_pem(&leaf, &ca.key_pem).err().unwrap();
        assert!(e.to_string().contains("not a CA"), "{e}");
    }

    #[test]
    fn tokens_pin_the_ca_and_parse_strictly() {
        let ca = RootCa::generate().unwrap();
        let t = JoinToken::generate(&ca.cert_der);
        let s = t.to_string();
        assert!(
            s.starts_with("SWMTKN-1-") && s.len() == 9 + 50 + 1 + 25,
            "{s}"
        );
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        assert_eq!(t.ca_digest, ca.digest());
        assert_ne!(JoinToken::generate(&ca.cert_der).secret, t.secret);
        for bad in [
            "",
            "SWMTKN-2-aaa-bbb",
            &s.replace("SWMTKN-1", "SWMTKN-2"),
            &s[..s.len() - 1],
            &s.to_uppercase(),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(base36(&[0, 35], 3), "00z");
        assert_eq!(base36(&[1, 0], 0), "74"); // 256 = 7*36 + 4
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd"));
    }
}
