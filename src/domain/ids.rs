//! Identifiers of what the service keeps, each its own type so one is never passed for another.

use std::fmt;

/// The internal key of an account (`users.user_db_id`); it never leaves the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(transparent)]
pub struct UserId(i64);

impl UserId {
    pub fn new(id: i64) -> Self {
        Self(id)
    }
    pub fn get(self) -> i64 {
        self.0
    }
}

/// Defines a text identifier: stored and compared as given, shown as its text.
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, sqlx::Type)]
        #[sqlx(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

text_id!(
    /// The public id of an account (`user_uid`): a UUID for accounts we create, any text of at
    /// most 100 characters for those adopted from the old service.
    UserUid
);
text_id!(
    /// A session's id (a UUID), also the `sid` claim of its access tokens.
    SessionId
);
text_id!(
    /// The public part of an API key: 16 hex characters.
    ApiKeyId
);
