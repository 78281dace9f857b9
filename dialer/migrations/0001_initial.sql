-- The data model. Later migrations add columns; they do not reshape these.
-- Every tenant-owned row carries tenant_id, and every query filters on it.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    -- The key is shown once; we keep its public prefix to find the row and a
    -- SHA-256 of the whole key to compare in constant time.
    prefix      text NOT NULL UNIQUE,
    key_hash    bytea NOT NULL,
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE workflows (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    workflow_key    text NOT NULL UNIQUE CHECK (workflow_key ~ '^[A-Za-z0-9]{6}$'),
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    status          text NOT NULL DEFAULT 'draft'
                    CHECK (status IN ('draft', 'active', 'paused', 'stopped')),
    current_version integer NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE INDEX workflows_tenant ON workflows (tenant_id, created_at);

CREATE TABLE workflow_versions (
    workflow_id uuid NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    version     integer NOT NULL,
    definition  jsonb NOT NULL,
    settings    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE lists (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    workflow_id  uuid NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    name         text NOT NULL,
    settings     jsonb NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'active'
                 CHECK (status IN ('active', 'cancelled', 'completed')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    cancelled_at timestamptz,
    completed_at timestamptz
);
CREATE INDEX lists_workflow ON lists (tenant_id, workflow_id, created_at);

-- placeholders and meta are json, not jsonb: they are returned exactly as
-- given (key order, duplicate keys and number spelling are the caller's).
CREATE TABLE records (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    workflow_id      uuid NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    workflow_version integer NOT NULL,
    list_id          uuid REFERENCES lists(id) ON DELETE SET NULL,
    case_id          text,
    phone_e164       text NOT NULL,
    first_name       text NOT NULL DEFAULT '',
    last_name        text NOT NULL DEFAULT '',
    zip_code         text,
    placeholders     json NOT NULL DEFAULT '{}',
    meta             json NOT NULL DEFAULT '{}',
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'in_progress', 'waiting', 'completed',
                                       'cancelled', 'dnc', 'failed')),
    current_node     text,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    outcome          text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);
CREATE INDEX records_due ON records (workflow_id, next_attempt_at)
    WHERE status IN ('queued', 'waiting');
CREATE INDEX records_phone ON records (tenant_id, phone_e164);
CREATE INDEX records_case ON records (tenant_id, case_id) WHERE case_id IS NOT NULL;
CREATE INDEX records_list ON records (list_id) WHERE list_id IS NOT NULL;
CREATE INDEX records_tenant_created ON records (tenant_id, created_at, id);

-- One row per step a record takes through its workflow (the reference API's
-- "subtasks").
CREATE TABLE node_runs (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    record_id   uuid NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    workflow_id uuid NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    node_id     text NOT NULL,
    node_type   text NOT NULL,
    status      text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    outcome     text,
    detail      jsonb NOT NULL DEFAULT '{}',
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz
);
CREATE INDEX node_runs_record ON node_runs (record_id, started_at);
CREATE INDEX node_runs_workflow ON node_runs (tenant_id, workflow_id, started_at);

CREATE TABLE calls (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    record_id     uuid NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    workflow_id   uuid NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    node_run_id   uuid REFERENCES node_runs(id) ON DELETE SET NULL,
    attempt       integer NOT NULL DEFAULT 1,
    phone_e164    text NOT NULL,
    state         text NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'dialing', 'ringing', 'answered', 'ended')),
    disposition   text,
    sip_status    integer,
    sip_reason    text,
    hangup_by     text,
    worker_id     text,
    amd_verdict   text,
    bot_result    jsonb,
    media_stats   jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    dialing_at    timestamptz,
    ringing_at    timestamptz,
    answered_at   timestamptz,
    ended_at      timestamptz
);
CREATE INDEX calls_record ON calls (record_id, created_at);
CREATE INDEX calls_workflow ON calls (tenant_id, workflow_id, created_at);
CREATE INDEX calls_phone ON calls (tenant_id, phone_e164);
CREATE INDEX calls_open ON calls (worker_id) WHERE state <> 'ended';

CREATE TABLE recordings (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    call_id     uuid NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    path        text NOT NULL,
    content_type text NOT NULL DEFAULT 'audio/wav',
    bytes       bigint NOT NULL DEFAULT 0,
    duration_s  double precision NOT NULL DEFAULT 0,
    sha256      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    deleted_at  timestamptz
);
CREATE INDEX recordings_call ON recordings (call_id);
CREATE INDEX recordings_tenant ON recordings (tenant_id, created_at);

CREATE TABLE dnc (
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    phone_e164  text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, phone_e164)
);

CREATE TABLE webhook_endpoints (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    workflow_id         uuid REFERENCES workflows(id) ON DELETE CASCADE,
    url                 text NOT NULL,
    events              text[] NOT NULL DEFAULT '{}',
    secret              text NOT NULL,
    previous_secret     text,
    previous_expires_at timestamptz,
    enabled             boolean NOT NULL DEFAULT true,
    disabled_reason     text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id);

-- Written in the same transaction as the state change it reports.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    event_id    uuid NOT NULL UNIQUE,
    event_type  text NOT NULL,
    record_id   uuid,
    workflow_id uuid,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_tenant ON outbox (tenant_id, id);

-- A retried POST with the same Idempotency-Key replays the first answer.
CREATE TABLE idempotency_keys (
    tenant_id       uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key             text NOT NULL,
    request_sha256  bytea NOT NULL,
    status_code     integer,
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
