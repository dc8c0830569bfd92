-- An explicit link's flow is bound to the session that started it: the callback links
-- only while that session is still active (a password reset, "this wasn't me" or
-- logout-all in between ends it). NULL for sign-in flows; a link flow started before
-- this column existed has NULL too and is refused.
ALTER TABLE sso_flows ADD COLUMN link_session_id TEXT;
