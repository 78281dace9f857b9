-- Trunk limits shared by every worker (dialer/trunk_limits.py). A trunk is keyed by
-- text the same in every process: "tenant_id:name" for a tenant's trunk (an edit keeps
-- the key, so calls placed before it keep counting), "name:host:port" for a process's
-- default trunk.

-- Channels: a lease per call in progress, keyed by the dial's call id. One counts while
-- its call is not ended; a lease with no call row (a bridged transfer leg, a test) while
-- its worker is not known to be gone. So a dead worker's leases stop counting once the
-- scheduler closes its calls, even though nobody deletes them.
CREATE TABLE trunk_channels (
    call_id    uuid PRIMARY KEY,
    trunk_key  text NOT NULL,
    worker_id  text NOT NULL DEFAULT '',
    taken_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX trunk_channels_trunk ON trunk_channels (trunk_key);

-- Leases for many calls of one trunk in one round trip, in the order given, while fewer
-- than p_max leases that count exist. As claim_seats (0008): the trunk's advisory lock
-- (class 24233), then each statement with a snapshot of its own that sees every claim
-- committed before the lock was granted. A call that already holds its lease keeps it.
-- Leases that no longer count (their call ended) are deleted on the way.
CREATE FUNCTION claim_trunk_channels(p_calls uuid[], p_key text, p_max integer, p_worker text)
RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    free integer;
BEGIN
    PERFORM pg_advisory_xact_lock(24233, hashtext(p_key));
    DELETE FROM trunk_channels t USING calls c
    WHERE t.trunk_key = p_key AND c.id = t.call_id AND c.state = 'ended';
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

-- Calls per second: the time the trunk's next INVITE may go, from any worker. A worker
-- that needs n sends moves it n intervals on from max(next_at, now) in one statement
-- (the row lock orders concurrent workers) and spaces its sends from there.
CREATE TABLE trunk_pace (
    trunk_key  text PRIMARY KEY,
    next_at    timestamptz NOT NULL
);

-- A batch of one worker's calls of a trunk in one round trip: their channel leases
-- (p_max: NULL for none), then send slots for those granted, p_interval seconds apart
-- (NULL for no pace), in the order given. Returns each granted call with the seconds
-- from the database's clock, just before the pace row's update, to its slot. Under
-- the trunk's advisory lock when it has channels; the pace row's lock orders workers.
CREATE FUNCTION take_trunk_channels(
    p_calls uuid[], p_key text, p_max integer, p_worker text, p_interval double precision
)
RETURNS TABLE (lease uuid, send_in double precision)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    granted uuid[];
    span interval;
    t timestamptz;
    first_at timestamptz;
BEGIN
    IF p_max IS NULL THEN
        granted := p_calls;
    ELSE
        granted := ARRAY(
            SELECT a.c FROM unnest(p_calls) WITH ORDINALITY AS a(c, n)
            WHERE a.c IN (SELECT claim_trunk_channels(p_calls, p_key, p_max, p_worker))
            ORDER BY a.n);
    END IF;
    IF p_interval IS NULL OR cardinality(granted) = 0 THEN
        RETURN QUERY SELECT g, 0.0::double precision FROM unnest(granted) AS g;
        RETURN;
    END IF;
    span := cardinality(granted) * p_interval * interval '1 second';
    t := clock_timestamp();
    INSERT INTO trunk_pace AS p (trunk_key, next_at) VALUES (p_key, t + span)
    ON CONFLICT ON CONSTRAINT trunk_pace_pkey DO UPDATE
    SET next_at = greatest(p.next_at, t) + span
    RETURNING p.next_at - span INTO first_at;
    RETURN QUERY
    SELECT a.g, extract(epoch FROM first_at - t)::double precision + (a.i - 1) * p_interval
    FROM unnest(granted) WITH ORDINALITY AS a(g, i);
END
$$;
