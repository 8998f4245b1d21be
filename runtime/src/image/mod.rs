//! Images: references, the content-addressed store, layer unpacking, registry pulls and
//! offline import/save.

pub mod import;
pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;

pub use pull::{resolve_digest, Credentials, PullError, PullOptions, Pulled, RegistryAuth};
pub use reference::ImageRef;
pub use store::{ImageRecord, ImageStore, LayerRecord, StoreError};
