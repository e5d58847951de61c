-- VM networking: each VM's network identity, and address leases. The
-- primary key on ip and the unique vm_id make a double lease impossible,
-- whatever the callers do.
ALTER TABLE vms ADD COLUMN network BLOB;

CREATE TABLE leases (
    ip         TEXT PRIMARY KEY,
    vm_id      TEXT NOT NULL UNIQUE REFERENCES vms (id),
    created_at TEXT NOT NULL
);
