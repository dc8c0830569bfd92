-- Social sign-in (SPEC §11).

-- One row per (provider, subject) linked to an account; a user has at most one identity
-- per provider. `provider` is the sign-in method: github, google, oidc:<name>.
CREATE TABLE IF NOT EXISTS user_identities (
    identity_id BIGSERIAL PRIMARY KEY,
    user_id INT NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    provider VARCHAR(100) NOT NULL,
    subject VARCHAR(255) NOT NULL,
    -- The provider's email when linked (shown on the account page), if it gave one.
    email VARCHAR(200),
    created_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    UNIQUE (provider, subject),
    UNIQUE (user_id, provider)
);

-- A flow started at GET /api/auth/sso/{provider}: found by the digest of its `state`, bound
-- to the browser by the digest of a cookie, deleted when its callback arrives (single use).
-- The PKCE verifier and the nonce are derived from the cookie's secret, never stored.
CREATE TABLE IF NOT EXISTS sso_flows (
    state_hash CHAR(64) PRIMARY KEY,
    browser_hash CHAR(64) NOT NULL,
    provider VARCHAR(100) NOT NULL,
    -- NULL: the pages' own flow (signed in by cookie, back to /account).
    redirect_to TEXT,
    -- Set for an explicit link by a signed-in user.
    link_user_id INT REFERENCES users(user_db_id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS sso_flows_expires_idx ON sso_flows (expires_at);

-- One-time codes handed to the front-end by the callback, exchanged at
-- POST /api/auth/sso/exchange: 60 s, single use, stored as digests.
CREATE TABLE IF NOT EXISTS sso_codes (
    code_hash CHAR(64) PRIMARY KEY,
    user_id INT NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE,
    method VARCHAR(100) NOT NULL,
    attempt_id BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS sso_codes_expires_idx ON sso_codes (expires_at);

-- How a sign-in was made: password, github, google, oidc:<name>. NULL on older rows.
ALTER TABLE user_location_logs ADD COLUMN IF NOT EXISTS method VARCHAR(100);
