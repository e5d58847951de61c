-- Image verification: VMs start only from images whose file was checked
-- against their manifest.
ALTER TABLE images ADD COLUMN status TEXT NOT NULL DEFAULT 'unverified'
    CHECK (status IN ('unverified', 'verified', 'failed'));
ALTER TABLE images ADD COLUMN verified_at TEXT;
ALTER TABLE images ADD COLUMN verify_report BLOB;
