-- Event streams read only the rows they may send, and old events can be
-- forgotten.
--
-- One index per filter a stream uses (a user key's stream, a login's, a
-- VM's waiters), so no stream scans other users' rows. Login and VM ids are
-- empty on most rows: the partial indexes leave those out, and queries name
-- the "<> ''" term so the planner may use them.
CREATE INDEX events_user_id ON events (user_id, id);
CREATE INDEX events_login_id ON events (login_id, id) WHERE login_id <> '';
CREATE INDEX events_vm_id ON events (vm_id, id) WHERE vm_id <> '';

-- Retention forgets events from the oldest end only. The horizon is the
-- highest id forgotten: it only moves forward, never past the newest id
-- assigned, and only events at or below it may be deleted. Nothing may
-- change an event, nor insert one below an id already assigned, so
-- everything above the horizon is the log exactly as it was written.
CREATE TABLE event_horizon (
    one     INTEGER PRIMARY KEY CHECK (one = 1),
    horizon INTEGER NOT NULL CHECK (horizon >= 0)
) STRICT;

INSERT INTO event_horizon (one, horizon) VALUES (1, 0);

CREATE TRIGGER event_horizon_no_insert BEFORE INSERT ON event_horizon
BEGIN
    SELECT RAISE(ABORT, 'the event horizon is one row');
END;

CREATE TRIGGER event_horizon_no_delete BEFORE DELETE ON event_horizon
BEGIN
    SELECT RAISE(ABORT, 'the event horizon only moves forward');
END;

CREATE TRIGGER event_horizon_forward BEFORE UPDATE ON event_horizon
WHEN NEW.one IS NOT OLD.one
    OR NEW.horizon < OLD.horizon
    OR NEW.horizon > COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)
BEGIN
    SELECT RAISE(ABORT, 'the event horizon only moves forward, and not past the newest event');
END;

DROP TRIGGER events_no_delete;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN OLD.id > (SELECT horizon FROM event_horizon)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: retention forgets only events up to the horizon');
END;

-- An event is never slipped in below the newest id or the horizon. (An
-- INSERT OR REPLACE of an existing event deletes it first, which
-- events_no_delete refuses: every connection runs with recursive_triggers,
-- without which SQLite skips delete triggers on REPLACE.)
CREATE TRIGGER events_append_only AFTER INSERT ON events
WHEN NEW.id < (SELECT MAX(id) FROM events)
    OR NEW.id <= (SELECT horizon FROM event_horizon)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: a new event gets a new, highest id');
END;
