-- The schema of the old Node.js "Auth Flow API", written so that it also succeeds on a
-- database where that service already created it: everything is IF NOT EXISTS.

CREATE TABLE IF NOT EXISTS roles (
    role_id SERIAL PRIMARY KEY,
    name VARCHAR(30) NOT NULL UNIQUE,
    description VARCHAR(200),
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS users (
    user_db_id SERIAL PRIMARY KEY,
    user_uid VARCHAR(100) NOT NULL UNIQUE,
    full_name VARCHAR(110) NOT NULL,
    email VARCHAR(200) NOT NULL UNIQUE,
    phone VARCHAR(15),
    password VARCHAR(300) NOT NULL,
    username VARCHAR(30) NOT NULL UNIQUE,
    github_id VARCHAR(100),
    role_id INT REFERENCES roles(role_id) ON DELETE SET NULL ON UPDATE CASCADE,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP,
    last_login TIMESTAMP,
    email_verified BOOLEAN DEFAULT FALSE,
    verification_token VARCHAR(255),
    active BOOLEAN DEFAULT TRUE
);

CREATE INDEX IF NOT EXISTS idx_github_id ON users(github_id);

CREATE OR REPLACE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS set_updated_at ON users;
CREATE TRIGGER set_updated_at
    BEFORE UPDATE ON users
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'access_status_enum') THEN
        CREATE TYPE access_status_enum AS ENUM ('success', 'failure');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'token_type_enum') THEN
        CREATE TYPE token_type_enum AS ENUM ('password_reset', 'email_verification', 'access');
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS user_location_logs (
    log_id SERIAL PRIMARY KEY,
    user_id INT NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE ON UPDATE CASCADE,
    ip_address VARCHAR(45) NOT NULL,
    location JSONB NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    user_agent VARCHAR(255),
    access_status access_status_enum NOT NULL DEFAULT 'success'
);

CREATE INDEX IF NOT EXISTS idx_user_id ON user_location_logs(user_id);
CREATE INDEX IF NOT EXISTS idx_ip_address ON user_location_logs(ip_address);
CREATE INDEX IF NOT EXISTS idx_created_at ON user_location_logs(created_at);

CREATE TABLE IF NOT EXISTS tokens (
    token_id SERIAL PRIMARY KEY,
    user_id INT NOT NULL REFERENCES users(user_db_id) ON DELETE CASCADE ON UPDATE CASCADE,
    token VARCHAR(255) NOT NULL,
    type token_type_enum NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    expires_at TIMESTAMP NOT NULL,
    active BOOLEAN DEFAULT TRUE
);

CREATE INDEX IF NOT EXISTS idx_token ON tokens(token);
CREATE INDEX IF NOT EXISTS idx_user_token ON tokens(user_id, type, active);

CREATE TABLE IF NOT EXISTS login_attempts (
    attempt_id SERIAL PRIMARY KEY,
    ip_address VARCHAR(45) NOT NULL,
    email_or_username VARCHAR(200) NOT NULL,
    attempted_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN DEFAULT FALSE
);

CREATE INDEX IF NOT EXISTS idx_ip_email ON login_attempts(ip_address, email_or_username);
CREATE INDEX IF NOT EXISTS idx_attempted_at ON login_attempts(attempted_at);
