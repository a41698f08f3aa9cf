-- The PostgreSQL job database, version 1: the SQLite layout (one row per job
-- holding the whole serialized Job, plus the columns queries need), in
-- PostgreSQL types. `seq` stands in for SQLite's rowid: the insert order that
-- breaks ties of created_at.

CREATE TABLE jobs (
    job_id     TEXT PRIMARY KEY,
    seq        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    request_id TEXT NOT NULL DEFAULT '',
    tenant     TEXT NOT NULL DEFAULT '',  -- Job.tenant, '' with authentication off
    state      TEXT NOT NULL,             -- JobState name, readable from psql
    created_at BIGINT NOT NULL,           -- unix microseconds
    updated_at BIGINT NOT NULL,
    job        BYTEA NOT NULL             -- serialized stageflow.v1.Job
);
-- Idempotent submit: one job per non-empty caller key, per tenant.
CREATE UNIQUE INDEX jobs_tenant_request_id ON jobs (tenant, request_id) WHERE request_id <> '';
CREATE INDEX jobs_created ON jobs (created_at, seq);
CREATE INDEX jobs_state_created ON jobs (state, created_at, seq);
CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at, seq);

-- Earlier versions of rerun jobs: the jobs row always holds the latest one.
CREATE TABLE job_versions (
    job_id  TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    job     BYTEA NOT NULL,               -- serialized stageflow.v1.Job, as it finished
    PRIMARY KEY (job_id, version)
);

-- The stage cache: content address of a stage run -> what it produced.
CREATE TABLE stage_cache (
    key        TEXT PRIMARY KEY,          -- stageflow.orchestrator.cache.cache_key
    stage      TEXT NOT NULL,
    output_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,           -- unix microseconds
    result     BYTEA NOT NULL             -- serialized stageflow.v1.StageResult
);

-- API keys (stageflow.orchestrator.auth): the keyed hash, never the key.
CREATE TABLE api_keys (
    key_id     TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    prefix     TEXT NOT NULL,
    key_hash   TEXT NOT NULL,             -- hex HMAC-SHA256(server secret, key)
    created_at BIGINT NOT NULL,           -- unix microseconds
    revoked_at BIGINT NOT NULL DEFAULT 0,
    priority   TEXT NOT NULL DEFAULT ''   -- '', 'interactive' or 'bulk'
);
CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at);

-- Per-tenant limits (stageflow.orchestrator.quotas), NULL: no limit.
CREATE TABLE tenant_quotas (
    tenant      TEXT PRIMARY KEY,
    max_running INTEGER,
    max_queued  INTEGER,
    per_minute  INTEGER
);
