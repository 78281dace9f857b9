-- The dial pipeline: worker heartbeats, and what the scheduler needs on calls.

CREATE TABLE workers (
    id            text PRIMARY KEY,
    host          text NOT NULL DEFAULT '',
    pid           integer NOT NULL DEFAULT 0,
    capacity      integer NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz
);

ALTER TABLE calls ADD COLUMN node_id text;
ALTER TABLE calls ADD COLUMN published_at timestamptz;
ALTER TABLE calls ADD COLUMN ring_s double precision;
ALTER TABLE calls ADD COLUMN talk_s double precision;
CREATE INDEX calls_unpublished ON calls (created_at) WHERE state = 'queued';
CREATE INDEX calls_active_workflow ON calls (workflow_id) WHERE state <> 'ended';

-- Attempts at the record's current node (retries count here; a new node starts at 0).
ALTER TABLE records ADD COLUMN node_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE records ADD COLUMN last_call_id uuid;
