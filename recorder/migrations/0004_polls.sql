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
