-- Leases that no longer count are deleted when the trunk is next claimed: those of
-- ended calls (as before), and now also those with no call row (a bridged transfer
-- leg) whose worker stopped or has not beaten for 60 s, which used to stay behind.
CREATE OR REPLACE FUNCTION claim_trunk_channels(p_calls uuid[], p_key text, p_max integer, p_worker text)
RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    free integer;
BEGIN
    PERFORM pg_advisory_xact_lock(24233, hashtext(p_key));
    DELETE FROM trunk_channels t USING calls c
    WHERE t.trunk_key = p_key AND c.id = t.call_id AND c.state = 'ended';
    DELETE FROM trunk_channels t USING workers w
    WHERE t.trunk_key = p_key AND w.id = t.worker_id
      AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.id = t.call_id)
      AND (w.stopped_at IS NOT NULL OR w.last_seen_at <= now() - interval '60 seconds');
    SELECT p_max - count(*) INTO free
    FROM trunk_channels t
    LEFT JOIN calls c ON c.id = t.call_id
    LEFT JOIN workers w ON w.id = t.worker_id
    WHERE t.trunk_key = p_key AND t.call_id <> ALL (p_calls)
      AND (c.id IS NOT NULL
           OR w.id IS NULL
           OR (w.stopped_at IS NULL AND w.last_seen_at > now() - interval '60 seconds'));
    IF free <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    INSERT INTO trunk_channels (call_id, trunk_key, worker_id)
    SELECT u.call_id, p_key, p_worker
    FROM (SELECT DISTINCT ON (call_id) call_id, n
          FROM unnest(p_calls) WITH ORDINALITY AS a(call_id, n)
          ORDER BY call_id, n) AS u
    ORDER BY u.n
    LIMIT free
    ON CONFLICT (call_id) DO UPDATE SET taken_at = trunk_channels.taken_at
    RETURNING trunk_channels.call_id;
END
$$;
