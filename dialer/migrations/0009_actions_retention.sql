-- Finished actions (their rendered requests carry names and message texts)
-- are deleted after a retention period; this index finds them without a scan.
CREATE INDEX actions_finished ON actions (completed_at) WHERE status <> 'pending';
