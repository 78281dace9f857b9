-- The delivery that claimed a call: a claim retried after a lost answer
-- accepts only a row claimed under its own token, never one a finished call of
-- the same worker left 'dialing' while its end is still on the way.
ALTER TABLE calls ADD COLUMN claim_token uuid;
