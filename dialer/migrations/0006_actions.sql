-- Action nodes (sms, email, webhook): the request is rendered inside the
-- record's transaction and kept here; the action runner performs it outside
-- any transaction and then advances the record. The record waits meanwhile
-- as in_progress at the action node, which the scheduler never takes.
CREATE TABLE actions (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    record_id       uuid NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    workflow_id     uuid NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    node_run_id     uuid REFERENCES node_runs(id) ON DELETE SET NULL,
    node_id         text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('sms', 'email', 'webhook')),
    -- json, not jsonb: a webhook body carries the record's meta as given.
    request         json NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'done', 'cancelled')),
    outcome         text,
    -- Leased by pushing next_attempt_at past the longest attempt: a runner
    -- that dies mid-action leaves it due again once the lease runs out.
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_by       text,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX actions_due ON actions (next_attempt_at) WHERE status = 'pending';
CREATE INDEX actions_record ON actions (record_id, created_at);

-- Wake the runners when an action commits; they poll as well.
CREATE FUNCTION actions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dialer_actions', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER actions_notify AFTER INSERT ON actions
    FOR EACH STATEMENT EXECUTE FUNCTION actions_notify();
