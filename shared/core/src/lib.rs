//! keel-core: domain types, ports, policies, errors and config shared by every
//! Keel function. No AWS SDK and no ONNX Runtime in here: adapters live in
//! keel-aws (production) and keel-emulator (the local stack).

pub mod access;
pub mod after;
pub mod api_keys;
pub mod auth;
pub mod chain;
pub mod change_requests;
pub mod chunking;
pub mod concurrency;
pub mod config;
pub mod decisions;
pub mod egress;
pub mod error;
pub mod http;
pub mod identity;
pub mod ids;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod openapi;
pub mod models;
pub mod openai;
pub mod ports;
pub mod rate;
pub mod resilience;
pub mod tenants;
pub mod slo;
pub mod stats;
pub mod tasks;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod trace;
pub mod warm_cache;

pub use error::{KeelError, StoreError};
pub use ids::TenantId;
