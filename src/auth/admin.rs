//! Use-cases of administration: finding, changing and removing accounts; making admins.

use super::{
    normalize_identifier, Administration, Auth, ClientInfo, Principal, Registration, Scope,
};
use crate::domain::UserUid;
use crate::error::Error;
use crate::mail::templates::{Email, EmailKind};
use crate::store::{AdminChange, Role, User};

impl Auth {
    /// An administrator, by session or by their key with `scope`; anyone else is refused.
    pub fn require_admin(&self, caller: &Principal, scope: Scope) -> Result<(), Error> {
        if caller.user.role != Role::Admin {
            return Err(Error::Forbidden("This needs an administrator."));
        }
        // users:write includes reading what it changes.
        let allowed = caller.has_scope(scope)
            || (scope == Scope::UsersRead && caller.has_scope(Scope::UsersWrite));
        if !allowed {
            return Err(Error::Forbidden(
                "This API key does not have the scope for this.",
            ));
        }
        Ok(())
    }

    /// The caller's own profile: a session, or a key with `profile:read`.
    pub fn own_profile(&self, caller: &Principal) -> Result<User, Error> {
        if !caller.has_scope(Scope::ProfileRead) {
            return Err(Error::Forbidden(
                "This API key does not have the scope for this.",
            ));
        }
        Ok(caller.user.clone())
    }
}

impl Administration<'_> {
    /// The account an administrative change is about. A key never manages its own owner's
    /// account or sessions (a key cannot manage the account, SPEC §4).
    async fn target_of(&self, caller: &Principal, uid: &str) -> Result<User, Error> {
        let target = self.user(caller, uid).await?;
        if target.db_id == caller.user.db_id && caller.session_id().is_err() {
            return Err(Error::Forbidden(
                "API keys cannot manage the account or sessions of their owner.",
            ));
        }
        Ok(target)
    }

    pub async fn list_users(
        &self,
        caller: &Principal,
        query: Option<&str>,
        page: i64,
        per_page: i64,
    ) -> Result<(Vec<User>, i64), Error> {
        self.require_admin(caller, Scope::UsersRead)?;
        let query = query
            .map(|q| q.trim().replace('\0', ""))
            .filter(|q| !q.is_empty());
        let query = query.as_deref();
        let offset = (page - 1).saturating_mul(per_page);
        let page = self.store.list_users(query, offset, per_page).await?;
        Ok((page.users, page.total))
    }

    pub async fn user(&self, caller: &Principal, uid: &str) -> Result<User, Error> {
        self.require_admin(caller, Scope::UsersRead)?;
        // Ids are at most 100 characters (the old `user_uid` column) and never hold NUL.
        if uid.contains('\0') || uid.chars().count() > 100 {
            return Err(Error::NotFound("user"));
        }
        self.store
            .user_by_uid(&UserUid::new(uid))
            .await?
            .ok_or(Error::NotFound("user"))
    }

    /// A changed role or a deactivation revokes the user's sessions at once; their keys stop
    /// working while they are inactive. An administrator cannot lock themselves out.
    pub async fn update_user(
        &self,
        caller: &Principal,
        uid: &str,
        change: AdminChange,
        client: &ClientInfo,
    ) -> Result<User, Error> {
        self.require_admin(caller, Scope::UsersWrite)?;
        // Roles are changed by a signed-in administrator only: a leaked key must not be able
        // to mint administrators (as create-account refuses keys the same power).
        if change.role.is_some() && caller.session_id().is_err() {
            return Err(Error::Forbidden(
                "Roles are changed by a signed-in administrator, not an API key.",
            ));
        }
        let target = self.target_of(caller, uid).await?;
        let demotes_self = target.db_id == caller.user.db_id
            && (change.role.is_some_and(|r| r != Role::Admin) || change.active == Some(false));
        if demotes_self {
            return Err(Error::Forbidden(
                "Administrators cannot demote or deactivate themselves.",
            ));
        }
        let user = self
            .store
            .admin_update_user(target.db_id, &change, self.clock.now())
            .await?;
        tracing::info!(admin = %caller.user.uid, user = %user.uid, "account changed by an administrator");
        self.record_admin_change(caller, &target, &user, client)
            .await?;
        Ok(user)
    }

    /// Role and status changes go to the audit log; a changed role is emailed to its owner.
    async fn record_admin_change(
        &self,
        caller: &Principal,
        before: &User,
        after: &User,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        if before.role != after.role {
            let event = self.audit_event(
                "role_changed",
                Some(&caller.user),
                Some(after),
                client,
                serde_json::json!({"from": before.role.as_str(), "to": after.role.as_str()}),
            );
            let what = format!(
                "An administrator changed the role of your Auth Flow account from {} to {}. Your sessions were signed out; sign in again.",
                before.role.as_str(),
                after.role.as_str()
            );
            let notice = self.render(
                &after.email,
                &Email::Notice {
                    kind: EmailKind::AccountChangedByAdmin,
                    name: &after.name,
                    what: &what,
                    facts: &[format!("Administrator: {}", caller.user.username)],
                    action: None,
                },
            )?;
            self.record(&event, Some(&notice)).await;
        }
        if before.active != after.active {
            let event = self.audit_event(
                if after.active {
                    "account_activated"
                } else {
                    "account_deactivated"
                },
                Some(&caller.user),
                Some(after),
                client,
                serde_json::json!({"active": after.active}),
            );
            self.record(&event, None).await;
        }
        if before.email_verified != after.email_verified {
            let event = self.audit_event(
                "email_verification_changed",
                Some(&caller.user),
                Some(after),
                client,
                serde_json::json!({"email_verified": after.email_verified}),
            );
            self.record(&event, None).await;
        }
        Ok(())
    }

    pub async fn delete_user(&self, caller: &Principal, uid: &str) -> Result<(), Error> {
        self.require_admin(caller, Scope::UsersWrite)?;
        let target = self.target_of(caller, uid).await?;
        if target.db_id == caller.user.db_id {
            return Err(Error::Forbidden(
                "Administrators delete their own account with DELETE /api/users/me.",
            ));
        }
        self.store.delete_user(target.db_id).await?;
        tracing::info!(admin = %caller.user.uid, user = %target.uid, "account deleted by an administrator");
        Ok(())
    }

    pub async fn logout_all(&self, caller: &Principal, uid: &str) -> Result<u64, Error> {
        self.require_admin(caller, Scope::UsersWrite)?;
        let target = self.target_of(caller, uid).await?;
        Ok(self
            .store
            .revoke_all_sessions(target.db_id, false, self.clock.now())
            .await?)
    }

    /// Clears every sign-in failure counted against the account (`users:write`).
    pub async fn unlock(&self, caller: &Principal, uid: &str) -> Result<u64, Error> {
        self.require_admin(caller, Scope::UsersWrite)?;
        let target = self.target_of(caller, uid).await?;
        let cleared = self.clear_sign_in_failures(&target).await?;
        tracing::info!(admin = %caller.user.uid, user = %target.uid, cleared, "sign-in failures cleared by an administrator");
        Ok(cleared)
    }

    /// `authflow create-admin`, for an existing username: makes it an administrator (its
    /// sessions end, as on any role change). `None` when there is no such account.
    pub async fn promote_to_admin(&self, username: &str) -> Result<Option<User>, Error> {
        let existing = self
            .store
            .find_credentials(&normalize_identifier(username))
            .await?
            .filter(|c| c.user.username.eq_ignore_ascii_case(username.trim()));
        let Some(existing) = existing else {
            return Ok(None);
        };
        let change = AdminChange {
            role: Some(Role::Admin),
            ..AdminChange::default()
        };
        let user = self
            .store
            .admin_update_user(existing.user.db_id, &change, self.clock.now())
            .await?;
        Ok(Some(user))
    }

    /// `authflow create-admin`, for a new username: creates the account as an administrator,
    /// its email taken as verified (the operator who runs the command vouches for it).
    pub async fn create_admin(
        &self,
        username: &str,
        email: &str,
        name: Option<&str>,
        password: &str,
    ) -> Result<User, Error> {
        let registration = Registration {
            name: name.unwrap_or("Administrator").to_owned(),
            username: username.to_owned(),
            email: email.to_owned(),
            password: password.to_owned(),
            phone: None,
            role: None,
        };
        let user = self
            .accounts()
            .create_account(registration, Role::Admin, None)
            .await?;
        let verified = AdminChange {
            email_verified: Some(true),
            ..AdminChange::default()
        };
        Ok(self
            .store
            .admin_update_user(user.db_id, &verified, self.clock.now())
            .await?)
    }
}
