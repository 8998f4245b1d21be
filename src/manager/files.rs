//! Secrets and configs in the store: created once under a unique name (their data
//! checked by `crate::spec::files`), listed, and removed only while no service uses
//! them; services' references resolved from names to IDs. A secret's data never
//! leaves the managers in an answer; a config's does, as in Swarm.

use shoal_proto::{
    Config, ConfigSpec, ContainerSpec, FileReference, FileVersion, Secret, SecretSpec, ServiceSpec,
};

use super::error::{find, invalid, update_checked, ControlError};
use super::store::{new_id, Store, StoreItem, Tables, TryFromObject, Tx};
use crate::spec::{Field, SpecError, SpecErrors};

/// What secrets and configs share.
pub trait FileObject: StoreItem + TryFromObject + Default + prost::Message {
    /// The object as an answer: a secret without its data.
    fn answer(self) -> Self;
    /// The references to objects of this kind in a container spec.
    fn references(c: &ContainerSpec) -> &[FileReference];
    fn references_mut(c: &mut ContainerSpec) -> &mut Vec<FileReference>;
    fn check(&self) -> Result<(), SpecErrors>;
    fn set_id(&mut self, id: String);
    /// The version of its current data (0 is 1).
    fn version(&self) -> u64;
    fn set_version(&mut self, v: u64);
    fn old_versions(&self) -> &[FileVersion];
    /// The object as a node receives it for a task: its ID, and its data at version `v`
    /// (None when that version is no longer kept).
    fn delivery(&self, v: u64) -> Option<Self>;
    fn labels_mut(&mut self) -> &mut std::collections::HashMap<String, String>;
    fn data_mut(&mut self) -> &mut Vec<u8>;
    fn old_versions_mut(&mut self) -> &mut Vec<FileVersion>;
}

/// The data of `version` among the current `data` (at `current`) and `old` versions.
fn data_at<'a>(
    current: u64,
    data: &'a [u8],
    old: &'a [FileVersion],
    version: u64,
) -> Option<&'a [u8]> {
    if version.max(1) == current.max(1) {
        return Some(data);
    }
    old.iter()
        .find(|o| o.version == version)
        .map(|o| o.data.as_slice())
}

/// What secrets and configs do alike: their ID, their versions, and what a node gets.
macro_rules! versioned {
    ($t:ident, $spec:ident) => {
        fn set_id(&mut self, id: String) {
            self.id = id;
        }
        fn version(&self) -> u64 {
            self.version.max(1)
        }
        fn set_version(&mut self, v: u64) {
            self.version = v;
        }
        fn old_versions(&self) -> &[FileVersion] {
            &self.old_versions
        }
        fn labels_mut(&mut self) -> &mut std::collections::HashMap<String, String> {
            &mut self
                .spec
                .get_or_insert_with(Default::default)
                .annotations
                .get_or_insert_with(Default::default)
                .labels
        }
        fn data_mut(&mut self) -> &mut Vec<u8> {
            &mut self.spec.get_or_insert_with(Default::default).data
        }
        fn old_versions_mut(&mut self) -> &mut Vec<FileVersion> {
            &mut self.old_versions
        }
        fn delivery(&self, v: u64) -> Option<$t> {
            let spec = self.spec.as_ref()?;
            let data = data_at(self.version, &spec.data, &self.old_versions, v)?;
            Some($t {
                id: self.id.clone(),
                version: v.max(1),
                spec: Some($spec {
                    data: data.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
    };
}

impl FileObject for Secret {
    fn answer(mut self) -> Secret {
        if let Some(s) = self.spec.as_mut() {
            s.data.clear();
        }
        self.old_versions.clear();
        self
    }
    fn references(c: &ContainerSpec) -> &[FileReference] {
        &c.secrets
    }
    fn references_mut(c: &mut ContainerSpec) -> &mut Vec<FileReference> {
        &mut c.secrets
    }
    fn check(&self) -> Result<(), SpecErrors> {
        crate::spec::files::secret(self.spec.as_ref().unwrap_or(&SecretSpec::default()))
    }
    versioned!(Secret, SecretSpec);
}

impl FileObject for Config {
    fn answer(mut self) -> Config {
        self.old_versions.clear();
        self
    }
    fn references(c: &ContainerSpec) -> &[FileReference] {
        &c.configs
    }
    fn references_mut(c: &mut ContainerSpec) -> &mut Vec<FileReference> {
        &mut c.configs
    }
    fn check(&self) -> Result<(), SpecErrors> {
        crate::spec::files::config(self.spec.as_ref().unwrap_or(&ConfigSpec::default()))
    }
    versioned!(Config, ConfigSpec);
}

/// Stores a new secret or config (`object` has its spec; its ID is given here).
pub async fn create<T: FileObject>(store: &Store, mut object: T) -> Result<T, ControlError> {
    object.check()?;
    let id = new_id();
    object.set_id(id.clone());
    object.set_version(1);
    // the store refuses a name in use
    store.update(|tx| tx.create(object)).await?;
    get::<T>(store, &id)
}

/// One secret or config, by ID, name or ID prefix, as an answer.
pub fn get<T: FileObject>(store: &Store, what: &str) -> Result<T, ControlError> {
    store.view(|t| find(T::table(t), what)).map(T::answer)
}

/// Every secret or config, as answers.
pub fn list<T: FileObject>(store: &Store) -> Vec<T> {
    store.view(|t| T::table(t).values().cloned().map(T::answer).collect())
}

/// The services whose spec uses object `id`.
fn users<T: FileObject>(tx: &Tx<'_>, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    tx.for_each(|s: &shoal_proto::Service| {
        let uses = s
            .spec
            .as_ref()
            .and_then(|x| x.task.as_ref())
            .and_then(|x| x.container.as_ref())
            .is_some_and(|c| T::references(c).iter().any(|r| r.source_id == id));
        if uses {
            out.push(s.name().to_string());
        }
    });
    out.sort();
    out
}

/// Removes a secret or config, refused while a service uses it (checked in the
/// transaction that removes it, so that no service can take it up meanwhile).
pub async fn remove<T: FileObject>(store: &Store, what: &str) -> Result<(), ControlError> {
    let o: T = store.view(|t| find(T::table(t), what))?;
    update_checked(store, |tx| {
        let users = users::<T>(tx, o.id());
        if !users.is_empty() {
            return Err(invalid(format!(
                "{} '{}' is in use by the following service{}: {}",
                T::KIND,
                o.name(),
                if users.len() == 1 { "" } else { "s" },
                users.join(", ")
            )));
        }
        tx.remove::<T>(o.id())?;
        Ok(())
    })
    .await
}

/// What `secret update` / `config update` changed.
#[derive(Debug)]
pub struct Updated<T> {
    pub object: T,
    /// The services that roll to the new data, by name.
    pub rolled: Vec<String>,
}

/// `secret update` / `config update`: new labels, and new data as a new version (the
/// same data makes none). Every service whose spec uses the object takes the new
/// version in the same transaction: a change of its task spec, so it rolls out under
/// its update settings, with its rollback (which restores the version before). Earlier
/// versions are kept while a service, one of its revisions or a task still names them.
pub async fn update<T: FileObject>(
    store: &Store,
    what: &str,
    version: u64,
    name: &str,
    labels: Option<std::collections::HashMap<String, String>>,
    data: Option<Vec<u8>>,
) -> Result<Updated<T>, ControlError> {
    if labels.is_none() && data.is_none() {
        return Err(invalid(format!(
            "nothing to update: give the {}'s new data, or its labels",
            T::KIND
        )));
    }
    let o: T = store.view(|t| find(T::table(t), what))?;
    if !name.is_empty() && name != o.name() {
        return Err(invalid(format!(
            "a {}'s name cannot change ({} to {name})",
            T::KIND,
            o.name()
        )));
    }
    let limit = store.view(|t| super::revisions::limit(t.clusters.values().next()));
    let now = crate::manager::store::now_ms();
    let id = o.id().to_string();
    let rolled = update_checked(store, |tx| {
        let mut next: T = tx.get(&id).ok_or_else(|| ControlError::NotFound {
            kind: T::KIND,
            what: what.to_string(),
        })?;
        super::error::check_version(T::KIND, &id, next.meta().copied(), version)?;
        if let Some(l) = &labels {
            *next.labels_mut() = l.clone();
        }
        let mut names = Vec::new();
        if let Some(d) = data.as_ref().filter(|d| *d != next.data_mut()) {
            let v = FileObject::version(&next);
            let old = std::mem::replace(next.data_mut(), d.clone());
            next.old_versions_mut().push(FileVersion {
                version: v,
                data: old,
            });
            next.set_version(v + 1);
            next.check()?;
            for mut s in tx.list::<shoal_proto::Service>() {
                let Some(mut spec) = s.spec.clone() else {
                    continue;
                };
                let Some(c) = spec.task.as_mut().and_then(|x| x.container.as_mut()) else {
                    continue;
                };
                let mut uses = false;
                for r in T::references_mut(c)
                    .iter_mut()
                    .filter(|r| r.source_id == id)
                {
                    r.version = v + 1;
                    uses = true;
                }
                if !uses {
                    continue;
                }
                names.push(s.name().to_string());
                super::revisions::update(tx, &mut s, spec, limit, now)?;
                if super::tasks::is_job(&s) {
                    s.job_iteration += 1;
                }
                tx.update(s)?;
            }
            let kept = versions_named::<T>(tx, &id);
            let current = FileObject::version(&next);
            next.old_versions_mut()
                .retain(|o| o.version != current && kept.contains(&o.version));
            // the versions still named are kept in the object, which the store bounds
            let size = prost::Message::encoded_len(&next);
            if size > crate::manager::store::MAX_OBJECT_BYTES {
                let versions: Vec<String> = next
                    .old_versions()
                    .iter()
                    .map(|o| o.version.to_string())
                    .collect();
                return Err(invalid(format!(
                    "{} '{}' cannot take new data now: with the earlier versions that services, their history or their tasks still name ({}), it would hold {} KiB, more than the {} KiB the store keeps per object; a smaller {} or fewer kept service revisions (swarm update --service-history-limit) make room",
                    T::KIND,
                    next.name(),
                    versions.join(", "),
                    size / 1024,
                    crate::manager::store::MAX_OBJECT_BYTES / 1024,
                    T::KIND,
                )));
            }
        }
        names.sort();
        tx.update(next)?;
        Ok(names)
    })
    .await?;
    let object = get::<T>(store, &id)?;
    Ok(Updated { object, rolled })
}

/// The versions of object `id` that services (their specs and previous specs), their
/// revisions and the tasks that may still run name.
fn versions_named<T: FileObject>(tx: &Tx<'_>, id: &str) -> std::collections::HashSet<u64> {
    fn of(s: Option<&ServiceSpec>) -> Option<&ContainerSpec> {
        s?.task.as_ref()?.container.as_ref()
    }
    let mut out = std::collections::HashSet::new();
    let mut add = |c: Option<&ContainerSpec>| {
        let refs = c.map(T::references).unwrap_or_default();
        out.extend(
            refs.iter()
                .filter(|r| r.source_id == id)
                .map(|r| r.version.max(1)),
        );
    };
    tx.for_each(|s: &shoal_proto::Service| {
        add(of(s.spec.as_ref()));
        add(of(s.previous_spec.as_ref()));
    });
    tx.for_each(|r: &shoal_proto::ServiceRevision| add(of(r.spec.as_ref())));
    tx.for_each(|t: &shoal_proto::Task| {
        if t.may_run() {
            add(t.spec.as_ref().and_then(|s| s.container.as_ref()));
        }
    });
    out
}

/// In the transaction that keeps a service's spec: every object it uses is still there
/// (one removed since the spec was resolved is refused, as if it never was), and every
/// version it names is still kept (one dropped by an update meanwhile becomes the
/// current one, which that update rolled every service to).
pub fn check_in(tx: &Tx<'_>, spec: &mut ServiceSpec) -> Result<(), ControlError> {
    let Some(c) = spec.task.as_mut().and_then(|x| x.container.as_mut()) else {
        return Ok(());
    };
    check_kind::<Secret>(tx, &mut c.secrets, "secrets")?;
    check_kind::<Config>(tx, &mut c.configs, "configs")
}

fn check_kind<T: FileObject>(
    tx: &Tx<'_>,
    refs: &mut [FileReference],
    field: &str,
) -> Result<(), ControlError> {
    for r in refs {
        let Some(o) = tx.get::<T>(&r.source_id) else {
            return Err(ControlError::from(SpecError::new(
                Field::new("task.container").child(field),
                format!("{} was removed meanwhile", r.source_name),
            )));
        };
        let v = r.version.max(1);
        if v != FileObject::version(&o) && !o.old_versions().iter().any(|x| x.version == v) {
            r.version = FileObject::version(&o);
        }
    }
    Ok(())
}

/// Resolves a service's references (by name, as docker gives them) to objects' IDs:
/// an unknown one is refused, naming its field.
pub fn resolve(t: &Tables, spec: &mut ServiceSpec) -> Result<(), ControlError> {
    let Some(c) = spec.task.as_mut().and_then(|x| x.container.as_mut()) else {
        return Ok(());
    };
    let mut errs = SpecErrors::default();
    resolve_kind::<Secret>(t, &mut errs, c, "secrets");
    resolve_kind::<Config>(t, &mut errs, c, "configs");
    errs.into_result().map_err(ControlError::from)
}

fn resolve_kind<T: FileObject>(
    t: &Tables,
    errs: &mut SpecErrors,
    c: &mut ContainerSpec,
    field: &str,
) {
    for (i, r) in T::references_mut(c).iter_mut().enumerate() {
        let at = Field::new("task.container")
            .child(field)
            .at(i)
            .child("source");
        // by name first (a name may look like an ID prefix), then by ID
        let by_name = T::table(t).values().find(|o| o.name() == r.source_name);
        let found = by_name.or_else(|| {
            (r.source_name.is_empty() && !r.source_id.is_empty())
                .then(|| T::table(t).get(&r.source_id))
                .flatten()
        });
        match found {
            Some(o) => {
                // a reference keeps the version it has while that is kept (a change of
                // something else rolls nothing); a new one, or one whose version is
                // gone, takes the current data
                let kept = r.source_id == o.id()
                    && r.version != 0
                    && (r.version == FileObject::version(o)
                        || o.old_versions().iter().any(|v| v.version == r.version));
                if !kept {
                    r.version = FileObject::version(o);
                }
                r.source_id = o.id().to_string();
                r.source_name = o.name().to_string();
            }
            None => {
                let what = if r.source_name.is_empty() {
                    &r.source_id
                } else {
                    &r.source_name
                };
                errs.push(SpecError::new(at, format!("{} not found: {what}", T::KIND)));
            }
        }
    }
}
