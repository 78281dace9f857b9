-- Seats: the answered calls a workflow serves at once (voicebot slots now, agents later),
-- shared by every worker. A live answer inserts its row while fewer than the workflow's
-- pacing.seats rows of calls not yet ended exist (under a per-workflow advisory lock); the
-- runner deletes it at the call's end, the scheduler when it closes a lost worker's calls.
CREATE TABLE seats (
    call_id     uuid PRIMARY KEY REFERENCES calls(id) ON DELETE CASCADE,
    workflow_id uuid NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX seats_workflow ON seats (workflow_id);
