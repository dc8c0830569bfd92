//! Email: templates, the outbox worker, and the SMTP and dev-mailbox transports.

pub mod outbox;
pub(crate) mod settings;
pub(crate) mod templates;
pub mod transport;
