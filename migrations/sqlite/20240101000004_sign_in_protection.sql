-- Sign-in protection, as in migrations/postgres/20240101000004_sign_in_protection.sql.
ALTER TABLE login_attempts ADD COLUMN counted INTEGER NOT NULL DEFAULT 1;
CREATE INDEX IF NOT EXISTS login_attempts_identifier_idx ON login_attempts (email_or_username, attempted_at);
CREATE INDEX IF NOT EXISTS login_attempts_ip_idx ON login_attempts (ip_address, attempted_at);

CREATE TABLE IF NOT EXISTS rate_limit_hits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    hit_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_limit_hits_key_idx ON rate_limit_hits (bucket, key, hit_at);
