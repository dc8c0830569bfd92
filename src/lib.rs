//! Auth Flow: a self-hosted authentication service.

/// `App::build` and the server loop.
pub mod app;
/// Use-cases: accounts, sign-in, tokens, sessions; password hashing; JWT.
pub mod auth;
/// Configuration from the environment (SPEC §2).
pub mod config;
/// Validated input types, typed ids, field errors.
pub(crate) mod domain;
/// The use-cases' error type (its HTTP envelope is `http::error`).
pub mod error;
/// Owner-only folders and files.
pub(crate) mod files;
/// Client IP resolution.
pub(crate) mod geo;
/// Routes, extractors and layers.
pub(crate) mod http;
/// Email templates, outbox worker and transports.
pub mod mail;
/// The accept loop: connections, their timeouts and cap, graceful shutdown.
pub mod server;
/// Storage backends behind `trait Store`.
pub mod store;
/// Background work, tracked for shutdown and tests.
pub mod tasks;
/// `GET /metrics`: the Prometheus recorder and its own listener.
pub(crate) mod telemetry;
/// The service's clock and timestamps.
pub mod time;
/// HTTPS served directly: certificates, their rotation, client certificates.
pub mod tls;
/// Reading and checking environment variables; secrets that never print.
pub(crate) mod vars;
