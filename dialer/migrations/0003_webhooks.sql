-- Webhook delivery: the outbox fanned out to endpoints, leased, retried, every
-- attempt kept; tenant notices; recording retention.

-- An outbox row is fanned out once: dispatched_at is set in the same
-- transaction that creates its deliveries.
ALTER TABLE outbox ADD COLUMN dispatched_at timestamptz;
CREATE INDEX outbox_undispatched ON outbox (id) WHERE dispatched_at IS NULL;

-- Wake the notifiers when an outbox row commits (NOTIFY is sent at commit, so a
-- listener never sees an event it cannot read yet); they poll as well.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dialer_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

ALTER TABLE webhook_endpoints ADD COLUMN description text NOT NULL DEFAULT '';
-- Set at the first failure after a success, cleared by a success: an endpoint
-- failing since longer than the notifier's limit is disabled.
ALTER TABLE webhook_endpoints ADD COLUMN failing_since timestamptz;
ALTER TABLE webhook_endpoints ADD COLUMN last_success_at timestamptz;
ALTER TABLE webhook_endpoints ADD COLUMN last_failure_at timestamptz;
ALTER TABLE webhook_endpoints ADD COLUMN disabled_at timestamptz;
ALTER TABLE webhook_endpoints ADD COLUMN deleted_at timestamptz;

-- One event for one endpoint. A pending delivery is leased by pushing
-- next_attempt_at past the longest attempt, so a notifier that dies mid-delivery
-- leaves it due again once the lease runs out.
CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    outbox_id       bigint NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
    -- Deliveries sharing an endpoint and an order key go out in outbox order:
    -- the record id, else the event's own id (no order to keep).
    order_key       uuid NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'succeeded', 'failed', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_by       text,
    last_status     integer,
    last_error      text,
    redelivery      boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (endpoint_id, order_key, outbox_id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_outbox ON webhook_deliveries (outbox_id);
CREATE INDEX webhook_deliveries_done ON webhook_deliveries (completed_at)
    WHERE status <> 'pending';

-- Every attempt, written with its answer; one left in flight by a notifier that
-- died is written as 'interrupted' when the delivery is leased again.
CREATE TABLE webhook_attempts (
    id               bigserial PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    delivery_id      bigint NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL,
    event_id         uuid NOT NULL,
    attempt          integer NOT NULL,
    url              text NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    ended_at         timestamptz,
    outcome          text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'gone', 'refused',
                                             'interrupted')),
    status_code      integer,
    error            text,
    duration_ms      double precision,
    response_excerpt text,
    retry_after_s    double precision,
    next_attempt_at  timestamptz
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);
CREATE INDEX webhook_attempts_event ON webhook_attempts (event_id, id);

-- What the platform tells a tenant without a webhook (an endpoint disabled, ...).
CREATE TABLE tenant_notices (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    kind        text NOT NULL,
    subject_id  uuid,
    message     text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenant_notices_tenant ON tenant_notices (tenant_id, id);

-- A tenant's default recording retention; a recording's own expires_at wins.
CREATE TABLE recording_retention (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    days        integer NOT NULL CHECK (days BETWEEN 1 AND 3650),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recordings_expiring ON recordings (expires_at)
    WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX recordings_live ON recordings (tenant_id, created_at) WHERE deleted_at IS NULL;
