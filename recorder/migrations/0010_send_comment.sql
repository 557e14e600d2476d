-- A comment sent in one round trip, as moderation already is (0003): the comment and, when
-- it is published at once, its event, in one statement. Five round trips (begin, insert,
-- the seq, the event, commit) held the session's seq for three of them; with the ledger
-- 2 s away that was 12 s a comment, and every round trip also waits its turn behind a
-- busy node's frame writes.
--
-- Returns {"id", "status", "repeated": true} for a key this representative used before
-- (nothing new is written), else {"id", "status", "repeated": false, "comment": {…},
-- "event": {"seq", "type", "at", "data"} | null}.

CREATE FUNCTION send_comment(
    p_session text, p_rep text, p_name text, p_body text, p_status text, p_flagged text[], p_key text
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    c comments;
    ev events;
BEGIN
    INSERT INTO comments (session_id, rep_id, author_name, delegation, body, status, flagged_words,
                          client_key)
        VALUES (p_session, p_rep, p_name,
                coalesce((SELECT delegation FROM representatives WHERE id = p_rep), ''),
                p_body, p_status, p_flagged, p_key)
        ON CONFLICT (session_id, rep_id, client_key) DO NOTHING
        RETURNING * INTO c;
    IF NOT FOUND THEN
        SELECT * INTO c FROM comments
         WHERE session_id = p_session AND rep_id = p_rep AND client_key = p_key;
        RETURN jsonb_build_object('id', c.id, 'status', c.status, 'repeated', true);
    END IF;

    IF c.status = 'published' THEN
        INSERT INTO events (session_id, seq, type, actor, data)
            SELECT p_session, s.last_seq + 1, 'comment.published', p_rep, comment_view(c)
              FROM sessions s WHERE s.id = p_session FOR NO KEY UPDATE
            RETURNING * INTO ev;
    END IF;

    RETURN jsonb_build_object(
        'id', c.id,
        'status', c.status,
        'repeated', false,
        'comment', comment_view(c),
        'event', CASE WHEN ev.seq IS NULL THEN NULL ELSE jsonb_build_object(
            'seq', ev.seq, 'type', ev.type,
            'at', to_char(ev.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            'data', ev.data) END);
END $$;
