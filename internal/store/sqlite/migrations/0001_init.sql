-- 0001_init: hearth's initial schema.
--
-- Times are stored as fixed-width RFC 3339 UTC text with nanoseconds
-- ("2006-01-02T15:04:05.000000000Z"), so they sort chronologically as text;
-- NULL means the zero time.Time.

CREATE TABLE users (
    id         TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TEXT
) STRICT;

CREATE TABLE api_keys (
    id           TEXT NOT NULL PRIMARY KEY,
    name         TEXT NOT NULL,
    scope        TEXT NOT NULL CHECK (scope IN ('admin', 'user')),
    user_id      TEXT REFERENCES users (id),
    secret_hash  BLOB NOT NULL,
    created_at   TEXT,
    last_used_at TEXT,
    revoked_at   TEXT,
    CHECK (scope <> 'user' OR user_id IS NOT NULL)
) STRICT;

CREATE INDEX api_keys_user_id ON api_keys (user_id);

CREATE TABLE images (
    id          TEXT NOT NULL PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    kernel_path TEXT NOT NULL,
    initrd_path TEXT NOT NULL,
    rootfs_path TEXT NOT NULL,
    manifest    BLOB,
    size_bytes  INTEGER NOT NULL,
    created_at  TEXT
) STRICT;

CREATE INDEX images_name_created_at ON images (name, created_at);

CREATE TABLE vms (
    id                TEXT NOT NULL PRIMARY KEY,
    user_id           TEXT NOT NULL,
    image_id          TEXT NOT NULL,
    role              TEXT NOT NULL,
    vcpus             INTEGER NOT NULL,
    memory_mib        INTEGER NOT NULL,
    driver            TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN (
                          'pending', 'booting', 'ready', 'stopping',
                          'stopped', 'failed', 'destroyed')),
    failure_reason    TEXT NOT NULL,
    handle            BLOB,
    dir               TEXT NOT NULL,
    agent_version     TEXT NOT NULL,
    guest_boot_at     TEXT,
    last_heartbeat_at TEXT,
    boot_deadline     TEXT,
    created_at        TEXT,
    updated_at        TEXT,
    ready_at          TEXT,
    stopped_at        TEXT,
    destroyed_at      TEXT
) STRICT;

CREATE INDEX vms_user_id ON vms (user_id);
CREATE INDEX vms_state ON vms (state);
CREATE INDEX vms_created_at ON vms (created_at, id);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT,
    type       TEXT NOT NULL,
    vm_id      TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    message    TEXT NOT NULL
) STRICT;

-- The event log is append-only.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
