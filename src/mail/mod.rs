//! Email: templates, the outbox worker, and the SMTP and dev-mailbox transports.

pub mod outbox;
pub mod settings;
pub mod templates;
pub mod transport;
