-- Seats for many answers of one workflow in one round trip (answers that arrive
-- together are claimed together). As claim_seat (0007): the workflow's advisory
-- lock, then the count in a statement of its own, whose snapshot sees every
-- claim committed before the lock was granted; then as many of the calls as
-- there are free seats, in the order given. A call that already holds its seat
-- keeps it (it is left out of the count and claimed again first come).
CREATE FUNCTION claim_seats(p_calls uuid[], p_workflow uuid, p_seats integer)
RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    free integer;
BEGIN
    PERFORM pg_advisory_xact_lock(24231, hashtext(p_workflow::text));
    SELECT p_seats - count(*) INTO free
    FROM seats s JOIN calls c ON c.id = s.call_id
    WHERE s.workflow_id = p_workflow AND c.state <> 'ended' AND s.call_id <> ALL (p_calls);
    IF free <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    INSERT INTO seats (call_id, workflow_id)
    SELECT u.call_id, p_workflow
    FROM (SELECT DISTINCT ON (call_id) call_id, n
          FROM unnest(p_calls) WITH ORDINALITY AS a(call_id, n)
          ORDER BY call_id, n) AS u
    ORDER BY u.n
    LIMIT free
    ON CONFLICT (call_id) DO UPDATE SET claimed_at = seats.claimed_at
    RETURNING seats.call_id;
END
$$;
