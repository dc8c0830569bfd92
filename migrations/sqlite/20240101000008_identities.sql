-- Social sign-in, as in migrations/postgres/20240101000008_identities.sql.
CREATE TABLE IF NOT EXISTS user_identities (
    identity_id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    email TEXT,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    UNIQUE (provider, subject),
    UNIQUE (user_id, provider)
);

CREATE TABLE IF NOT EXISTS sso_flows (
    state_hash TEXT PRIMARY KEY,
    browser_hash TEXT NOT NULL,
    provider TEXT NOT NULL,
    redirect_to TEXT,
    link_user_id INTEGER REFERENCES users(user_db_id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sso_flows_expires_idx ON sso_flows (expires_at);

CREATE TABLE IF NOT EXISTS sso_codes (
    code_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    method TEXT NOT NULL,
    attempt_id INTEGER NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sso_codes_expires_idx ON sso_codes (expires_at);

ALTER TABLE user_location_logs ADD COLUMN method TEXT;
