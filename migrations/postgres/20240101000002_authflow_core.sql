-- Auth Flow additions. Only adds: the old service's tables keep working as they were.

INSERT INTO roles (name, description) VALUES
    ('user', 'A regular account'),
    ('admin', 'Administers accounts')
ON CONFLICT (name) DO NOTHING;

-- Usernames and emails are unique case-insensitively. An adopted database with rows that
-- differ only in case cannot be resolved automatically: stop and name them.
DO $$
DECLARE
    clashes TEXT;
BEGIN
    SELECT string_agg(v, ', ') INTO clashes FROM (
        SELECT 'username ' || lower(username) AS v FROM users GROUP BY lower(username) HAVING count(*) > 1
        UNION ALL
        SELECT 'email ' || lower(email) FROM users GROUP BY lower(email) HAVING count(*) > 1
    ) d;
    IF clashes IS NOT NULL THEN
        RAISE EXCEPTION 'users differ only in letter case (%); rename or merge them, then start again', clashes;
    END IF;
END
$$;

CREATE UNIQUE INDEX IF NOT EXISTS users_username_lower_key ON users (lower(username));
CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower_key ON users (lower(email));

-- Sessions: one per sign-in. Only SHA-256 digests of the cookie and refresh tokens are kept.
CREATE TABLE IF NOT EXISTS auth_sessions (
    session_id TEXT PRIMARY KEY,
    user_id INT NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    cookie_hash CHAR(64) NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ,
    ip_address VARCHAR(45),
    user_agent VARCHAR(255)
);
CREATE INDEX IF NOT EXISTS auth_sessions_user_idx ON auth_sessions (user_id);

-- Every refresh token a session was ever given; a used one presented again is a replay.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash CHAR(64) PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES auth_sessions(session_id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS refresh_tokens_session_idx ON refresh_tokens (session_id);
