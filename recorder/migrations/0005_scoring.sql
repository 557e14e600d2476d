-- Scoring: points derived from the ledger under a version of the rules, each row traceable
-- to the fact that earned it (activity + fact id), the rule key that priced it and the
-- version. Points are derived data, rebuilt by a rescore from the facts: they carry no
-- foreign keys (a per-row check would dominate a rescore of a year), and the points and the
-- record of rescores are UNLOGGED (no WAL: a rescore writes half a million rows). After a
-- crash PostgreSQL empties both together, so the next read finds no rescore and derives the
-- points again.

-- The TOML a version was loaded from, kept beside its normalised form.
ALTER TABLE score_rules ADD COLUMN source text NOT NULL DEFAULT '';

CREATE UNLOGGED TABLE score_points (
    version    integer NOT NULL,
    session_id text NOT NULL,
    rep_id     text NOT NULL,
    -- presence: attended, below the effective-attendance threshold (0 points, kept for the record).
    activity   text NOT NULL CHECK (activity IN ('attendance', 'presence', 'absence', 'leave', 'comment',
                                                 'adopted_comment', 'poll', 'lecture_minute')),
    -- The fact: a comment id, a poll id, or the session id for attendance, absence and leave.
    fact       text NOT NULL,
    rule       text NOT NULL,
    quantity   numeric NOT NULL,
    points     numeric NOT NULL,
    at         timestamptz NOT NULL,  -- when the fact happened
    period_at  timestamptz NOT NULL,  -- the session's start: the period the points belong to
    -- A fact is priced once per version (its period follows from its session).
    PRIMARY KEY (version, period_at, activity, fact, rep_id)
);
CREATE INDEX score_points_rep ON score_points (version, rep_id, period_at);

-- Each rescore: which sessions (those that ended and started in the period) under which version.
CREATE UNLOGGED TABLE score_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version     integer NOT NULL REFERENCES score_rules,
    period_from timestamptz NOT NULL,
    period_to   timestamptz NOT NULL,
    sessions    integer NOT NULL,
    points_rows integer NOT NULL,
    scored_by   text NOT NULL,
    scored_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (period_to > period_from)
);
CREATE INDEX score_runs_version ON score_runs (version, scored_at);

CREATE INDEX leaves_of_absence_rep ON leaves_of_absence (rep_id);
CREATE INDEX comments_rep ON comments (rep_id, created_at);
CREATE INDEX attendance_rep ON attendance_intervals (rep_id, started_at);
CREATE INDEX sessions_ended ON sessions (started_at) WHERE state = 'ended';
