-- The old Node.js "Auth Flow API" schema (see migrations/postgres/), translated to SQLite:
-- INTEGER PRIMARY KEY AUTOINCREMENT for SERIAL, TEXT for VARCHAR, CHECK constraints for the
-- PostgreSQL enums, INTEGER 0/1 for BOOLEAN. Timestamps are UTC RFC 3339 text; the service
-- always writes them itself, the defaults below only cover rows written by hand.

CREATE TABLE IF NOT EXISTS roles (
    role_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

CREATE TABLE IF NOT EXISTS users (
    user_db_id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_uid TEXT NOT NULL UNIQUE,
    full_name TEXT NOT NULL,
    -- Unique case-insensitively: see users_email_lower_key / users_username_lower_key.
    email TEXT NOT NULL,
    phone TEXT,
    password TEXT NOT NULL,
    username TEXT NOT NULL,
    github_id TEXT,
    role_id INTEGER REFERENCES roles(role_id) ON DELETE SET NULL ON UPDATE CASCADE,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at TEXT,
    last_login TEXT,
    email_verified INTEGER DEFAULT 0 CHECK (email_verified IN (0, 1)),
    verification_token TEXT,
    active INTEGER DEFAULT 1 CHECK (active IN (0, 1))
);

CREATE INDEX IF NOT EXISTS idx_github_id ON users(github_id);

-- PostgreSQL sets updated_at in a BEFORE trigger; SQLite cannot assign NEW, so a second
-- UPDATE follows, guarded so that an explicit updated_at (and the trigger's own write) is
-- left alone.
CREATE TRIGGER IF NOT EXISTS set_updated_at
    AFTER UPDATE ON users
    FOR EACH ROW
    WHEN NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE users SET updated_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')
    WHERE user_db_id = NEW.user_db_id;
END;

CREATE TABLE IF NOT EXISTS user_location_logs (
    log_id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE ON UPDATE CASCADE,
    ip_address TEXT NOT NULL,
    -- JSON text (JSONB in PostgreSQL).
    location TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    user_agent TEXT,
    access_status TEXT NOT NULL DEFAULT 'success' CHECK (access_status IN ('success', 'failure'))
);

CREATE INDEX IF NOT EXISTS idx_user_id ON user_location_logs(user_id);
CREATE INDEX IF NOT EXISTS idx_ip_address ON user_location_logs(ip_address);
CREATE INDEX IF NOT EXISTS idx_created_at ON user_location_logs(created_at);

CREATE TABLE IF NOT EXISTS tokens (
    token_id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE ON UPDATE CASCADE,
    token TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('password_reset', 'email_verification', 'access')),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    expires_at TEXT NOT NULL,
    active INTEGER DEFAULT 1 CHECK (active IN (0, 1))
);

CREATE INDEX IF NOT EXISTS idx_token ON tokens(token);
CREATE INDEX IF NOT EXISTS idx_user_token ON tokens(user_id, type, active);

CREATE TABLE IF NOT EXISTS login_attempts (
    attempt_id INTEGER PRIMARY KEY AUTOINCREMENT,
    ip_address TEXT NOT NULL,
    email_or_username TEXT NOT NULL,
    attempted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    success INTEGER DEFAULT 0 CHECK (success IN (0, 1))
);

CREATE INDEX IF NOT EXISTS idx_ip_email ON login_attempts(ip_address, email_or_username);
CREATE INDEX IF NOT EXISTS idx_attempted_at ON login_attempts(attempted_at);
