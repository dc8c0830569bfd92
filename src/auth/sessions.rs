//! Sessions: sign-in (records, limits, one hash), refresh with rotation and retry grace,
//! authenticating a request by access token or cookie, signing out and listing sessions.

use super::*;

impl Sessions<'_> {
    /// Unknown account, wrong password and deactivated account fail alike, after the same
    /// amount of hashing work.
    pub async fn sign_in(
        &self,
        identifier: &str,
        password: String,
        client: ClientInfo,
    ) -> Result<mfa::SignIn, Error> {
        let identifier = normalize_identifier(identifier);
        let mut errors = ValidationErrors::default();
        if identifier.is_empty() {
            errors.push("username", "Username or email is required.");
        }
        if password.is_empty() {
            errors.push("password", "Password is required.");
        }
        errors.into_result()?;

        // A place in the hashing queue first: refused when overloaded, before anything is
        // recorded against the account.
        let admission = self.passwords.admit()?;
        let (credentials, account, attempt) = {
            let _turn = admission.prepare().await?;
            let credentials = self.store.find_credentials(&identifier).await?;
            let account = credentials.as_ref().map(|c| c.user.clone());
            let attempt = self
                .reserve_attempt(&identifier, account.as_ref(), &client)
                .await?;
            (credentials, account, attempt)
        };

        let stored_hash = credentials.as_ref().map(|c| c.password_hash.clone());
        let verification = self
            .passwords
            .verify_admitted(admission, password.clone(), stored_hash.clone())
            .await?;
        let _turn = self.passwords.finishing().await?;
        let (user, two_factor, needs_rehash) = match (credentials, verification) {
            (Some(c), Verification::Valid { needs_rehash }) if c.user.active => {
                (c.user, c.two_factor, needs_rehash)
            }
            _ => {
                self.finish_attempt(attempt, &client, account.as_ref(), AttemptResult::Failed)
                    .await?;
                return Err(Error::InvalidCredentials);
            }
        };
        if self.config.require_email_verification && !user.email_verified {
            self.finish_attempt(
                attempt,
                &client,
                Some(&user),
                AttemptResult::EmailNotVerified,
            )
            .await?;
            return Err(Error::EmailNotVerified);
        }
        if needs_rehash {
            if let Some(old) = stored_hash {
                self.rehash_in_background(user.db_id, old, password);
            }
        }
        let outcome = self
            .complete_sign_in_knowing(user, two_factor, client, attempt, "password")
            .await?;
        if let mfa::SignIn::Done(tokens) = &outcome {
            tracing::info!(user = %tokens.user.uid, session = %tokens.session_id, "signed in");
        }
        Ok(outcome)
    }

    /// Legacy bcrypt (or weaker argon2) hashes are upgraded after the answer is sent.
    fn rehash_in_background(&self, user_db_id: UserId, old_hash: String, password: String) {
        let passwords = self.passwords.clone();
        let store = Arc::clone(&self.store);
        self.background.spawn(async move {
            let result = match passwords.hash(password).await {
                Ok(hash) => store
                    .upgrade_password_hash(user_db_id, &old_hash, &hash)
                    .await
                    .map_err(Error::from),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not upgrade a password hash");
            }
        });
    }

    /// Opens the session and records the successful attempt, in one transaction. Only the
    /// gate of two-factor authentication (`Auth::complete_sign_in` and
    /// `Auth::complete_sign_in_knowing`) and its second step call it.
    pub(super) async fn start_session(
        &self,
        mut user: User,
        client: ClientInfo,
        attempt: protection::Attempt,
        method: &str,
    ) -> Result<IssuedTokens, Error> {
        let now = self.clock.now();
        let session_cookie = random_token();
        let refresh_token = random_token();
        let session_id = SessionId::new(uuid::Uuid::new_v4().to_string());
        let (mut outcome, lookup) =
            self.outcome(attempt, &client, Some(&user), AttemptResult::Succeeded);
        outcome.method = method.to_owned();
        // The history row as written, for the security notice to judge without reading it back.
        let this = outcome.account.as_ref().map(|account| LoginRecord {
            ip: outcome.ip.clone(),
            location: account.location.clone(),
            user_agent: account.user_agent.clone(),
            success: true,
            created_at: outcome.now,
            method: Some(outcome.method.clone()),
        });
        let log_id = self
            .store
            .start_session(
                &NewSession {
                    id: session_id.clone(),
                    user_db_id: user.db_id,
                    cookie_hash: digest(&session_cookie),
                    refresh_hash: digest(&refresh_token),
                    ip: client.ip.map(|ip| ip.to_string()),
                    user_agent: client.user_agent,
                    now,
                    expires_at: now
                        + time::duration(
                            self.config
                                .refresh_token_ttl
                                .min(self.config.session_max_age),
                        ),
                },
                &outcome,
            )
            .await?;
        self.locate_and_notice(&user, &session_id, log_id.zip(this), lookup);
        user.last_login = Some(now);
        self.issue(user, session_id, session_cookie, refresh_token, now)
    }

    fn issue(
        &self,
        user: User,
        session_id: SessionId,
        session_cookie: String,
        refresh_token: String,
        now: Timestamp,
    ) -> Result<IssuedTokens, Error> {
        let ttl = self.config.access_token_ttl;
        Ok(IssuedTokens {
            access_token: self.jwt.issue(&user, &session_id, now, ttl)?,
            expires_in: ttl.as_secs(),
            refresh_token,
            session_cookie,
            session_id,
            user,
        })
    }

    /// Rotates the refresh token (and the session cookie); a replayed one kills the session.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client: &ClientInfo,
    ) -> Result<IssuedTokens, Error> {
        if refresh_token.is_empty() {
            return Err(Error::Validation(vec![crate::error::FieldError::new(
                "refresh_token",
                "Refresh token is required.",
            )]));
        }
        let now = self.clock.now();
        let new_refresh = random_token();
        let new_cookie = random_token();
        let outcome = self
            .store
            .rotate_refresh_token(&Rotation {
                old_refresh_hash: digest(refresh_token),
                new_refresh_hash: digest(&new_refresh),
                new_cookie_hash: digest(&new_cookie),
                now,
                expires_at: now + time::duration(self.config.refresh_token_ttl),
                max_age: time::duration(self.config.session_max_age),
                // A zero grace is none at all: a racing loser whose clock read came first must
                // still count as reuse.
                grace_since: (!self.config.refresh_reuse_grace.is_zero())
                    .then(|| now - time::duration(self.config.refresh_reuse_grace)),
            })
            .await?;
        match outcome {
            RefreshOutcome::Rotated(su) => {
                self.issue(su.user, su.session.id, new_cookie, new_refresh, now)
            }
            RefreshOutcome::Reused => {
                tracing::warn!("a rotated refresh token was presented again; session revoked");
                let owner = self
                    .store
                    .refresh_token_owner(&digest(refresh_token))
                    .await?;
                let mut event = self.audit_event(
                    "refresh_token_reused",
                    None,
                    None,
                    client,
                    serde_json::json!({"session_revoked": true}),
                );
                event.target = owner;
                self.record(&event, None).await;
                Err(Error::RefreshTokenReused)
            }
            RefreshOutcome::Invalid => Err(Error::Unauthorized),
        }
    }

    /// An access token is good while its signature, `exp` and `iss` hold and its session is
    /// active: one database round trip, which also returns the current user.
    pub async fn authenticate_bearer(&self, token: &str) -> Result<Principal, Error> {
        let claims = self.jwt.verify(token, self.clock.now())?;
        let found = self
            .lookups
            .session(&*self.store, &self.clock, &SessionId::new(claims.sid))
            .await?;
        match found {
            Some(su) if su.user.uid.as_str() == claims.sub => Ok(self.principal(su)),
            _ => Err(Error::Unauthorized),
        }
    }

    pub async fn authenticate_cookie(&self, cookie: &str) -> Result<Principal, Error> {
        let found = self
            .store
            .session_by_cookie(&digest(cookie), self.clock.now())
            .await?;
        found
            .map(|su| self.principal(su))
            .ok_or(Error::Unauthorized)
    }

    fn principal(&self, su: SessionUser) -> Principal {
        let now = self.clock.now();
        if (now - su.session.last_used_at).num_seconds() >= TOUCH_INTERVAL_SECS {
            let store = Arc::clone(&self.store);
            let id = su.session.id.clone();
            self.background.spawn(async move {
                if let Err(e) = store.touch_session(&id, now).await {
                    tracing::warn!(error = %e, "could not record session use");
                }
            });
        }
        Principal {
            user: su.user,
            credential: Credential::Session(su.session.id),
        }
    }

    pub async fn logout(&self, principal: &Principal) -> Result<(), Error> {
        self.store
            .revoke_session(
                principal.user.db_id,
                principal.session_id()?,
                self.clock.now(),
            )
            .await?;
        Ok(())
    }

    /// Ends every session of the caller, and with `api_keys` revokes every key too.
    pub async fn logout_all(&self, principal: &Principal, api_keys: bool) -> Result<u64, Error> {
        principal.session_id()?;
        let ended = self
            .store
            .revoke_all_sessions(principal.user.db_id, api_keys, self.clock.now())
            .await?;
        tracing::info!(user = %principal.user.uid, sessions = ended, api_keys, "signed out everywhere");
        Ok(ended)
    }

    pub async fn list(&self, principal: &Principal) -> Result<Vec<Session>, Error> {
        principal.session_id()?;
        Ok(self
            .store
            .list_sessions(principal.user.db_id, self.clock.now())
            .await?)
    }

    pub async fn revoke(&self, principal: &Principal, session_id: &str) -> Result<(), Error> {
        principal.session_id()?;
        // Session ids are UUIDs; anything else names no session (and never reaches SQL).
        if uuid::Uuid::parse_str(session_id).is_err() {
            return Err(Error::NotFound("session"));
        }
        if self
            .store
            .revoke_session(
                principal.user.db_id,
                &SessionId::new(session_id),
                self.clock.now(),
            )
            .await?
        {
            Ok(())
        } else {
            Err(Error::NotFound("session"))
        }
    }
}
