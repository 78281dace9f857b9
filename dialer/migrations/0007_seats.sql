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

-- One round trip per claim: the lock, then the count and the insert. In a volatile
-- PL/pgSQL function each statement takes a new snapshot, so the insert sees every
-- claim committed before the lock was granted; the lock is released at commit.
CREATE FUNCTION claim_seat(p_call uuid, p_workflow uuid, p_seats integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(24231, hashtext(p_workflow::text));
    INSERT INTO seats (call_id, workflow_id)
    SELECT p_call, p_workflow
    WHERE (SELECT count(*) FROM seats s JOIN calls c ON c.id = s.call_id
           WHERE s.workflow_id = p_workflow AND c.state <> 'ended'
             AND s.call_id <> p_call) < p_seats
    ON CONFLICT (call_id) DO UPDATE SET claimed_at = seats.claimed_at;
    RETURN FOUND;
END
$$;
