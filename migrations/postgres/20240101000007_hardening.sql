-- Round 2 hardening. An address that signed in to an account recently is spared the
-- account-wide failure limit: finding its last success must stay cheap.
CREATE INDEX IF NOT EXISTS login_attempts_success_idx
    ON login_attempts (email_or_username, ip_address, attempted_at) WHERE success;
-- Pruning by age (history retention, ended sessions, finished emails) reads these.
CREATE INDEX IF NOT EXISTS auth_sessions_ended_idx ON auth_sessions (expires_at);
CREATE INDEX IF NOT EXISTS email_outbox_finished_idx ON email_outbox (created_at)
    WHERE status IN ('sent', 'failed');
