//! The one integration-test binary: every behaviour runs against a real server, once on
//! SQLite and once on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The clock and spawn rules of clippy.toml bind the service; the stand-in servers here (SMTP,
// ipinfo, a TCP proxy) run their own tasks, and forged tokens read the real time.
#![allow(clippy::disallowed_methods)]

mod fake_provider;
mod helpers;
mod ipinfo_standin;
mod responses;
mod routes;
mod smtp_sink;
mod tcp_proxy;

mod accounts;
mod admin;
mod audit;
mod browser;
mod email;
mod embedded;
mod hardening;
mod hardening_edge;
mod legacy;
mod mfa;
mod notices;
mod overload;
mod pages;
mod protection;
mod service;
mod sessions;
mod signin;
mod sso;
mod tls;
