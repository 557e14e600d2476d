-- Renewing a lease rewrites only lease_until, node_id and close_reason. With no index on
-- those columns and room left on each page, PostgreSQL renews in place (a HOT update): no
-- new entries in the exclusion (GiST) index, far less WAL — ten thousand representatives
-- renewed every few seconds no longer slow every other commit.
DROP INDEX attendance_open;
CREATE INDEX attendance_open ON attendance_intervals (session_id, rep_id) WHERE ended_at IS NULL;
ALTER TABLE attendance_intervals SET (fillfactor = 70);
