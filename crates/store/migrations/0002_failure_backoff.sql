-- modeltree store, schema version 2: failed repos are retried on a backoff schedule.
-- Never edit this file once it has landed: add 0003_*.sql instead (see crates/store/src/migrate.rs).

-- When the failure may be retried (UTC text, as the other timestamps). NULL: at the next opportunity, which is
-- what every failure recorded before this migration means.
ALTER TABLE failures ADD COLUMN next_retry_at TEXT;

CREATE INDEX failures_due ON failures (next_retry_at);
