-- Up Migration
-- Initial schema (seed INFRA-003, Phase 4): the users table, its indexes and
-- the updated_at trigger. The extensions (uuid-ossp, pgcrypto, pg_trgm,
-- pg_stat_statements) belong to the bootstrap role, not to this migration;
-- gen_random_uuid() is built into PostgreSQL 13+.
-- Keep the up marker on the first line: node-pg-migrate 6.x slices the file
-- with substr() and would otherwise run part of the down section on the way up.

CREATE TABLE users (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  -- Unique among live users only (users_email_unique_index below), so a
  -- soft-deleted account's email can sign up again.
  email VARCHAR(255) NOT NULL,
  password_hash VARCHAR(255) NOT NULL,
  name VARCHAR(255) NOT NULL,
  timezone VARCHAR(50) DEFAULT 'America/Sao_Paulo',
  language VARCHAR(10) DEFAULT 'pt-BR',
  subscription_tier VARCHAR(50) DEFAULT 'free'
    CHECK (subscription_tier IN ('free', 'basic', 'pro', 'enterprise')),
  email_verified BOOLEAN DEFAULT FALSE,
  email_verification_token VARCHAR(255),
  password_reset_token VARCHAR(255),
  password_reset_expires TIMESTAMP,
  last_login_at TIMESTAMP,
  last_login_ip VARCHAR(45),
  created_at TIMESTAMP NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMP NOT NULL DEFAULT NOW(),
  deleted_at TIMESTAMP
);

-- The index names node-pg-migrate's createIndex() gives them.
CREATE UNIQUE INDEX users_email_unique_index ON users (email) WHERE deleted_at IS NULL;
CREATE INDEX users_created_at_index ON users (created_at);
CREATE INDEX users_last_login_at_index ON users (last_login_at);

-- clock_timestamp(), not NOW(): an UPDATE in the same transaction as the
-- INSERT (as in the seed's trigger test, one psql -c string) must still move
-- updated_at past created_at.
CREATE OR REPLACE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
  NEW.updated_at = clock_timestamp();
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER update_users_updated_at
  BEFORE UPDATE ON users
  FOR EACH ROW
  EXECUTE FUNCTION update_updated_at_column();

-- Down Migration
-- Removes what the up section created, in reverse order; the extensions stay.

DROP TRIGGER IF EXISTS update_users_updated_at ON users;
DROP FUNCTION IF EXISTS update_updated_at_column();
DROP TABLE IF EXISTS users;
