//! keel-emulator: Keel's AWS services emulated in one process on 127.0.0.1
//! for development and tests (`keel-local serve|demo`). Every function's
//! declared routes behind the authorizer (`api`), queues drained in-process
//! (`queue`, consumers in `stack`), inbox drops notified as S3 does (`inbox`), the saga's ASL run in-process (`asl`),
//! state in one SQLite file (`store`, `table`) and a directory (`blobs`).
//! Nothing here ships to AWS.

pub mod api;
pub mod asl;
pub mod blobs;
pub mod demo;
mod inbox;
pub mod metrics;
pub mod queue;
mod stack;
pub mod store;
pub mod table;

pub use api::{authorization_document, declared_routes, documented_routes, openapi_document, public_routes, route_access};
pub use stack::{QueueWrapper, Stack, StackOptions};
