//! What an API key may do.

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub enum Scope {
    /// The owner's own profile and sign-in history.
    #[serde(rename = "profile:read")]
    ProfileRead,
    /// The admin routes, reading (an administrator's key only).
    #[serde(rename = "users:read")]
    UsersRead,
    /// The admin routes, changing (an administrator's key only).
    #[serde(rename = "users:write")]
    UsersWrite,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ProfileRead => "profile:read",
            Scope::UsersRead => "users:read",
            Scope::UsersWrite => "users:write",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "profile:read" => Some(Scope::ProfileRead),
            "users:read" => Some(Scope::UsersRead),
            "users:write" => Some(Scope::UsersWrite),
            _ => None,
        }
    }

    /// Stored as a space-separated list; unknown names (from a newer version) are dropped.
    pub fn parse_list(list: &str) -> Vec<Scope> {
        list.split_whitespace().filter_map(Scope::parse).collect()
    }

    /// The stored form of a list: names separated by a space.
    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_lists_round_trip() {
        let all = [Scope::UsersWrite, Scope::ProfileRead];
        assert_eq!(Scope::parse_list(&Scope::join(&all)), all);
    }
}
