//! One helper per route: `app.sign_in(&user)` answers typed values and asserts the success;
//! `app.try_…` answers the raw response, for tests that look at a refusal.

use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::helpers::{parse, TestApp, TestUser, PASSWORD, SECRET};
use crate::responses::{
    CreatedAccount, CreatedKey, Keys, LoginHistory, Message, Sessions, Tokens, User,
};

impl TestApp {
    // Accounts.

    /// Create-account with any body (odd, missing or extra fields).
    pub async fn try_sign_up_with(&self, body: Value) -> Response {
        self.post("/api/users/create-account", body).await
    }

    pub async fn try_sign_up(&self, user: &TestUser) -> Response {
        self.try_sign_up_with(json!({"name": user.name, "username": user.username,
            "email": user.email, "password": user.password}))
            .await
    }

    /// Creates the account: the user as the service shows it.
    pub async fn sign_up(&self, user: &TestUser) -> User {
        parse::<CreatedAccount>(self.try_sign_up(user).await, 201)
            .await
            .user
    }

    /// Creates the account and signs in.
    pub async fn sign_up_and_in(&self, user: &TestUser) -> Tokens {
        self.sign_up(user).await;
        self.sign_in(user).await
    }

    /// A new user, signed up and signed in.
    pub async fn signed_in_user(&self) -> (TestUser, Tokens) {
        let user = TestUser::new();
        let tokens = self.sign_up_and_in(&user).await;
        (user, tokens)
    }

    /// `GET /api/users/me`: the caller's profile.
    pub async fn profile(&self, tokens: &Tokens) -> User {
        parse(self.get_with("/api/users/me", &tokens.token).await, 200).await
    }

    pub async fn update_profile(&self, tokens: &Tokens, changes: Value) -> Response {
        self.request(
            Method::PATCH,
            "/api/users/me",
            Some(&tokens.token),
            Some(changes),
        )
        .await
    }

    pub async fn delete_account(&self, tokens: &Tokens, password: &str) -> Response {
        self.request(
            Method::DELETE,
            "/api/users/me",
            Some(&tokens.token),
            Some(json!({ "password": password })),
        )
        .await
    }

    pub async fn login_history(&self, token: &str) -> LoginHistory {
        parse(
            self.get_with("/api/users/me/login-history", token).await,
            200,
        )
        .await
    }

    // Sign-in, tokens, sessions.

    /// Sign-in with any body (`email` instead of `username`, missing fields).
    pub async fn try_sign_in_with(&self, body: Value) -> Response {
        self.post("/api/auth/signin", body).await
    }

    /// Sign-in by username or email.
    pub async fn try_sign_in(&self, identifier: &str, password: &str) -> Response {
        self.try_sign_in_with(json!({"username": identifier, "password": password}))
            .await
    }

    pub async fn sign_in(&self, user: &TestUser) -> Tokens {
        self.sign_in_as(&user.username, &user.password).await
    }

    pub async fn sign_in_as(&self, identifier: &str, password: &str) -> Tokens {
        parse(self.try_sign_in(identifier, password).await, 200).await
    }

    pub async fn try_refresh(&self, refresh_token: &str) -> Response {
        self.post(
            "/api/auth/refresh",
            json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    /// Trades the refresh token for new tokens.
    pub async fn refresh(&self, tokens: &Tokens) -> Tokens {
        parse(self.try_refresh(&tokens.refresh_token).await, 200).await
    }

    /// `GET /api/auth/me` with an access token or an API key.
    pub async fn try_me(&self, token: &str) -> Response {
        self.get_with("/api/auth/me", token).await
    }

    pub async fn me(&self, tokens: &Tokens) -> User {
        parse(self.try_me(&tokens.token).await, 200).await
    }

    pub async fn try_logout(&self, token: &str) -> Response {
        self.request(Method::POST, "/api/auth/logout", Some(token), None)
            .await
    }

    pub async fn logout(&self, tokens: &Tokens) -> Message {
        parse(self.try_logout(&tokens.token).await, 200).await
    }

    /// Ends every session of the caller (keys stay).
    pub async fn logout_all(&self, tokens: &Tokens) {
        let r = self
            .request(
                Method::POST,
                "/api/auth/logout-all",
                Some(&tokens.token),
                None,
            )
            .await;
        parse::<Message>(r, 200).await;
    }

    /// Ends every session of the caller and deletes their API keys.
    pub async fn logout_all_and_keys(&self, tokens: &Tokens) {
        let r = self
            .request(
                Method::POST,
                "/api/auth/logout-all",
                Some(&tokens.token),
                Some(json!({"api_keys": true})),
            )
            .await;
        parse::<Message>(r, 200).await;
    }

    pub async fn sessions(&self, tokens: &Tokens) -> Sessions {
        parse(
            self.get_with("/api/auth/sessions", &tokens.token).await,
            200,
        )
        .await
    }

    pub async fn revoke_session(&self, tokens: &Tokens, session_id: &str) -> Response {
        self.request(
            Method::DELETE,
            &format!("/api/auth/sessions/{session_id}"),
            Some(&tokens.token),
            None,
        )
        .await
    }

    // Email: verification and recovery.

    /// Opens the link of a verification email, as a browser does: an HTML page.
    pub async fn open_verification_link(&self, token: &str) -> Response {
        self.client
            .get(self.url(&format!("/api/auth/verify-email?token={token}")))
            .send()
            .await
            .unwrap()
    }

    /// The API form of verification.
    pub async fn verify_email(&self, token: &str) -> Response {
        self.post("/api/auth/verify-email", json!({ "token": token }))
            .await
    }

    pub async fn resend_verification(&self, email: &str) -> Response {
        self.post("/api/auth/resend-verification", json!({ "email": email }))
            .await
    }

    pub async fn forgot_password(&self, email: &str) -> Response {
        self.post("/api/password/forgot-password", json!({ "email": email }))
            .await
    }

    pub async fn reset_password(&self, token: &str, password: &str) -> Response {
        self.post(
            "/api/password/reset-password",
            json!({"token": token, "password": password}),
        )
        .await
    }

    pub async fn change_password(&self, tokens: &Tokens, current: &str, new: &str) -> Response {
        self.request(
            Method::POST,
            "/api/password/change",
            Some(&tokens.token),
            Some(json!({"current_password": current, "new_password": new})),
        )
        .await
    }

    // API keys.

    /// `POST /api/keys` with this body; the account's password is added unless it has one.
    pub async fn try_create_key(&self, tokens: &Tokens, mut body: Value) -> Response {
        if body.get("password").is_none() {
            body["password"] = json!(PASSWORD);
        }
        self.request(Method::POST, "/api/keys", Some(&tokens.token), Some(body))
            .await
    }

    /// A new key (`{"name": …, "scopes": […], "expires_in_days": …}`).
    pub async fn create_key(&self, tokens: &Tokens, body: Value) -> CreatedKey {
        parse(self.try_create_key(tokens, body).await, 201).await
    }

    pub async fn keys(&self, tokens: &Tokens) -> Keys {
        parse(self.get_with("/api/keys", &tokens.token).await, 200).await
    }

    pub async fn delete_key(&self, tokens: &Tokens, id: &str) -> Response {
        self.request(
            Method::DELETE,
            &format!("/api/keys/{id}"),
            Some(&tokens.token),
            None,
        )
        .await
    }

    /// Any request authenticated by an API key (`X-API-Key`).
    pub async fn with_key(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let mut req = self
            .client
            .request(method, self.url(path))
            .header("x-api-key", key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    /// The profile, as a script holding an API key reads it.
    pub async fn profile_with_key(&self, key: &str) -> Response {
        self.with_key(key, Method::GET, "/api/users/me", None).await
    }

    // Administration.

    /// Runs `authflow create-admin` against this server's database; its stdout is the id.
    pub fn run_create_admin(&self, user: &TestUser) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_authflow"))
            .args([
                "create-admin",
                "--username",
                &user.username,
                "--email",
                &user.email,
                "--name",
                "Ada Admin",
            ])
            .env_clear()
            .env("DATABASE_URL", self.database_url())
            .env("JWT_SECRET", SECRET)
            .env("DATA_DIR", self.data_dir())
            .env("ADMIN_PASSWORD", &user.password)
            .output()
            .unwrap()
    }

    /// A new administrator made with the command, signed in.
    pub async fn signed_in_admin(&self) -> (TestUser, Tokens) {
        let admin = TestUser::new();
        let out = self.run_create_admin(&admin);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tokens = self.sign_in(&admin).await;
        (admin, tokens)
    }

    /// `/api/admin/users/{id}` (and below it) as an administrator's session.
    pub async fn admin(
        &self,
        admin: &Tokens,
        method: Method,
        user_id: &str,
        below: &str,
        body: Option<Value>,
    ) -> Response {
        self.request(
            method,
            &format!("/api/admin/users/{user_id}{below}"),
            Some(&admin.token),
            body,
        )
        .await
    }
}
