-- Auth Flow additions, as in migrations/postgres/20240101000002_authflow_core.sql.

INSERT INTO roles (name, description) VALUES
    ('user', 'A regular account'),
    ('admin', 'Administers accounts')
ON CONFLICT (name) DO NOTHING;

-- Usernames and emails are unique case-insensitively. The index names are what the store
-- reads from SQLite's "UNIQUE constraint failed: index '…'" message to tell which one clashed.
-- (lower() folds ASCII only, as does SQLite's NOCASE; a SQLite database is never an adopted
-- one, so there are no old rows that could clash.)
CREATE UNIQUE INDEX IF NOT EXISTS users_username_lower_key ON users (lower(username));
CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower_key ON users (lower(email));

-- Sessions: one per sign-in. Only SHA-256 digests of the cookie and refresh tokens are kept.
CREATE TABLE IF NOT EXISTS auth_sessions (
    session_id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    cookie_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    last_used_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked_at TEXT,
    ip_address TEXT,
    user_agent TEXT
);
CREATE INDEX IF NOT EXISTS auth_sessions_user_idx ON auth_sessions (user_id);

-- Every refresh token a session was ever given; a used one presented again is a replay.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES auth_sessions(session_id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    used_at TEXT
);
CREATE INDEX IF NOT EXISTS refresh_tokens_session_idx ON refresh_tokens (session_id);
