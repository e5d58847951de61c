-- Viewer epochs: every viewer link carries the epoch of its VM at issue;
-- revoking a VM's viewers moves the epoch on, so every link issued before
-- is refused, after restarts too. A VM without a row is at epoch 0. The
-- row goes with its VM.

CREATE TABLE viewer_epochs (
    vm_id TEXT NOT NULL PRIMARY KEY,
    epoch INTEGER NOT NULL CHECK (epoch > 0)
) STRICT;

CREATE TRIGGER vms_delete_viewer_epoch AFTER DELETE ON vms
BEGIN
    DELETE FROM viewer_epochs WHERE vm_id = OLD.id;
END;
