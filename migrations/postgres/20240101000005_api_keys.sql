-- API keys: `afk_<key_id>_<secret>`. Only the SHA-256 digest of the secret is kept; the key
-- is looked up by its id and the digest compared in constant time.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    user_id INT NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    name VARCHAR(100) NOT NULL,
    secret_hash CHAR(64) NOT NULL,
    -- Space-separated: profile:read, users:read, users:write.
    scopes TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS api_keys_user_idx ON api_keys (user_id);
