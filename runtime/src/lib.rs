//! shoal-runtime: everything a worker needs to run a task's container with no container
//! daemon: images in (pull, import, unpack into a content-addressed store), containers
//! out (libcontainer, through one per-node keeper process), logs and health back.
//!
//! Layout:
//! - [`digest`]: sha256 digests and hashing readers/writers
//! - [`image`]: references, the image store, layer unpacking, pulls, import/save
//! - [`container`]: OCI specs, the keeper (where libcontainer runs), logs, health, executor
//! - [`files`]: the data root's modes (root only) and atomic writes

pub mod container;
pub mod digest;
pub mod files;
pub mod image;
