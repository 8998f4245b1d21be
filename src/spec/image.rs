//! A service's image reference pinned to a digest, as Swarm pins it: which reference the
//! managers ask a registry about (and when), the pinned form (`app:1.2@sha256:…`), the
//! form lists show (the digest dropped), and which registry a service's credentials
//! may be sent to.

use shoal_proto::RegistryCredential;
use shoal_runtime::image::{ImageRef, RegistryAuth};

/// At most this much of credentials with one service (a registry's identity token is a
/// JWT of a few KiB).
pub const MAX_CREDENTIAL_BYTES: usize = 16 << 10;

/// The reference to ask the registry for a digest of, if any, for a service whose image
/// was `old` (none for a new service) and is now `new`:
/// - a new or changed image that names a tag (or nothing, that is `latest`);
/// - with `--force`, the tag of an image pinned before, so a push to the same tag rolls;
/// - never an image given by digest alone, or by ID, nor one unchanged and not forced.
pub fn to_resolve(new: &str, old: Option<&str>, forced: bool) -> Option<String> {
    if is_id(new) {
        return None;
    }
    let (named, digest) = match new.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (new, None),
    };
    let changed = old != Some(new);
    match digest {
        None if changed || forced => Some(with_tag(named)),
        // pinned, by the managers before or by the user: again only when forced, and
        // only if it names a tag to look up
        Some(_) if forced && has_tag(named) => Some(named.to_string()),
        _ => None,
    }
}

/// `named` (with `:latest` added when it has no tag) pinned to `digest`.
pub fn pinned(named: &str, digest: &str) -> String {
    format!("{}@{digest}", with_tag(named))
}

/// How lists show a service's image: a pinned tag without its digest (`app:1.2`), as
/// `docker service ls` and `service ps` do; an image given by digest alone stays whole.
pub fn display(image: &str) -> &str {
    match image.split_once('@') {
        Some((named, _)) if has_tag(named) => named,
        _ => image,
    }
}

/// Whether `named` (no digest) has a tag: a `:` after its last `/` (before it, a `:`
/// is a registry's port).
fn has_tag(named: &str) -> bool {
    named
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
}

fn with_tag(named: &str) -> String {
    if has_tag(named) {
        named.to_string()
    } else {
        format!("{named}:latest")
    }
}

/// An image ID (`sha256:<64 hex>` or 64 hex digits): it names an image on one node, not
/// in a registry.
fn is_id(image: &str) -> bool {
    let hex = image.strip_prefix("sha256:").unwrap_or(image);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The credentials to pull `image` with, from a service's: only when they are for the
/// image's own registry (an image moved to another registry must not carry them there).
pub fn auth_for(cred: Option<&RegistryCredential>, image: &str) -> Option<RegistryAuth> {
    let cred = cred.filter(|c| !c.registry.is_empty())?;
    let registry = ImageRef::parse(image).ok()?.registry().to_string();
    if registry != normal_registry(&cred.registry) {
        return None;
    }
    Some(if !cred.token.is_empty() {
        RegistryAuth::Bearer(cred.token.clone())
    } else if !cred.username.is_empty() {
        RegistryAuth::Basic {
            username: cred.username.clone(),
            password: cred.password.clone(),
        }
    } else {
        RegistryAuth::Anonymous
    })
}

/// Credentials for `registry` as a service keeps them; none for anonymous.
pub fn credential(registry: &str, auth: &RegistryAuth) -> Option<RegistryCredential> {
    let mut c = RegistryCredential {
        registry: normal_registry(registry),
        ..Default::default()
    };
    match auth {
        RegistryAuth::Anonymous => return None,
        RegistryAuth::Basic { username, password } => {
            c.username.clone_from(username);
            c.password.clone_from(password);
        }
        RegistryAuth::Bearer(t) => c.token.clone_from(t),
    }
    Some(c)
}

/// Docker Hub's other names are `docker.io`, as image references name it.
fn normal_registry(r: &str) -> String {
    let r = r.trim_start_matches("https://").trim_end_matches('/');
    match r {
        "index.docker.io" | "index.docker.io/v1" | "registry-1.docker.io" => "docker.io".into(),
        r => r.to_string(),
    }
}

/// Credentials a client sent: within their size limit, for a registry by name.
pub fn check_credential(c: &RegistryCredential) -> Result<(), String> {
    let n = c.registry.len() + c.username.len() + c.password.len() + c.token.len();
    if n > MAX_CREDENTIAL_BYTES {
        return Err(format!(
            "registry credentials of {n} bytes: at most {} KiB",
            MAX_CREDENTIAL_BYTES >> 10
        ));
    }
    if c.registry.is_empty() || c.registry.chars().any(|ch| ch.is_whitespace()) {
        return Err(format!(
            "registry credentials for {:?}: not a registry's name",
            c.registry
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_new_or_changed_tag_is_resolved_and_an_unchanged_one_is_not() {
        assert_eq!(
            to_resolve("app", None, false).as_deref(),
            Some("app:latest")
        );
        assert_eq!(
            to_resolve(
                "127.0.0.1:5055/app:2",
                Some("127.0.0.1:5055/app:1@x"),
                false
            )
            .as_deref(),
            Some("127.0.0.1:5055/app:2")
        );
        // the CLI sends the pinned image back when another field changes
        let pinned_app = pinned("app:1", D);
        assert_eq!(to_resolve(&pinned_app, Some(&pinned_app), false), None);
        // given again by tag: looked up again (the tag may have moved)
        assert_eq!(
            to_resolve("app:1", Some(&pinned_app), false).as_deref(),
            Some("app:1")
        );
    }

    #[test]
    fn force_looks_a_pinned_tag_up_again_but_never_a_bare_digest() {
        let p = pinned("127.0.0.1:5055/app:1", D);
        assert_eq!(
            to_resolve(&p, Some(&p), true).as_deref(),
            Some("127.0.0.1:5055/app:1")
        );
        let bare = format!("app@{D}");
        assert_eq!(to_resolve(&bare, Some(&bare), true), None);
        assert_eq!(to_resolve(&bare, None, false), None);
        // a pin the user wrote is kept when given
        assert_eq!(to_resolve(&p, None, false), None);
        // an image ID names a local image
        assert_eq!(to_resolve(&D[7..], None, false), None);
        assert_eq!(to_resolve(D, None, true), None);
    }

    #[test]
    fn lists_show_the_tag_and_a_registry_port_is_not_a_tag() {
        assert_eq!(
            pinned("127.0.0.1:5055/app", D),
            format!("127.0.0.1:5055/app:latest@{D}")
        );
        assert_eq!(
            display(&pinned("127.0.0.1:5055/app", D)),
            "127.0.0.1:5055/app:latest"
        );
        assert_eq!(
            display(&format!("127.0.0.1:5055/app@{D}")),
            format!("127.0.0.1:5055/app@{D}")
        );
        assert_eq!(display("busybox"), "busybox");
    }

    #[test]
    fn credentials_go_only_to_their_own_registry() {
        let auth = RegistryAuth::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        let c = credential("127.0.0.1:5056", &auth).unwrap();
        assert_eq!(
            auth_for(Some(&c), "127.0.0.1:5056/app:1"),
            Some(auth.clone())
        );
        assert_eq!(auth_for(Some(&c), "127.0.0.1:5055/app:1"), None);
        assert_eq!(auth_for(Some(&c), "app:1"), None);
        let hub = credential("https://index.docker.io/v1/", &auth).unwrap();
        assert_eq!(auth_for(Some(&hub), "busybox"), Some(auth));
        assert_eq!(credential("x", &RegistryAuth::Anonymous), None);
        assert!(format!("{c:?}").contains("****") && !format!("{c:?}").contains("\"p\""));
    }

    #[test]
    fn credentials_have_a_size_limit() {
        let mut c = RegistryCredential {
            registry: "r:1".into(),
            token: "t".repeat(MAX_CREDENTIAL_BYTES),
            ..Default::default()
        };
        assert!(check_credential(&c).unwrap_err().contains("at most 16 KiB"));
        c.token = "t".into();
        assert!(check_credential(&c).is_ok());
        c.registry = String::new();
        assert!(check_credential(&c).is_err());
    }
}
