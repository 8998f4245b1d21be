//! Image references as Docker users write them: `busybox`, `library/busybox:1.36`,
//! `host:5000/team/app@sha256:…`. Parsing and defaults (docker.io, `library/`, `:latest`)
//! come from oci-client; this adds the familiar short form Docker prints.

use std::fmt;

use oci_client::Reference;

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {value:?}: {why}")]
pub struct ReferenceError {
    pub value: String,
    pub why: String,
}

/// A parsed, normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let err = |why: String| ReferenceError {
            value: s.to_string(),
            why,
        };
        if s.is_empty() {
            return Err(err("it is empty".into()));
        }
        if s.chars().any(|c| c.is_whitespace()) {
            return Err(err("it contains whitespace".into()));
        }
        let inner = Reference::try_from(s).map_err(|e| err(e.to_string()))?;
        if let Some(d) = inner.digest() {
            d.parse::<Digest>().map_err(|e| err(e.why.to_string()))?;
        }
        Ok(ImageRef { inner })
    }

    /// The registry host (with port), `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag; `latest` when neither tag nor digest was given.
    pub fn tag(&self) -> Option<&str> {
        match (self.inner.tag(), self.inner.digest()) {
            (Some(t), _) => Some(t),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }

    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| d.parse().ok())
    }

    /// `registry/repository`, fully qualified.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// The repository as Docker prints it: `busybox` for docker.io/library/busybox.
    pub fn familiar_name(&self) -> String {
        familiar(&self.name())
    }

    /// `name:tag` when there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag().map(|t| format!("{}:{}", self.name(), t))
    }

    pub(crate) fn oci(&self) -> &Reference {
        &self.inner
    }

    /// Whether the registry is on this host (plain http is always allowed there).
    pub fn is_loopback(&self) -> bool {
        let host = self.registry();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.split(']').next())
            .unwrap_or_else(|| host.split(':').next().unwrap_or(host));
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

/// `docker.io/library/busybox` → `busybox`, `docker.io/team/app` → `team/app`.
pub fn familiar(name: &str) -> String {
    let n = name.strip_prefix("docker.io/").unwrap_or(name);
    n.strip_prefix("library/")
        .filter(|r| !r.contains('/'))
        .unwrap_or(n)
        .to_string()
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.familiar_name())?;
        if let Some(t) = self.inner.tag() {
            write!(f, ":{t}")?;
        }
        if let Some(d) = self.inner.digest() {
            write!(f, "@{d}")?;
        }
        if self.inner.tag().is_none() && self.inner.digest().is_none() {
            write!(f, ":latest")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_defaults() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        assert_eq!(r.to_string(), "busybox:latest");
        let r = ImageRef::parse("library/busybox:1.36").unwrap();
        assert_eq!(
            (r.name().as_str(), r.tag()),
            ("docker.io/library/busybox", Some("1.36"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("host:5000/team/app@{d}")).unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("host:5000", "team/app", None)
        );
        assert_eq!(r.digest().unwrap().as_str(), d);
        assert_eq!(r.familiar_name(), "host:5000/team/app");
        assert!(!r.is_loopback());
        assert!(ImageRef::parse("127.0.0.1:5055/test/busybox")
            .unwrap()
            .is_loopback());
        assert!(ImageRef::parse("localhost:5000/x").unwrap().is_loopback());
        assert_eq!(
            ImageRef::parse("team/app").unwrap().familiar_name(),
            "team/app"
        );
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "Busybox",
            "a b",
            "busybox@sha256:abc",
            "busybox:tag:tag",
            "host:5000/x@md5:00",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
