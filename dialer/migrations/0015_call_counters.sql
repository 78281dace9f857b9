-- Counters that only go up, for Prometheus rates: calls handed to a trunk
-- ('dialled') and calls ended by disposition ('ended'), per workflow. Statement
-- triggers keep them, so every path that claims or ends calls (workers, the
-- event consumer, the API, the scheduler) counts, in the transaction that makes
-- the change, with one upsert per statement rather than one per call.
CREATE TABLE call_counters (
    workflow_id  uuid NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('dialled', 'ended')),
    disposition  text NOT NULL DEFAULT '',
    n            bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow_id, kind, disposition)
);

-- Calls are inserted queued (and one at a time, so no insert trigger): every
-- count comes from an update.
CREATE FUNCTION count_call_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_counters (workflow_id, kind, disposition, n)
    SELECT n.workflow_id, k.kind, k.disposition, count(*)
    FROM new_calls n
    JOIN old_calls o ON o.id = n.id
    CROSS JOIN LATERAL (
        SELECT 'dialled' AS kind, '' AS disposition
        WHERE o.dialing_at IS NULL AND n.dialing_at IS NOT NULL
        UNION ALL
        SELECT 'ended', coalesce(n.disposition, '')
        WHERE o.state <> 'ended' AND n.state = 'ended'
    ) k
    GROUP BY 1, 2, 3
    -- One order for every transaction's upserts: no deadlock between them.
    ORDER BY 1, 2, 3
    ON CONFLICT (workflow_id, kind, disposition)
    DO UPDATE SET n = call_counters.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

CREATE TRIGGER calls_counted AFTER UPDATE ON calls
    REFERENCING OLD TABLE AS old_calls NEW TABLE AS new_calls
    FOR EACH STATEMENT EXECUTE FUNCTION count_call_changes();

-- What happened before the counters existed.
INSERT INTO call_counters (workflow_id, kind, disposition, n)
SELECT workflow_id, 'ended', coalesce(disposition, ''), count(*)
FROM calls WHERE state = 'ended' GROUP BY 1, 2, 3;
INSERT INTO call_counters (workflow_id, kind, disposition, n)
SELECT workflow_id, 'dialled', '', count(*)
FROM calls WHERE dialing_at IS NOT NULL GROUP BY 1;
