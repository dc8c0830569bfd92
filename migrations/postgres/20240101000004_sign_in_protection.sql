-- Sign-in protection. login_attempts (the old table) is the failure counter: one row per
-- attempt. Attempts refused before the password was judged (by a limit) or for an
-- unverified email are recorded with counted = FALSE and never count as failures.
ALTER TABLE login_attempts ADD COLUMN IF NOT EXISTS counted BOOLEAN NOT NULL DEFAULT TRUE;
CREATE INDEX IF NOT EXISTS login_attempts_identifier_idx ON login_attempts (email_or_username, attempted_at);
CREATE INDEX IF NOT EXISTS login_attempts_ip_idx ON login_attempts (ip_address, attempted_at);

-- Other limited actions (sign-ups, recovery emails): one row per call, counted per key.
CREATE TABLE IF NOT EXISTS rate_limit_hits (
    id BIGSERIAL PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    hit_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_limit_hits_key_idx ON rate_limit_hits (bucket, key, hit_at);
