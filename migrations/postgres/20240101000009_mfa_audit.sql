-- Two-factor authentication, security notices and the audit log (SPEC §13).

-- One TOTP secret per account, sealed (ChaCha20-Poly1305, base64 of nonce || ciphertext).
-- `confirmed_at` NULL: set up but not yet confirmed with a first code (not in force).
-- `last_step`: the last accepted RFC 6238 time step; a code of that step or earlier is refused.
CREATE TABLE IF NOT EXISTS mfa_totp (
    user_id INT PRIMARY KEY REFERENCES users(user_db_id) ON DELETE CASCADE,
    secret_sealed TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    confirmed_at TIMESTAMPTZ,
    last_step BIGINT
);

-- Recovery codes, as SHA-256 digests; single use.
CREATE TABLE IF NOT EXISTS mfa_recovery_codes (
    code_hash CHAR(64) PRIMARY KEY,
    user_id INT NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS mfa_recovery_codes_user_idx ON mfa_recovery_codes (user_id);

-- The second step of a sign-in: `mfa_token` as a digest, with the sign-in attempt it completes
-- and how the first factor was proved (`password`, `github`, `google`, `oidc:<name>`).
CREATE TABLE IF NOT EXISTS mfa_challenges (
    token_hash CHAR(64) PRIMARY KEY,
    user_id INT NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    attempt_id BIGINT NOT NULL,
    method TEXT NOT NULL DEFAULT 'password',
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    failures INT NOT NULL DEFAULT 0,
    used_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS mfa_challenges_user_idx ON mfa_challenges (user_id);

-- "This wasn't me" links of new-sign-in notices: digest, the session it names, single use.
CREATE TABLE IF NOT EXISTS sign_in_notices (
    token_hash CHAR(64) PRIMARY KEY,
    user_id INT NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    session_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS sign_in_notices_user_idx ON sign_in_notices (user_id);

-- Append-only: the code inserts and reads, never updates or deletes. Users are named by
-- their public id (no foreign key), so the trail outlives a deleted account.
CREATE TABLE IF NOT EXISTS audit_log (
    id BIGSERIAL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    kind TEXT NOT NULL,
    actor_uid TEXT,
    target_uid TEXT,
    ip TEXT,
    user_agent TEXT,
    details JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS audit_log_target_idx ON audit_log (target_uid, id);
CREATE INDEX IF NOT EXISTS audit_log_actor_idx ON audit_log (actor_uid, id);
CREATE INDEX IF NOT EXISTS audit_log_time_idx ON audit_log (created_at);
