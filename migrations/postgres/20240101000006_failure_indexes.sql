-- Counting failures reads only counted failures: partial indexes keep that cheap however many
-- refused or successful attempts a flood adds to login_attempts.
CREATE INDEX IF NOT EXISTS login_attempts_counted_identifier_idx
    ON login_attempts (email_or_username, attempted_at) WHERE counted AND NOT success;
CREATE INDEX IF NOT EXISTS login_attempts_counted_ip_idx
    ON login_attempts (ip_address, attempted_at) WHERE counted AND NOT success;
