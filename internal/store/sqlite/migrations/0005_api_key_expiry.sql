-- API keys may expire: expires_at is when a key stops authenticating (NULL:
-- never). The index serves the count of active admin keys that guards
-- revoking the last one.

ALTER TABLE api_keys ADD COLUMN expires_at TEXT;

CREATE INDEX api_keys_scope ON api_keys (scope);
