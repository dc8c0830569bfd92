-- An account's sign-in history is read newest first: the security notice compares each
-- sign-in with the 10 (then 200) before it, and GET /api/users/me/login-history pages through
-- it. With only the legacy index on user_id, every such read sorted the whole history of
-- the account (thousands of rows for one that signs in often, on every sign-in); in this
-- order the read stops after the rows it returns.
CREATE INDEX IF NOT EXISTS user_location_logs_user_recent_idx
    ON user_location_logs (user_id, created_at DESC, log_id DESC);
