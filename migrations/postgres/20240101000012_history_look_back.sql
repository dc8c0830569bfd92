-- The security notice's look-back: an account's latest successful sign-ins but one, newest
-- first (EARLIER_SIGN_INS in src/store/sql/audit.rs, the same query), read in the order of
-- user_location_logs_user_recent_idx so that the read stops after the rows it returns.
--
-- Written as a plain query, the planner chose by its estimates, and they were wrong both
-- ways it meets this table: while the statistics are young (a new database's first minute
-- or so, before autovacuum analyzes it) and, once analyzed, because the status filter hid
-- the rows from them. Expecting a row or two, it read the account's whole history (through
-- idx_user_id, or the whole table) and sorted it, on every sign-in, at a cost that grew
-- with the history (measured in the README, "Sign-in"). Within this function sorting is
-- off, so the one plan left is the index's order. A SET clause holds only while the
-- function runs. (enable_incremental_sort: PostgreSQL 13 or later.)
CREATE OR REPLACE FUNCTION authflow_earlier_sign_ins(
    p_user BIGINT, p_except BIGINT, p_limit BIGINT)
RETURNS TABLE (r_ip TEXT, r_location TEXT, r_user_agent TEXT, r_status TEXT,
               r_created_at TIMESTAMP, r_method TEXT)
LANGUAGE plpgsql STABLE
SET enable_sort = off
SET enable_incremental_sort = off
AS $$
BEGIN
    RETURN QUERY
    SELECT CAST(l.ip_address AS TEXT), CAST(l.location AS TEXT), CAST(l.user_agent AS TEXT),
           CAST(l.access_status AS TEXT), l.created_at, CAST(l.method AS TEXT)
    FROM user_location_logs l
    WHERE l.user_id = p_user AND l.log_id <> p_except AND l.access_status = 'success'
    ORDER BY l.created_at DESC, l.log_id DESC
    LIMIT p_limit;
END
$$;
