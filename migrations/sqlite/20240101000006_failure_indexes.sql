-- As in migrations/postgres/20240101000006_failure_indexes.sql.
CREATE INDEX IF NOT EXISTS login_attempts_counted_identifier_idx
    ON login_attempts (email_or_username, attempted_at) WHERE counted AND NOT success;
CREATE INDEX IF NOT EXISTS login_attempts_counted_ip_idx
    ON login_attempts (ip_address, attempted_at) WHERE counted AND NOT success;
