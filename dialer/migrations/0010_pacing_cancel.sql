-- Calls the predictive pacer asked to hang up while they rang (scheduler.pacing, rule 5).
-- Set by the scheduler when it asks; such a call's outcome (almost always no_answer) says
-- nothing of how often people answer, so pacing statistics leave it out.
ALTER TABLE calls ADD COLUMN pacing_cancel_at timestamptz;
