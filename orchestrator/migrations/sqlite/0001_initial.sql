-- The SQLite job database, version 1: the layout of the releases before
-- versioned migrations. Every statement is idempotent, so the same file also
-- adopts a database those releases wrote (the store first adds the columns
-- such a file may lack: jobs.tenant, api_keys.priority).

CREATE TABLE IF NOT EXISTS jobs (
    job_id     TEXT PRIMARY KEY,
    request_id TEXT NOT NULL DEFAULT '',
    tenant     TEXT NOT NULL DEFAULT '',  -- Job.tenant, '' with authentication off
    state      TEXT NOT NULL,     -- JobState name, readable from the sqlite3 shell
    created_at INTEGER NOT NULL,  -- unix microseconds
    updated_at INTEGER NOT NULL,
    job        BLOB NOT NULL      -- serialized stageflow.v1.Job
);

-- Earlier versions of rerun jobs: the jobs row always holds the latest one.
CREATE TABLE IF NOT EXISTS job_versions (
    job_id  TEXT NOT NULL,
    version INTEGER NOT NULL,
    job     BLOB NOT NULL,        -- serialized stageflow.v1.Job, as it finished
    PRIMARY KEY (job_id, version)
);

-- The stage cache: content address of a stage run -> what it produced.
CREATE TABLE IF NOT EXISTS stage_cache (
    key        TEXT PRIMARY KEY,  -- stageflow.orchestrator.cache.cache_key
    stage      TEXT NOT NULL,
    output_key TEXT NOT NULL,     -- readable from the sqlite3 shell
    created_at INTEGER NOT NULL,  -- unix microseconds
    result     BLOB NOT NULL      -- serialized stageflow.v1.StageResult
);

-- API keys (stageflow.orchestrator.auth): the keyed hash, never the key.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    prefix     TEXT NOT NULL,
    key_hash   TEXT NOT NULL,     -- hex HMAC-SHA256(server secret, key)
    created_at INTEGER NOT NULL,  -- unix microseconds
    revoked_at INTEGER NOT NULL DEFAULT 0,
    priority   TEXT NOT NULL DEFAULT ''  -- '', 'interactive' or 'bulk'
);

-- Per-tenant limits (stageflow.orchestrator.quotas), NULL: no limit.
CREATE TABLE IF NOT EXISTS tenant_quotas (
    tenant      TEXT PRIMARY KEY,
    max_running INTEGER,
    max_queued  INTEGER,
    per_minute  INTEGER
);

-- The index of the releases before tenants (one key space for everyone).
DROP INDEX IF EXISTS jobs_request_id;
-- Idempotent submit: one job per non-empty caller key, per tenant.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_tenant_request_id
    ON jobs (tenant, request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at);
CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs (tenant, created_at);
