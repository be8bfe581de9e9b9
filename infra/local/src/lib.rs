//! keel-local: every function's handlers in one process behind a local HTTP
//! API on 127.0.0.1, the authorizer in front, queues drained in-process, the
//! saga's ASL run in-process, state in a SQLite file and a directory.

pub mod asl;
pub mod blobs;
pub mod demo;
mod per_poll;
pub mod sqlite;
mod stack;

pub use stack::declared_routes;

pub use stack::{Stack, StackOptions};
