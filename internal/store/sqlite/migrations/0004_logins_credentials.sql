-- Provider logins and the credentials they capture.
--
-- A user has at most one active (non-terminal) login per provider: the
-- partial unique index makes a second one impossible, whatever the callers
-- do and however many create it at once.
--
-- Credentials are stored sealed (envelope encryption, internal/vault): the
-- database holds the data key wrapped under a master key (key_id names it)
-- and the ciphertext, never the plaintext. One record per user and provider.

CREATE TABLE logins (
    id             TEXT NOT NULL PRIMARY KEY,
    user_id        TEXT NOT NULL,
    provider       TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN (
                       'starting', 'awaiting_user', 'capturing',
                       'completed', 'failed', 'cancelled', 'expired')),
    failure_reason TEXT NOT NULL,
    browser_vm_id  TEXT NOT NULL,
    credential_id  TEXT NOT NULL,
    created_at     TEXT,
    updated_at     TEXT,
    expires_at     TEXT,
    completed_at   TEXT
) STRICT;

CREATE UNIQUE INDEX logins_one_active ON logins (user_id, provider)
    WHERE state IN ('starting', 'awaiting_user', 'capturing');
CREATE INDEX logins_created_at ON logins (created_at, id);

CREATE TABLE credentials (
    id          TEXT NOT NULL PRIMARY KEY,
    user_id     TEXT NOT NULL,
    provider    TEXT NOT NULL,
    login_id    TEXT NOT NULL,
    key_id      TEXT NOT NULL CHECK (key_id <> ''),
    wrapped_key BLOB NOT NULL CHECK (length(wrapped_key) > 0),
    sealed      BLOB NOT NULL CHECK (length(sealed) > 0),
    created_at  TEXT,
    updated_at  TEXT,
    expires_at  TEXT,
    valid       INTEGER NOT NULL CHECK (valid IN (0, 1)),
    UNIQUE (user_id, provider)
) STRICT;

CREATE INDEX credentials_key_id ON credentials (key_id);

-- Login events name their login.
ALTER TABLE events ADD COLUMN login_id TEXT NOT NULL DEFAULT '';
