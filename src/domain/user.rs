//! The account as the service sees it, and its role.

use super::{UserId, UserUid};
use crate::time::Timestamp;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    /// Roles other than `admin` in an adopted database (or none) are plain users.
    pub fn from_name(name: Option<&str>) -> Self {
        match name {
            Some("admin") => Role::Admin,
            _ => Role::User,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

/// An account as the service sees it. `db_id` is internal and never leaves the service.
#[derive(Debug, Clone)]
pub struct User {
    pub db_id: UserId,
    pub uid: UserUid,
    pub username: String,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub role: Role,
    pub email_verified: bool,
    pub active: bool,
    pub created_at: Timestamp,
    pub last_login: Option<Timestamp>,
}
