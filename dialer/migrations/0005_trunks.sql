-- Trunks managed through the API, per tenant; a workflow names the one it dials through.
CREATE TABLE trunks (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name                text NOT NULL,
    uri                 text NOT NULL,
    outbound_proxy      text,
    username            text,
    -- Needed in clear to answer digest challenges; never returned by the API.
    password            text,
    cps                 double precision,
    max_channels        integer,
    options_interval_s  double precision,
    register_expires_s  integer,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

ALTER TABLE calls ADD COLUMN trunk text;
