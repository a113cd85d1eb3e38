-- Durable jobs: every long operation (backup, restore, upgrade run) is a row here, so that any
-- replica can report on it, take it over when the process running it died, and cancel it.
-- Replicas claim with FOR UPDATE SKIP LOCKED and hold a lease they renew while working; the
-- lease and the backoff are timed by this server's clock (one clock for every replica).
-- `fence` grows with every claim: a worker records a result, or publishes anything, only
-- while the row still carries its fence, is running and its lease has not expired.
-- `seq` is request order: jobs of one subject (a database or an upload) run one at a time.
CREATE TABLE jobs (
    id                text PRIMARY KEY CHECK (id ~ '^job_[0-9a-hjkmnp-tv-z]{20}$'),
    seq               bigserial NOT NULL UNIQUE,
    kind              text NOT NULL CHECK (kind IN ('backup', 'restore', 'upgrade')),
    subject           text NOT NULL CHECK (subject ~ '^(db|up)_[0-9a-hjkmnp-tv-z]{20}$'),
    arguments         jsonb NOT NULL DEFAULT '{}',
    actor             text NOT NULL,
    state             text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempt           integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts      integer NOT NULL CHECK (max_attempts >= 1),
    fence             bigint NOT NULL DEFAULT 0,
    lease_owner       text,
    lease_expires_at  timestamptz,
    run_after         timestamptz NOT NULL DEFAULT now(),
    cancel_requested  boolean NOT NULL DEFAULT false,
    progress          jsonb NOT NULL DEFAULT '{}',
    result            jsonb,
    error             jsonb,
    created_at        timestamptz NOT NULL,
    started_at        timestamptz,
    finished_at       timestamptz,
    CHECK ((state = 'running') = (lease_owner IS NOT NULL)),
    CHECK ((state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);

CREATE INDEX jobs_unfinished ON jobs (subject, seq) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_by_subject ON jobs (subject, seq);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
