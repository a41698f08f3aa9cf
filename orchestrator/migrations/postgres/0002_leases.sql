-- Several orchestrator replicas over one database: who runs which job, and
-- the cluster-wide stage-call slots. Times are the database's clock
-- (clock_timestamp()), so replicas' clocks never have to agree.

-- One row per job that some replica must run (QUEUED, or RUNNING under a
-- lease). `fence` is bumped on every claim: a write that carries an older
-- fence comes from a replica that lost the job and is refused.
CREATE TABLE job_leases (
    job_id           TEXT PRIMARY KEY,
    lane             SMALLINT NOT NULL,          -- 1 interactive, 2 bulk: claimed in this order
    tenant           TEXT NOT NULL DEFAULT '',
    tenant_limit     INTEGER,                    -- the tenant's max_running at submit; NULL: none
    created_at       BIGINT NOT NULL,            -- unix microseconds: oldest first in a lane
    owner            TEXT,                       -- the replica holding the lease; NULL: claimable
    lease_until      TIMESTAMPTZ,
    fence            BIGINT NOT NULL DEFAULT 0,
    done             BOOLEAN NOT NULL DEFAULT FALSE,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX job_leases_claim ON job_leases (lane, created_at, job_id) WHERE NOT done;
CREATE INDEX job_leases_tenant ON job_leases (tenant) WHERE NOT done AND owner IS NOT NULL;

-- Calls in flight to one stage service across every replica: `limit` rows
-- per service, each held under a lease by the replica making that call.
CREATE TABLE stage_slots (
    service     TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    owner       TEXT,
    lease_until TIMESTAMPTZ,
    PRIMARY KEY (service, slot)
);

-- Interactive stage calls waiting for a slot, on any replica (a row each,
-- under a lease): while one waits for a service, no bulk call takes its slots.
CREATE TABLE stage_slot_waiters (
    waiter      TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL
);
CREATE INDEX stage_slot_waiters_service ON stage_slot_waiters (service, lease_until);
