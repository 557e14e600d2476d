-- A moderation action in one round trip. Under load a node's event loop spends most of
-- its time writing frames, and every round trip of a request waits its turn behind them:
-- seven round trips per approval cost hundreds of milliseconds, one costs one turn.
--
-- Returns {"error": "not_found" | "conflict", "status"} when the action does not apply, else
-- {"status", "comment": {…}, "event": {"seq", "type", "at", "data"} | null}.

CREATE FUNCTION comment_view(c comments) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'id', c.id, 'rep', c.rep_id, 'name', c.author_name, 'delegation', c.delegation, 'text', c.body,
        'at', to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
        'pinned', c.pinned, 'highlighted', c.highlighted, 'answered', c.answered, 'adopted', c.adopted,
        'note', c.adopted_note)
$$;

CREATE FUNCTION moderate_comment(
    p_comment bigint, p_session text, p_moderator text, p_action text, p_note text
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    c comments;
    flag_column text;
    flag_value boolean;
    ev_type text;
    ev_data jsonb;
    ev events;
BEGIN
    SELECT * INTO c FROM comments WHERE id = p_comment AND session_id = p_session FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('error', 'not_found');
    END IF;

    IF p_action = 'approve' THEN
        IF c.status <> 'pending' THEN
            RETURN jsonb_build_object('error', 'conflict', 'status', c.status);
        END IF;
        UPDATE comments SET status = 'published' WHERE id = p_comment RETURNING * INTO c;
        ev_type := 'comment.published';
        ev_data := comment_view(c);
    ELSIF p_action = 'reject' THEN
        IF c.status <> 'pending' THEN
            RETURN jsonb_build_object('error', 'conflict', 'status', c.status);
        END IF;
        UPDATE comments SET status = 'rejected' WHERE id = p_comment RETURNING * INTO c;
    ELSIF p_action = 'remove' THEN
        IF c.status NOT IN ('published', 'pending') THEN
            RETURN jsonb_build_object('error', 'conflict', 'status', c.status);
        END IF;
        IF c.status = 'published' THEN
            ev_type := 'comment.removed';
            ev_data := jsonb_build_object('id', c.id);
        END IF;
        UPDATE comments SET status = 'removed' WHERE id = p_comment RETURNING * INTO c;
    ELSE
        flag_column := CASE p_action
            WHEN 'pin' THEN 'pinned' WHEN 'unpin' THEN 'pinned'
            WHEN 'highlight' THEN 'highlighted' WHEN 'unhighlight' THEN 'highlighted'
            WHEN 'answered' THEN 'answered' WHEN 'adopt' THEN 'adopted' END;
        IF flag_column IS NULL THEN
            RAISE EXCEPTION 'unknown moderation action %', p_action USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF c.status <> 'published' THEN
            RETURN jsonb_build_object('error', 'conflict', 'status', c.status);
        END IF;
        flag_value := p_action NOT IN ('unpin', 'unhighlight');
        EXECUTE format('UPDATE comments SET %I = $1, adopted_note = CASE WHEN $3 THEN $4 ELSE adopted_note END
                         WHERE id = $2 RETURNING *', flag_column)
            INTO c USING flag_value, p_comment, p_action = 'adopt', p_note;
        ev_type := 'comment.updated';
        ev_data := comment_view(c) - ARRAY['rep', 'name', 'delegation', 'text', 'at'];
    END IF;

    INSERT INTO moderation_actions (comment_id, moderator_id, action, note)
        VALUES (p_comment, p_moderator, p_action, p_note);

    IF ev_type IS NOT NULL THEN
        INSERT INTO events (session_id, seq, type, actor, data)
            SELECT p_session, s.last_seq + 1, ev_type, p_moderator, ev_data
              FROM sessions s WHERE s.id = p_session FOR NO KEY UPDATE
            RETURNING * INTO ev;
    END IF;

    RETURN jsonb_build_object(
        'status', c.status,
        'comment', comment_view(c),
        'event', CASE WHEN ev.seq IS NULL THEN NULL ELSE jsonb_build_object(
            'seq', ev.seq, 'type', ev.type,
            'at', to_char(ev.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            'data', ev.data) END);
END $$;
