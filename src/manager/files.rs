//! Secrets and configs in the store: created once under a unique name (their data
//! checked by `crate::spec::files`), listed, and removed only while no service uses
//! them; services' references resolved from names to IDs. A secret's data never
//! leaves the managers in an answer; a config's does, as in Swarm.

use shoal_proto::{
    Config, ConfigSpec, ContainerSpec, FileReference, Secret, SecretSpec, ServiceSpec,
};

use super::error::{find, invalid, update_checked, ControlError};
use super::store::{new_id, Store, StoreItem, Tables, TryFromObject, Tx};
use crate::spec::{Field, SpecError, SpecErrors};

/// What secrets and configs share.
pub trait FileObject: StoreItem + TryFromObject + Default {
    /// The object as an answer: a secret without its data.
    fn answer(self) -> Self;
    /// The references to objects of this kind in a container spec.
    fn references(c: &ContainerSpec) -> &[FileReference];
    fn references_mut(c: &mut ContainerSpec) -> &mut Vec<FileReference>;
    fn check(&self) -> Result<(), SpecErrors>;
    fn set_id(&mut self, id: String);
    /// Whether objects of this kind may be made yet.
    fn available() -> Result<(), ControlError> {
        Ok(())
    }
}

impl FileObject for Secret {
    fn answer(mut self) -> Secret {
        if let Some(s) = self.spec.as_mut() {
            s.data.clear();
        }
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
    fn set_id(&mut self, id: String) {
        self.id = id;
    }
    fn available() -> Result<(), ControlError> {
        // the store is written to disk in plain text until it is sealed: no secret byte
        // may go there
        Err(ControlError::Refused(
            "secrets are not supported yet: the managers' Raft log is not encrypted yet, and a secret's data must never be on disk in plain text".into(),
        ))
    }
}

impl FileObject for Config {
    fn answer(self) -> Config {
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
    fn set_id(&mut self, id: String) {
        self.id = id;
    }
}

/// Stores a new secret or config (`object` has its spec; its ID is given here).
pub async fn create<T: FileObject>(store: &Store, mut object: T) -> Result<T, ControlError> {
    T::available()?;
    object.check()?;
    let id = new_id();
    object.set_id(id.clone());
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

/// In the transaction that keeps a service's spec: every object it uses is still there
/// (one removed since the spec was resolved is refused, as if it never was).
pub fn check_in(tx: &Tx<'_>, spec: &ServiceSpec) -> Result<(), ControlError> {
    let Some(c) = spec.task.as_ref().and_then(|x| x.container.as_ref()) else {
        return Ok(());
    };
    let gone = |kind: &str, r: &FileReference| {
        ControlError::from(SpecError::new(
            Field::new("task.container").child(kind),
            format!("{} was removed meanwhile", r.source_name),
        ))
    };
    if let Some(r) = c
        .secrets
        .iter()
        .find(|r| tx.get::<Secret>(&r.source_id).is_none())
    {
        return Err(gone("secrets", r));
    }
    if let Some(r) = c
        .configs
        .iter()
        .find(|r| tx.get::<Config>(&r.source_id).is_none())
    {
        return Err(gone("configs", r));
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
    // (until the nodes receive them: a task must not run without its files)
    for (kind, n) in [("secrets", c.secrets.len()), ("configs", c.configs.len())] {
        if n > 0 && errs.0.is_empty() {
            errs.push(SpecError::new(
                Field::new("task.container").child(kind),
                "not supported yet: secrets and configs do not reach the nodes in this version, so a service cannot use them",
            ));
        }
    }
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
