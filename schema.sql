-- txstream's tables for MySQL / MariaDB: the same as models.py (a test checks it).
-- Run it in DataGrip, or: mysql -u root < schema.sql
-- The subscriber and `flask --app app init-db` also create them when missing.

CREATE DATABASE IF NOT EXISTS txstream CHARACTER SET utf8mb4;
USE txstream;

-- Every card transaction, exactly once (unique txn_id).
CREATE TABLE IF NOT EXISTS transactions (
  id          BIGINT NOT NULL AUTO_INCREMENT,
  txn_id      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  user_id     BIGINT NOT NULL,
  amount      DECIMAL(20,2) NOT NULL,
  ts          DATETIME(6) NOT NULL COMMENT 'event time, UTC',
  received_at DATETIME(6) NOT NULL COMMENT 'stored at, UTC',
  PRIMARY KEY (id),
  UNIQUE KEY uq_transactions_txn_id (txn_id),
  -- a user's time-range sum and newest-first pages, read from the index alone
  KEY ix_transactions_user_ts (user_id, ts, txn_id, amount),
  -- the newest transactions of all users
  KEY ix_transactions_ts (ts, txn_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Per user, per tumbling window of WINDOW_HOURS (default 6) aligned to the epoch.
CREATE TABLE IF NOT EXISTS user_window_totals (
  user_id      BIGINT NOT NULL,
  window_start DATETIME NOT NULL COMMENT 'UTC',
  tx_count     BIGINT NOT NULL,
  amount_sum   DECIMAL(30,2) NOT NULL,
  amount_min   DECIMAL(20,2) NOT NULL,
  amount_max   DECIMAL(20,2) NOT NULL,
  updated_at   DATETIME(6) NOT NULL COMMENT 'UTC',
  PRIMARY KEY (user_id, window_start),
  -- a window's users and their totals, for the console's top users (read from the index)
  KEY ix_user_window_totals_window_start (window_start, amount_sum, tx_count)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Per user, per bucket of BUCKET seconds (60 with the default window; it divides the
-- window): a sum over any range reads whole windows, whole buckets, and raw rows only at
-- its two edges (txstream/aggregates.py).
CREATE TABLE IF NOT EXISTS user_bucket_totals (
  user_id      BIGINT NOT NULL,
  bucket_start DATETIME NOT NULL COMMENT 'UTC',
  tx_count     BIGINT NOT NULL,
  amount_sum   DECIMAL(30,2) NOT NULL,
  PRIMARY KEY (user_id, bucket_start)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Facts every process must agree on: window_seconds and bucket_seconds, the lengths the
-- aggregates are built with (written by the first subscriber or `flask --app app init-db`).
CREATE TABLE IF NOT EXISTS settings (
  name  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  value VARCHAR(255) NOT NULL,
  PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The bearer tokens of the API and the pages: only a token's SHA-256 is kept.
-- Made with `flask --app app create-token NAME`; revoking one deletes its row.
CREATE TABLE IF NOT EXISTS api_tokens (
  id           BIGINT NOT NULL AUTO_INCREMENT,
  name         VARCHAR(64) NOT NULL,
  token_hash   CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL COMMENT 'hex SHA-256 of the token',
  created_at   DATETIME(6) NOT NULL COMMENT 'UTC',
  last_used_at DATETIME(6) NULL COMMENT 'UTC, to the minute',
  PRIMARY KEY (id),
  UNIQUE KEY uq_api_tokens_name (name),
  UNIQUE KEY uq_api_tokens_token_hash (token_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The pages' signed-in sessions (txstream.sessions): the browser's cookie holds a random id,
-- this table only its SHA-256. Signing out or revoking the session's token deletes its rows.
CREATE TABLE IF NOT EXISTS web_sessions (
  id_hash    CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL COMMENT 'hex SHA-256 of the cookie''s id',
  token_id   BIGINT NOT NULL COMMENT 'api_tokens.id',
  csrf       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL COMMENT 'the value its forms carry',
  created_at DATETIME(6) NOT NULL COMMENT 'signed in at, UTC',
  seen_at    DATETIME(6) NOT NULL COMMENT 'last used, UTC, to the minute',
  expires_at DATETIME(6) NOT NULL COMMENT 'ends at the latest, UTC',
  PRIMARY KEY (id_hash),
  KEY ix_web_sessions_token_id (token_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
