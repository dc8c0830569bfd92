-- Two-factor authentication, security notices and the audit log, as in
-- migrations/postgres/20240101000009_mfa_audit.sql.
CREATE TABLE IF NOT EXISTS mfa_totp (
    user_id INTEGER PRIMARY KEY REFERENCES users(user_db_id) ON DELETE CASCADE,
    secret_sealed TEXT NOT NULL,
    created_at TEXT NOT NULL,
    confirmed_at TEXT,
    last_step INTEGER
);

CREATE TABLE IF NOT EXISTS mfa_recovery_codes (
    code_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    used_at TEXT
);
CREATE INDEX IF NOT EXISTS mfa_recovery_codes_user_idx ON mfa_recovery_codes (user_id);

CREATE TABLE IF NOT EXISTS mfa_challenges (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    attempt_id INTEGER NOT NULL,
    method TEXT NOT NULL DEFAULT 'password',
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    used_at TEXT
);
CREATE INDEX IF NOT EXISTS mfa_challenges_user_idx ON mfa_challenges (user_id);

CREATE TABLE IF NOT EXISTS sign_in_notices (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    session_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
);
CREATE INDEX IF NOT EXISTS sign_in_notices_user_idx ON sign_in_notices (user_id);

CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor_uid TEXT,
    target_uid TEXT,
    ip TEXT,
    user_agent TEXT,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_log_target_idx ON audit_log (target_uid, id);
CREATE INDEX IF NOT EXISTS audit_log_actor_idx ON audit_log (actor_uid, id);
CREATE INDEX IF NOT EXISTS audit_log_time_idx ON audit_log (created_at);
