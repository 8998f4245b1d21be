//! The managers' refusals, and what every control call shares: finding an object by ID,
//! name or prefix, checking the version a caller read, and a transaction that may refuse.
//! It sits below `control`, `network` and `membership`, and the API maps it to gRPC.

use shoal_proto::Meta;

use super::store::{Store, StoreError, StoreItem, TryFromObject, Tx};
use crate::spec::{SpecError, SpecErrors};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A spec (or a request's field) that cannot be kept: each problem names its field.
    #[error("{0}")]
    Spec(SpecErrors),
    /// A request refused as a whole (no field to name).
    #[error("{0}")]
    Invalid(String),
    /// A request that cannot be done in the swarm's present state (it would lose quorum).
    #[error("{0}")]
    Refused(String),
    /// A caller that may not ask this.
    #[error("{0}")]
    Denied(String),
    /// What needs a majority of the managers and did not get it in time.
    #[error("{0}")]
    Unavailable(String),
    #[error("{kind} {what} not found")]
    NotFound { kind: &'static str, what: String },
    #[error("{kind} {what} is ambiguous: it matches {count}")]
    Ambiguous {
        kind: &'static str,
        what: String,
        count: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SpecErrors> for ControlError {
    fn from(e: SpecErrors) -> ControlError {
        ControlError::Spec(e)
    }
}

impl From<SpecError> for ControlError {
    fn from(e: SpecError) -> ControlError {
        ControlError::Spec(e.into())
    }
}

pub fn invalid(s: impl Into<String>) -> ControlError {
    ControlError::Invalid(s.into())
}

/// The gRPC status for a control error (the control API's and the dispatcher's). A
/// spec's problems go in its details too, with their fields, for the caller to name
/// them in its own words.
pub fn grpc_status(e: ControlError) -> tonic::Status {
    use tonic::Status;
    match e {
        ControlError::Spec(errs) => Status::with_details(
            tonic::Code::InvalidArgument,
            errs.to_string(),
            prost::Message::encode_to_vec(&errs.to_proto()).into(),
        ),
        ControlError::Invalid(m) => Status::invalid_argument(m),
        ControlError::Refused(m) => Status::failed_precondition(m),
        ControlError::Denied(m) => Status::permission_denied(m),
        ControlError::Unavailable(m) => Status::unavailable(m),
        ControlError::NotFound { .. } => Status::not_found(e.to_string()),
        ControlError::Ambiguous { .. } => Status::invalid_argument(e.to_string()),
        ControlError::Store(s) => match s {
            StoreError::Proposal(m) => Status::unavailable(m),
            StoreError::NameInUse { .. } | StoreError::Exists { .. } => {
                Status::already_exists(s.to_string())
            }
            StoreError::NotFound { .. } => Status::not_found(s.to_string()),
            StoreError::TooLarge { .. } => Status::invalid_argument(s.to_string()),
            StoreError::NoSpace(_) => Status::resource_exhausted(s.to_string()),
            s => Status::failed_precondition(s.to_string()),
        },
    }
}

/// Finds an object by full ID, name, or unique ID prefix (in that order, as Docker does).
/// An empty or blank `what` is refused: as a prefix it would match every object.
pub fn find<T: StoreItem + TryFromObject>(
    table: &std::collections::BTreeMap<String, T>,
    what: &str,
) -> Result<T, ControlError> {
    if what.trim().is_empty() {
        return Err(invalid(format!(
            "{what:?} is not a {} ID or name: it is empty",
            T::KIND
        )));
    }
    if let Some(x) = table.get(what) {
        return Ok(x.clone());
    }
    let by_name: Vec<&T> = table.values().filter(|x| x.name() == what).collect();
    if by_name.len() == 1 {
        return Ok(by_name[0].clone());
    }
    let by_prefix: Vec<&T> = table
        .values()
        .filter(|x| x.id().starts_with(what))
        .collect();
    match (by_name.len(), by_prefix.len()) {
        (0, 1) => Ok(by_prefix[0].clone()),
        (0, 0) => Err(ControlError::NotFound {
            kind: T::KIND,
            what: what.into(),
        }),
        (n, m) => Err(ControlError::Ambiguous {
            kind: T::KIND,
            what: what.into(),
            count: n.max(m),
        }),
    }
}

/// Refuses a change made from an old read: `version` (0: any) must be the object's.
pub fn check_version(
    kind: &str,
    id: &str,
    meta: Option<Meta>,
    version: u64,
) -> Result<(), ControlError> {
    let actual = meta.map(|m| m.version).unwrap_or(0);
    if version != 0 && version != actual {
        return Err(ControlError::Store(StoreError::Conflict {
            kind: kind.into(),
            id: id.to_string(),
            expected: version,
            actual,
        }));
    }
    Ok(())
}

/// A transaction whose body may refuse with a [`ControlError`] (a user's mistake found
/// only against the store), which is returned as it is.
pub async fn update_checked<R>(
    store: &Store,
    f: impl FnOnce(&mut Tx<'_>) -> Result<R, ControlError>,
) -> Result<R, ControlError> {
    let mut refused = None;
    let res = store
        .update(|tx| {
            // an error aborts the transaction: nothing it recorded is committed
            f(tx).map_err(|e| match e {
                ControlError::Store(e) => e,
                e => {
                    refused = Some(e);
                    StoreError::Invalid("refused".into())
                }
            })
        })
        .await;
    res.map_err(|e| refused.take().unwrap_or(ControlError::Store(e)))
}
