//! `SqlStore<DB>`: the `Store` of both backends, every statement written once. What the
//! backends do differently comes from `DB: Dialect`; the statements live in one file per
//! concern, and the `Store` implementation here only hands each call to its file.
//!
//! Every `impl` block of the statement files repeats the bounds of [`SqlStore`]'s own: Rust
//! does not carry a trait's `where` clauses to its users (rust-lang/rust#20671), so bounds
//! such as `String: Encode<DB>` cannot live on `Dialect` itself. Each one is what sqlx needs
//! to run a statement, bind a type or read a column.

mod audit;
mod identities;
mod keys;
mod limits;
mod mfa;
mod outbox;
mod rows;
mod sessions;
mod sign_in;
mod tokens;
mod users;

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Type};

use super::dialect::Dialect;
use super::{
    AdminChange, ApiKey, AttemptOutcome, AttemptReservation, Credentials, Delivery, KeyOwner,
    LocationLogId, LoginRecord, NewApiKey, NewEmail, NewSession, NewToken, NewUser, OutboxEmail,
    OutboxStats, PoolStats, ProfileChange, Prune, RateKey, RefreshOutcome, Reservation, Rotation,
    Session, SessionUser, Store, StoreError, TokenKind, User, UserPage,
};
use super::{Identity, NewIdentity, NewSsoCode, NewSsoFlow, SsoCode, SsoFlow, Unlink};
use crate::domain::{ApiKeyId, SessionId, UserId, UserUid};
use crate::store::{
    AuditEvent, AuditFilter, MfaChallenge, NewAuditEvent, NewSignInNotice, TotpRecord,
};
use crate::time::Timestamp;

/// A store over one SQL backend.
pub struct SqlStore<DB: Dialect> {
    pool: Pool<DB>,
    /// Statements of the hot path, put together once rather than per request.
    hot: sessions::HotStatements,
}

impl<DB: Dialect> SqlStore<DB> {
    /// Over a pool whose database is already migrated.
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            hot: sessions::HotStatements::new::<DB>(),
        }
    }

    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

/// A Rust type that the backend binds as a parameter and reads from a column.
pub trait Value<DB: Database>:
    for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

impl<DB: Database, T> Value<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

#[async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    String: Value<DB>,
    i64: Value<DB>,
    i32: Value<DB>,
    bool: Value<DB>,
    Timestamp: Value<DB>,
    Option<String>: Value<DB>,
    Option<bool>: Value<DB>,
    Option<Timestamp>: Value<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(
        &self,
        user: &NewUser,
        verification: &NewToken,
        welcome: &NewEmail,
    ) -> Result<User, StoreError> {
        SqlStore::create_user(self, user, verification, welcome).await
    }
    async fn find_credentials(&self, identifier: &str) -> Result<Option<Credentials>, StoreError> {
        SqlStore::find_credentials(self, identifier).await
    }
    async fn credentials_by_id(&self, id: UserId) -> Result<Option<Credentials>, StoreError> {
        SqlStore::credentials_by_id(self, id).await
    }
    async fn upgrade_password_hash(
        &self,
        id: UserId,
        old: &str,
        new: &str,
    ) -> Result<(), StoreError> {
        SqlStore::upgrade_password_hash(self, id, old, new).await
    }
    async fn update_profile(&self, id: UserId, change: &ProfileChange) -> Result<User, StoreError> {
        SqlStore::update_profile(self, id, change).await
    }
    async fn delete_user(&self, id: UserId) -> Result<(), StoreError> {
        SqlStore::delete_user(self, id).await
    }
    async fn clear_sign_in_failures(&self, id: UserId) -> Result<u64, StoreError> {
        SqlStore::clear_sign_in_failures(self, id).await
    }

    async fn start_session(
        &self,
        session: &NewSession,
        attempt: &AttemptOutcome,
    ) -> Result<Option<LocationLogId>, StoreError> {
        SqlStore::start_session(self, session, attempt).await
    }
    async fn session_by_id(
        &self,
        id: &SessionId,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError> {
        SqlStore::session_by_id(self, id, now).await
    }
    async fn sessions_by_ids(
        &self,
        ids: &[SessionId],
        now: Timestamp,
    ) -> Result<Vec<SessionUser>, StoreError> {
        SqlStore::sessions_by_ids(self, ids, now).await
    }

    fn coalesces_lookups(&self) -> bool {
        DB::COALESCE_LOOKUPS
    }

    async fn session_by_cookie(
        &self,
        cookie_hash: &str,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError> {
        SqlStore::session_by_cookie(self, cookie_hash, now).await
    }
    async fn rotate_refresh_token(&self, r: &Rotation) -> Result<RefreshOutcome, StoreError> {
        SqlStore::rotate_refresh_token(self, r).await
    }
    async fn touch_session(&self, id: &SessionId, now: Timestamp) -> Result<(), StoreError> {
        SqlStore::touch_session(self, id, now).await
    }
    async fn list_sessions(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> Result<Vec<Session>, StoreError> {
        SqlStore::list_sessions(self, user, now).await
    }
    async fn revoke_session(
        &self,
        user: UserId,
        id: &SessionId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        SqlStore::revoke_session(self, user, id, now).await
    }
    async fn revoke_all_sessions(
        &self,
        user: UserId,
        api_keys: bool,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        SqlStore::revoke_all_sessions(self, user, api_keys, now).await
    }

    async fn issue_token(
        &self,
        user: UserId,
        token: &NewToken,
        email: &NewEmail,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        SqlStore::issue_token(self, user, token, email, now).await
    }
    async fn token_user(
        &self,
        kind: TokenKind,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<User>, StoreError> {
        SqlStore::token_user(self, kind, hash, now).await
    }
    async fn reset_password(
        &self,
        hash: &str,
        password_hash: &str,
        notice: &NewEmail,
        audit: &NewAuditEvent,
        now: Timestamp,
    ) -> Result<Option<User>, StoreError> {
        SqlStore::reset_password(self, hash, password_hash, notice, audit, now).await
    }
    async fn verified_by_token(&self, hash: &str) -> Result<bool, StoreError> {
        SqlStore::verified_by_token(self, hash).await
    }
    async fn verify_email(&self, hash: &str, now: Timestamp) -> Result<Option<User>, StoreError> {
        SqlStore::verify_email(self, hash, now).await
    }
    async fn change_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep_session: &SessionId,
        notice: &NewEmail,
        audit: &NewAuditEvent,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        SqlStore::change_password(self, user, password_hash, keep_session, notice, audit, now).await
    }

    async fn reserve_sign_in(&self, a: &AttemptReservation) -> Result<Reservation, StoreError> {
        SqlStore::reserve_sign_in(self, a).await
    }
    async fn finish_sign_in(
        &self,
        o: &AttemptOutcome,
    ) -> Result<Option<LocationLogId>, StoreError> {
        SqlStore::finish_sign_in(self, o).await
    }
    async fn set_location(
        &self,
        log: LocationLogId,
        location: &serde_json::Value,
    ) -> Result<(), StoreError> {
        SqlStore::set_location(self, log, location).await
    }
    async fn take_rate_limit(
        &self,
        bucket: &str,
        keys: &[RateKey<'_>],
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        SqlStore::take_rate_limit(self, bucket, keys, since, now).await
    }
    async fn prune_rate_limits(&self, before: Timestamp) -> Result<u64, StoreError> {
        SqlStore::prune_rate_limits(self, before).await
    }
    async fn prune(&self, what: Prune, batch: i64) -> Result<u64, StoreError> {
        SqlStore::prune(self, what, batch).await
    }
    async fn login_history(
        &self,
        user: UserId,
        limit: i64,
    ) -> Result<Vec<LoginRecord>, StoreError> {
        SqlStore::login_history(self, user, limit).await
    }

    async fn user_by_uid(&self, uid: &UserUid) -> Result<Option<User>, StoreError> {
        SqlStore::user_by_uid(self, uid).await
    }
    async fn list_users(
        &self,
        query: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<UserPage, StoreError> {
        SqlStore::list_users(self, query, offset, limit).await
    }
    async fn admin_update_user(
        &self,
        user: UserId,
        change: &AdminChange,
        now: Timestamp,
    ) -> Result<User, StoreError> {
        SqlStore::admin_update_user(self, user, change, now).await
    }

    async fn create_api_key(
        &self,
        key: &NewApiKey,
        notice: &NewEmail,
        audit: &NewAuditEvent,
    ) -> Result<(), StoreError> {
        SqlStore::create_api_key(self, key, notice, audit).await
    }
    async fn list_api_keys(&self, user: UserId) -> Result<Vec<ApiKey>, StoreError> {
        SqlStore::list_api_keys(self, user).await
    }
    async fn delete_api_key(
        &self,
        user: UserId,
        id: &ApiKeyId,
        audit: &NewAuditEvent,
    ) -> Result<bool, StoreError> {
        SqlStore::delete_api_key(self, user, id, audit).await
    }
    async fn api_key_owner(
        &self,
        id: &ApiKeyId,
        now: Timestamp,
    ) -> Result<Option<KeyOwner>, StoreError> {
        SqlStore::api_key_owner(self, id, now).await
    }
    async fn touch_api_key(&self, id: &ApiKeyId, now: Timestamp) -> Result<(), StoreError> {
        SqlStore::touch_api_key(self, id, now).await
    }

    async fn claim_email(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Option<OutboxEmail>, StoreError> {
        SqlStore::claim_email(self, now, lease_until).await
    }
    async fn finish_email(
        &self,
        id: i64,
        delivery: &Delivery,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        SqlStore::finish_email(self, id, delivery, now).await
    }

    async fn identity_user(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<User>, StoreError> {
        SqlStore::identity_user(self, provider, subject).await
    }
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        SqlStore::user_by_email(self, email).await
    }
    async fn create_social_user(
        &self,
        user: &NewUser,
        email_verified: bool,
        identity: &NewIdentity,
    ) -> Result<User, StoreError> {
        SqlStore::create_social_user(self, user, email_verified, identity).await
    }
    async fn link_identity(
        &self,
        user: UserId,
        identity: &NewIdentity,
        notice: &NewEmail,
    ) -> Result<(), StoreError> {
        SqlStore::link_identity(self, user, identity, notice).await
    }
    async fn list_identities(&self, user: UserId) -> Result<Vec<Identity>, StoreError> {
        SqlStore::list_identities(self, user).await
    }
    async fn unlink_identity(&self, user: UserId, provider: &str) -> Result<Unlink, StoreError> {
        SqlStore::unlink_identity(self, user, provider).await
    }
    async fn create_sso_flow(&self, flow: &NewSsoFlow) -> Result<(), StoreError> {
        SqlStore::create_sso_flow(self, flow).await
    }
    async fn take_sso_flow(&self, state_hash: &str) -> Result<Option<SsoFlow>, StoreError> {
        SqlStore::take_sso_flow(self, state_hash).await
    }
    async fn create_sso_code(&self, code: &NewSsoCode) -> Result<(), StoreError> {
        SqlStore::create_sso_code(self, code).await
    }
    async fn take_sso_code(&self, code_hash: &str) -> Result<Option<SsoCode>, StoreError> {
        SqlStore::take_sso_code(self, code_hash).await
    }
    async fn totp(&self, user: UserId) -> Result<Option<TotpRecord>, StoreError> {
        SqlStore::totp(self, user).await
    }
    async fn begin_totp(
        &self,
        user: UserId,
        sealed: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        SqlStore::begin_totp(self, user, sealed, now).await
    }
    async fn confirm_totp(
        &self,
        user: UserId,
        step: i64,
        recovery_hashes: &[String],
        audit: &NewAuditEvent,
        notice: &NewEmail,
    ) -> Result<bool, StoreError> {
        SqlStore::confirm_totp(self, user, step, recovery_hashes, audit, notice).await
    }
    async fn accept_totp_step(&self, user: UserId, step: i64) -> Result<bool, StoreError> {
        SqlStore::accept_totp_step(self, user, step).await
    }
    async fn use_recovery_code(
        &self,
        user: UserId,
        hash: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        SqlStore::use_recovery_code(self, user, hash, now).await
    }
    async fn recovery_codes_left(&self, user: UserId) -> Result<i64, StoreError> {
        SqlStore::recovery_codes_left(self, user).await
    }
    async fn remove_totp(
        &self,
        user: UserId,
        audit: &NewAuditEvent,
        notice: &NewEmail,
    ) -> Result<bool, StoreError> {
        SqlStore::remove_totp(self, user, audit, notice).await
    }
    async fn create_mfa_challenge(
        &self,
        hash: &str,
        challenge: &MfaChallenge,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        SqlStore::create_mfa_challenge(self, hash, challenge, now, expires_at).await
    }
    async fn mfa_challenge(
        &self,
        hash: &str,
        now: Timestamp,
        max_failures: i32,
    ) -> Result<Option<MfaChallenge>, StoreError> {
        SqlStore::mfa_challenge(self, hash, now, max_failures).await
    }
    async fn use_mfa_challenge(&self, hash: &str, now: Timestamp) -> Result<bool, StoreError> {
        SqlStore::use_mfa_challenge(self, hash, now).await
    }

    async fn record_audit(
        &self,
        event: &NewAuditEvent,
        notice: Option<&NewEmail>,
    ) -> Result<(), StoreError> {
        SqlStore::record_audit(self, event, notice).await
    }
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<AuditEvent>, i64), StoreError> {
        SqlStore::list_audit(self, filter, offset, limit).await
    }
    async fn audit_exists_since(
        &self,
        kind: &str,
        target: &UserUid,
        ip: &str,
        since: Timestamp,
    ) -> Result<bool, StoreError> {
        SqlStore::audit_exists_since(self, kind, target, ip, since).await
    }
    async fn earlier_sign_ins(
        &self,
        user: UserId,
        except: LocationLogId,
        limit: i64,
    ) -> Result<Vec<LoginRecord>, StoreError> {
        SqlStore::earlier_sign_ins(self, user, except, limit).await
    }
    async fn create_sign_in_notice(
        &self,
        notice: &NewSignInNotice,
        email: &NewEmail,
    ) -> Result<(), StoreError> {
        SqlStore::create_sign_in_notice(self, notice, email).await
    }
    async fn use_sign_in_notice(
        &self,
        hash: &str,
        now: Timestamp,
        audit: &NewAuditEvent,
    ) -> Result<Option<User>, StoreError> {
        SqlStore::use_sign_in_notice(self, hash, now, audit).await
    }
    async fn refresh_token_owner(&self, hash: &str) -> Result<Option<UserUid>, StoreError> {
        SqlStore::refresh_token_owner(self, hash).await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        SqlStore::outbox_stats(self).await
    }

    fn pool_stats(&self) -> PoolStats {
        let size = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        PoolStats {
            in_use: size.saturating_sub(idle),
            idle,
        }
    }
}
