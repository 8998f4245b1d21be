//! Pinning a service's image to the digest its registry has for the tag, when the
//! service is created, its image changes, or it is forced (`crate::spec::image` says
//! when): every node then runs the same image, and an update after a push to the same
//! tag really pulls. A registry that cannot be asked is a warning, as in Swarm, and the
//! nodes then pull the tag each on their own.

use std::time::Duration;

use shoal_proto::{RegistryCredential, ServiceSpec};
use shoal_runtime::image::PullOptions;

use crate::spec::image;

/// How long a create or an update waits for a registry before it goes on unpinned.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(15);

/// How the managers reach registries for a create or an update.
#[derive(Clone, Default)]
pub struct ImageOptions {
    /// Ask registries (false for `--no-resolve-image`, and where no registry is meant:
    /// the scale simulation, the manager's unit tests).
    pub resolve: bool,
    /// This manager's own credentials file and insecure registries.
    pub pull: PullOptions,
    /// `--with-registry-auth`: the client's credentials, for their registry only.
    pub auth: Option<RegistryCredential>,
}

impl ImageOptions {
    /// No registry is asked.
    pub fn none() -> ImageOptions {
        ImageOptions::default()
    }
}

/// Pins `spec`'s image where [`image::to_resolve`] says so; returns the warnings for the
/// client (a registry that could not be asked).
pub async fn pin(
    spec: &mut ServiceSpec,
    old: Option<&ServiceSpec>,
    opts: &ImageOptions,
) -> Vec<String> {
    if !opts.resolve {
        return vec![];
    }
    // (the image alone: the container spec is not copied)
    let image = |s: &ServiceSpec| {
        s.task
            .as_ref()
            .and_then(|t| t.container.as_ref())
            .map(|c| c.image.clone())
    };
    let forced = |s: &ServiceSpec| s.task.as_ref().map_or(0, |t| t.force_update);
    let Some(new) = image(spec) else {
        return vec![];
    };
    let old_image = old.and_then(image);
    let is_forced = old.is_some_and(|o| forced(o) != forced(spec));
    let Some(want) = image::to_resolve(&new, old_image.as_deref(), is_forced) else {
        return vec![];
    };
    let mut pull = opts.pull.clone();
    if let Some(a) = image::auth_for(opts.auth.as_ref(), &want) {
        pull.auth = Some(a);
    }
    let res = tokio::time::timeout(
        RESOLVE_TIMEOUT,
        shoal_runtime::image::resolve_digest(&want, &pull),
    )
    .await;
    let why = match res {
        Ok(Ok(d)) => {
            if let Some(c) = spec.task.as_mut().and_then(|t| t.container.as_mut()) {
                c.image = image::pinned(&want, d.as_str());
            }
            return vec![];
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("the registry did not answer within {RESOLVE_TIMEOUT:?}"),
    };
    tracing::warn!(image = %new, error = %why, "unable to pin image to digest");
    vec![format!("unable to pin image {} to digest: {why}", new)]
}
