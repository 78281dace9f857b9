-- Why a call ended, as the worker's SIP layer tells it (hangup, ring_timeout, pacing, ...).
-- 'pacing' marks a call the predictive pacer took back while it rang: the pacer's
-- statistics leave such calls out, and its webhook says so.
ALTER TABLE calls ADD COLUMN end_reason text;
