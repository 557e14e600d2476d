-- Polls and ballots. `ballots` is who answered which question (one row per representative
-- per question, whatever the poll's visibility); `votes` is what was chosen. For a named
-- poll a vote carries its representative; an anonymous poll keeps no per-vote row at all,
-- only counts per option (`anonymous_counts`), so nothing links a choice to a voter.

ALTER TABLE polls ADD COLUMN template text NOT NULL DEFAULT '' CHECK (length(template) <= 64);
ALTER TABLE polls ADD COLUMN description text NOT NULL DEFAULT '' CHECK (length(description) <= 2000);
ALTER TABLE polls ADD CONSTRAINT polls_anonymous_no_change CHECK (visibility = 'named' OR NOT allow_change);
ALTER TABLE polls ADD CONSTRAINT polls_tiers CHECK (
    cardinality(eligible_tiers) >= 1 AND eligible_tiers <@ ARRAY['voting', 'observer', 'viewer']);
CREATE INDEX polls_session ON polls (session_id, id);

ALTER TABLE poll_questions ADD COLUMN unit text NOT NULL DEFAULT '' CHECK (length(unit) <= 200);

-- draft → open → closed → published; the definition is fixed once the poll opens.
CREATE FUNCTION polls_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state <> OLD.state AND NOT (
        (OLD.state = 'draft' AND NEW.state = 'open') OR
        (OLD.state = 'open' AND NEW.state = 'closed') OR
        (OLD.state = 'closed' AND NEW.state = 'published')) THEN
        RAISE EXCEPTION 'poll % cannot go from % to %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER polls_transition BEFORE UPDATE ON polls
    FOR EACH ROW EXECUTE FUNCTION polls_check_transition();

CREATE FUNCTION poll_definition_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    poll bigint;
BEGIN
    IF TG_TABLE_NAME = 'poll_questions' THEN
        poll := coalesce(NEW.poll_id, OLD.poll_id);
    ELSE
        SELECT q.poll_id INTO poll FROM poll_questions q WHERE q.id = coalesce(NEW.question_id, OLD.question_id);
    END IF;
    IF EXISTS (SELECT 1 FROM polls WHERE id = poll AND state <> 'draft') THEN
        RAISE EXCEPTION 'poll % is no longer a draft; its questions and options are fixed', poll
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN coalesce(NEW, OLD);
END $$;
CREATE TRIGGER poll_questions_frozen BEFORE INSERT OR UPDATE OR DELETE ON poll_questions
    FOR EACH ROW EXECUTE FUNCTION poll_definition_frozen();
CREATE TRIGGER poll_options_frozen BEFORE INSERT OR UPDATE OR DELETE ON poll_options
    FOR EACH ROW EXECUTE FUNCTION poll_definition_frozen();

CREATE TABLE ballots (
    poll_id     bigint NOT NULL REFERENCES polls,
    question_id bigint NOT NULL REFERENCES poll_questions,
    rep_id      text NOT NULL,
    client_key  text NOT NULL CHECK (length(client_key) BETWEEN 1 AND 64),
    cast_at     timestamptz NOT NULL DEFAULT now(),
    changed_at  timestamptz,
    -- One answer per representative per question, whatever the application does.
    PRIMARY KEY (question_id, rep_id)
);
CREATE INDEX ballots_key ON ballots (poll_id, rep_id, client_key);
CREATE INDEX ballots_rep ON ballots (rep_id, cast_at);

-- Votes of named polls only; `client_key` and the representative live in `ballots`.
DROP TABLE votes;
CREATE TABLE votes (
    question_id bigint NOT NULL REFERENCES poll_questions,
    rep_id      text NOT NULL,
    poll_id     bigint NOT NULL REFERENCES polls,
    option_ids  bigint[] NOT NULL CHECK (cardinality(option_ids) >= 1),
    PRIMARY KEY (question_id, rep_id),
    FOREIGN KEY (question_id, rep_id) REFERENCES ballots (question_id, rep_id)
);
CREATE INDEX votes_poll ON votes (poll_id);

CREATE TABLE anonymous_counts (
    question_id bigint NOT NULL REFERENCES poll_questions,
    option_id   bigint NOT NULL REFERENCES poll_options,
    count       integer NOT NULL CHECK (count >= 0),
    PRIMARY KEY (question_id, option_id)
);

-- Ballots and votes are facts of a duty record: never removed, and a vote changes only
-- where its poll allows it (checked by the application under the poll's row lock).
CREATE TRIGGER ballots_no_delete BEFORE DELETE ON ballots
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER votes_no_delete BEFORE DELETE ON votes
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- Earlier answers replaced where a poll allows changing a vote: the trail of a changed vote,
-- and the keys a retry of an earlier cast may still carry.
CREATE TABLE ballot_changes (
    question_id bigint NOT NULL,
    rep_id      text NOT NULL,
    client_key  text NOT NULL,
    option_ids  bigint[] NOT NULL,
    cast_at     timestamptz NOT NULL,
    replaced_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (question_id, rep_id) REFERENCES ballots (question_id, rep_id)
);
CREATE INDEX ballot_changes_key ON ballot_changes (question_id, rep_id, client_key);
CREATE TRIGGER ballot_changes_append_only BEFORE UPDATE OR DELETE ON ballot_changes
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- Many casts in one round trip (group commit). Each input row is one question of one cast
-- (`n` numbers the casts); a cast is written whole or not at all. Per cast, `status` is
--   recorded          new ballots written
--   changed           an earlier answer replaced (the poll allows it); `old_options` says what
--   already_recorded  this key was seen before for one of its questions: nothing written
--   conflict          another answer to one of its questions exists: nothing written
--   closed            the poll is not open: nothing written
-- Representatives are serialised by advisory locks taken in one global order, so concurrent
-- batches (other nodes) never race on one person's ballot and never deadlock; the polls are
-- share-locked so closing a poll waits for the casts already on their way in.
CREATE FUNCTION cast_ballots(c_n integer[], c_poll bigint[], c_question bigint[], c_rep text[],
                             c_key text[], c_options text[])
RETURNS TABLE (n integer, question_id bigint, status text, old_options bigint[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(h)
       FROM (SELECT DISTINCT hashtext('ballot ' || r) AS h FROM unnest(c_rep) AS r ORDER BY 1) AS s;
    RETURN QUERY
    WITH x AS (
        SELECT i.n, i.poll_id, i.question_id, i.rep_id, i.client_key, i.opts::bigint[] AS opts
          FROM unnest(c_n, c_poll, c_question, c_rep, c_key, c_options)
               AS i(n, poll_id, question_id, rep_id, client_key, opts)),
    p AS (
        SELECT po.id, po.visibility, po.allow_change FROM polls po
         WHERE po.id IN (SELECT DISTINCT x.poll_id FROM x) AND po.state = 'open'
           FOR SHARE),
    prior AS (
        SELECT x.n, x.question_id, b.client_key AS old_key, b.cast_at, v.option_ids AS old_opts,
               (b.client_key = x.client_key OR EXISTS (
                    SELECT 1 FROM ballot_changes c
                     WHERE c.question_id = x.question_id AND c.rep_id = x.rep_id
                       AND c.client_key = x.client_key)) AS same_key
          FROM x JOIN ballots b ON b.question_id = x.question_id AND b.rep_id = x.rep_id
          LEFT JOIN votes v ON v.question_id = x.question_id AND v.rep_id = x.rep_id),
    verdict AS (
        SELECT x.n,
               CASE WHEN bool_or(p.id IS NULL) THEN 'closed'
                    WHEN bool_or(pr.same_key) THEN 'already_recorded'
                    WHEN bool_or(pr.n IS NOT NULL AND NOT p.allow_change) THEN 'conflict'
                    WHEN bool_or(pr.n IS NOT NULL) THEN 'changed'
                    ELSE 'recorded' END AS status
          FROM x LEFT JOIN p ON p.id = x.poll_id
          LEFT JOIN prior pr ON pr.n = x.n AND pr.question_id = x.question_id
         GROUP BY x.n),
    w AS (
        SELECT x.*, p.visibility, pr.n IS NOT NULL AS replaces, pr.old_key, pr.old_opts, pr.cast_at AS old_at
          FROM x JOIN verdict vd ON vd.n = x.n AND vd.status IN ('recorded', 'changed')
          JOIN p ON p.id = x.poll_id
          LEFT JOIN prior pr ON pr.n = x.n AND pr.question_id = x.question_id),
    new_ballots AS (
        INSERT INTO ballots (poll_id, question_id, rep_id, client_key)
        SELECT w.poll_id, w.question_id, w.rep_id, w.client_key FROM w WHERE NOT w.replaces
        RETURNING 1),
    trail AS (
        INSERT INTO ballot_changes (question_id, rep_id, client_key, option_ids, cast_at)
        SELECT w.question_id, w.rep_id, w.old_key, w.old_opts, w.old_at FROM w WHERE w.replaces
        RETURNING 1),
    moved AS (
        UPDATE ballots b SET client_key = w.client_key, cast_at = now(), changed_at = now()
          FROM w WHERE w.replaces AND b.question_id = w.question_id AND b.rep_id = w.rep_id
        RETURNING 1),
    new_votes AS (
        INSERT INTO votes (question_id, rep_id, poll_id, option_ids)
        SELECT w.question_id, w.rep_id, w.poll_id, w.opts FROM w
         WHERE w.visibility = 'named' AND NOT w.replaces
        RETURNING 1),
    changed_votes AS (
        UPDATE votes v SET option_ids = w.opts
          FROM w WHERE w.replaces AND v.question_id = w.question_id AND v.rep_id = w.rep_id
        RETURNING 1),
    counted AS (
        INSERT INTO anonymous_counts AS a (question_id, option_id, count)
        SELECT w.question_id, o, count(*)::integer FROM w, unnest(w.opts) AS o
         WHERE w.visibility = 'anonymous'
         GROUP BY w.question_id, o
        ON CONFLICT ON CONSTRAINT anonymous_counts_pkey DO UPDATE SET count = a.count + excluded.count
        RETURNING 1)
    SELECT x.n, x.question_id, vd.status,
           CASE WHEN vd.status = 'changed' THEN pr.old_opts END
      FROM x JOIN verdict vd ON vd.n = x.n
      LEFT JOIN prior pr ON pr.n = x.n AND pr.question_id = x.question_id
     ORDER BY x.n, x.question_id;
END $$;
