//! Docker-shaped service definitions, in one place: the front door. Every front end (the
//! CLI's flags today; compose files and the Engine API's JSON next) turns its words into
//! these types, and the managers check what they are sent with the one validation here.
//! Errors name a field of the spec (`task.container.env[2]`), which each front end says
//! in its own words (`--env`, `services.web.environment`, `TaskTemplate.ContainerSpec.Env`).
//!
//! Layout:
//! - `field`: paths into a spec, and the errors that name them.
//! - `units`: durations (`1m30s`), sizes (`64m`), CPUs, `KEY=VALUE`.
//! - `parse`: Docker's small languages: mounts, published ports, network attachments.
//! - `placement`: constraints and spread preferences, and the nodes that match them.
//! - `service`: [`ServiceInput`], a service in Docker's flat vocabulary with Swarm's
//!   defaults, made into a spec or laid over one; restart policies' defaults.
//! - `edit`: [`ServiceEdit`], Docker's `--*-add` / `--*-rm` on a spec.
//! - `update`: rolling updates' and rollbacks' settings with Swarm's defaults, and what
//!   two specs differ in.
//! - `validate`: the one validation of service, network, node and cluster specs.
//! - `limits`: what one service (or a node's description, or a label) may ask.
//! - `files`: secrets and configs, and the files a task sees of them.
//! - `image`: an image pinned to a digest (when, and its forms), and where a service's
//!   registry credentials may go.
//! - `container`: a task spec as the runtime's container spec (what a node runs, and so
//!   what the validation checks).
//! - `docker`: Docker-shaped JSON views of services, tasks, nodes and networks.
//!
//! It uses `shoal_proto`'s types and the runtime's pure checks (image references and
//! what a node would refuse of a container); nothing here does I/O.

pub mod container;
pub mod docker;
pub mod edit;
pub mod field;
pub mod files;
pub mod image;
pub mod limits;
pub mod parse;
pub mod placement;
pub mod service;
pub mod units;
pub mod update;
pub mod validate;

pub use edit::ServiceEdit;
pub use field::{Edit, Field, SpecError, SpecErrors};
pub use service::{ModeKind, ServiceInput};
