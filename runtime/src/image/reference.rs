//! Image references as Docker users write them: `busybox`, `library/busybox:1.36`,
//! `host:5000/team/app@sha256:…`, parsed by hand after Docker's distribution grammar with
//! its defaults (docker.io, `library/`, `:latest`) and the familiar short form Docker
//! prints. (oci-client's own parser compiles a Unicode regex that keeps about 9 MiB
//! resident for the life of the daemon; this is the same grammar in a few loops.)

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
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let d = d.parse::<Digest>().map_err(|e| err(e.why.to_string()))?;
                (rest, Some(d))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a port is before it).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            check_tag(t).map_err(|why| err(why.into()))?;
        }
        let (registry, repository) = split_name(name).map_err(err)?;
        let inner = match (tag, digest) {
            (Some(t), Some(d)) => {
                Reference::with_tag_and_digest(registry, repository, t.into(), d.to_string())
            }
            (None, Some(d)) => Reference::with_digest(registry, repository, d.to_string()),
            (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
        };
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

/// Docker's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(t: &str) -> Result<(), &'static str> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    match t.chars().next() {
        None => Err("the tag after ':' is empty"),
        Some(_) if t.len() > 128 => Err("the tag is longer than 128 characters"),
        Some(c) if !word(c) => Err("a tag must start with a letter, digit or '_'"),
        Some(_) if !t.chars().all(|c| word(c) || c == '.' || c == '-') => {
            Err("a tag may hold only letters, digits, '_', '.' and '-'")
        }
        Some(_) => Ok(()),
    }
}

/// Splits `[domain/]path` into registry and repository with Docker's rules: the first
/// component is a registry when it has a '.' or ':' or is `localhost`; Docker Hub's
/// single-component names get `library/`.
fn split_name(name: &str) -> Result<(String, String), String> {
    let (domain, path) = match name.split_once('/') {
        Some((d, p)) if d.contains(['.', ':']) || d == "localhost" => (Some(d), p),
        _ => (None, name),
    };
    if let Some(d) = domain {
        check_domain(d)?;
    }
    if path.is_empty() {
        return Err("the repository name is empty".into());
    }
    for component in path.split('/') {
        check_path_component(component)?;
    }
    let mut registry = domain.unwrap_or("docker.io").to_string();
    if registry == "index.docker.io" {
        registry = "docker.io".into();
    }
    let repository = if registry == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    if name.len() > 255 {
        return Err("the name is longer than 255 characters".into());
    }
    Ok((registry, repository))
}

/// `host[:port]`: dot-separated labels of letters, digits and inner '-', or `[ipv6]`.
fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry {d:?} has an unclosed '['"))?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("registry {d:?}: {ip:?} is not an IPv6 address"))?;
        match after {
            "" => (None, None),
            a => (
                None,
                Some(
                    a.strip_prefix(':')
                        .ok_or_else(|| format!("registry {d:?} is malformed"))?,
                ),
            ),
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(h) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !h.split('.').all(label_ok) {
            return Err(format!("registry host {h:?} is not a valid host name"));
        }
    }
    if let Some(p) = port {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("registry port {p:?} is not a number"));
        }
    }
    Ok(())
}

/// A path component: lowercase alphanumerics joined by '.', '_', '__' or runs of '-'.
fn check_path_component(c: &str) -> Result<(), String> {
    let bad = || {
        if c.chars().any(|ch| ch.is_ascii_uppercase()) {
            "the repository name must be lowercase".to_string()
        } else if c.is_empty() {
            "the repository name has an empty path component".to_string()
        } else {
            format!(
                "path component {c:?} must be lowercase letters and digits, \
                 joined by '.', '_', '__' or '-'"
            )
        }
    };
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
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
    fn docker_grammar() {
        for (s, reg, repo, tag) in [
            ("a.b-c/x__y/z--q", "a.b-c", "x__y/z--q", Some("latest")),
            (
                "localhost/app:v1.0-rc_1",
                "localhost",
                "app",
                Some("v1.0-rc_1"),
            ),
            (
                "localhost:5000/app",
                "localhost:5000",
                "app",
                Some("latest"),
            ),
            ("[::1]:5000/app:x", "[::1]:5000", "app", Some("x")),
            (
                "index.docker.io/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
            ),
            (
                "team/app---x.y",
                "docker.io",
                "team/app---x.y",
                Some("latest"),
            ),
        ] {
            let r = ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                (r.registry(), r.repository(), r.tag()),
                (reg, repo, tag),
                "{s}"
            );
        }
        let d = format!("sha256:{}", "b".repeat(64));
        let r = ImageRef::parse(&format!("app:1@{d}")).unwrap();
        assert_eq!(
            (r.tag(), r.digest().unwrap().as_str()),
            (Some("1"), d.as_str())
        );
        let e = ImageRef::parse("x.com/Team/app").unwrap_err();
        assert!(e.why.contains("lowercase"), "{e}");
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
            "a//b",
            "/busybox",
            "busybox/",
            "a..b/c",
            "-a.com/c",
            "a.com:x/c",
            "busy--box_-x",
            "busybox:-x",
            "busybox:",
            "x.com/Team/app",
            "büsybox",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
