-- The ledger: every fact that counts. The database itself refuses what must never happen
-- (two votes by one representative on one question, overlapping attendance intervals,
-- a gap or a rewrite in a session's event log).

CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE representatives (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    level           text NOT NULL CHECK (level IN ('national', 'provincial', 'city', 'county', 'township')),
    delegation      text NOT NULL DEFAULT '' CHECK (length(delegation) <= 100),
    group_name      text NOT NULL DEFAULT '' CHECK (length(group_name) <= 100),
    liaison_station text NOT NULL DEFAULT '' CHECK (length(liaison_station) <= 100),
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX representatives_delegation ON representatives (delegation);

CREATE TABLE sessions (
    id              text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    kind            text NOT NULL CHECK (kind IN ('committee_meeting', 'special_inquiry', 'court_hearing',
                                                  'procuratorate_open_day', 'lecture', 'consultation')),
    title           text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    announcement    text NOT NULL DEFAULT '' CHECK (length(announcement) <= 5000),
    scheduled_start timestamptz NOT NULL,
    scheduled_end   timestamptz NOT NULL,
    state           text NOT NULL DEFAULT 'scheduled' CHECK (state IN ('scheduled', 'live', 'ended')),
    audience        text NOT NULL DEFAULT 'roster' CHECK (audience IN ('public', 'roster', 'invited')),
    default_tier    text NOT NULL DEFAULT 'viewer' CHECK (default_tier IN ('voting', 'observer', 'viewer')),
    -- Clients resume with (epoch, seq); a new epoch tells them their seq means nothing here.
    epoch           text NOT NULL,
    last_seq        bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    started_at      timestamptz,
    ended_at        timestamptz,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (scheduled_end > scheduled_start)
);
CREATE INDEX sessions_start ON sessions (scheduled_start);

-- scheduled → live → ended (scheduled → ended cancels a session that never went live).
CREATE FUNCTION sessions_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state <> OLD.state AND NOT (
        (OLD.state = 'scheduled' AND NEW.state IN ('live', 'ended')) OR
        (OLD.state = 'live' AND NEW.state = 'ended')) THEN
        RAISE EXCEPTION 'session % cannot go from % to %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.last_seq < OLD.last_seq THEN
        RAISE EXCEPTION 'session % event log cannot go back', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER sessions_transition BEFORE UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_check_transition();

CREATE TABLE session_participants (
    session_id text NOT NULL REFERENCES sessions ON DELETE CASCADE,
    rep_id     text NOT NULL,
    tier       text NOT NULL CHECK (tier IN ('voting', 'observer', 'viewer')),
    PRIMARY KEY (session_id, rep_id)
);

CREATE TABLE feeds (
    id              text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    session_id      text NOT NULL REFERENCES sessions,
    source          text NOT NULL CHECK (source IN ('whip', 'hls_relay')),
    stream_key_hash text,
    upstream_url    text,
    state           text NOT NULL DEFAULT 'idle' CHECK (state IN ('idle', 'live', 'stalled', 'ended')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (source <> 'hls_relay' OR upstream_url IS NOT NULL)
);

-- The per-session event log. `seq` is gap-free: each row must be the session's next one,
-- and rows are never changed or removed.
CREATE TABLE events (
    session_id text NOT NULL REFERENCES sessions,
    seq        bigint NOT NULL CHECK (seq > 0),
    type       text NOT NULL CHECK (type ~ '^[a-z]+(\.[a-z_]+)+$'),
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text,
    data       jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (session_id, seq)
);

CREATE FUNCTION events_check_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sessions SET last_seq = NEW.seq WHERE id = NEW.session_id AND last_seq = NEW.seq - 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event seq % is not the next one in session %', NEW.seq, NEW.session_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER events_seq BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION events_check_seq();

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are append-only', TG_TABLE_NAME USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE TABLE comments (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id    text NOT NULL REFERENCES sessions,
    rep_id        text NOT NULL,
    author_name   text NOT NULL,
    body          text NOT NULL CHECK (length(body) BETWEEN 1 AND 5000),
    status        text NOT NULL CHECK (status IN ('pending', 'published', 'rejected', 'removed')),
    pinned        boolean NOT NULL DEFAULT false,
    highlighted   boolean NOT NULL DEFAULT false,
    answered      boolean NOT NULL DEFAULT false,
    adopted       boolean NOT NULL DEFAULT false,
    flagged_words text[] NOT NULL DEFAULT '{}',
    client_key    text NOT NULL CHECK (length(client_key) BETWEEN 1 AND 64),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (session_id, rep_id, client_key)
);
CREATE INDEX comments_session_status ON comments (session_id, status, id);

CREATE TABLE moderation_actions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    comment_id   bigint NOT NULL REFERENCES comments,
    moderator_id text NOT NULL,
    action       text NOT NULL CHECK (action IN ('approve', 'reject', 'remove', 'pin', 'unpin', 'highlight',
                                                 'unhighlight', 'answered', 'adopt')),
    note         text NOT NULL DEFAULT '' CHECK (length(note) <= 1000),
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX moderation_actions_comment ON moderation_actions (comment_id);

CREATE TABLE polls (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id     text NOT NULL REFERENCES sessions,
    kind           text NOT NULL CHECK (kind IN ('satisfaction', 'single', 'multiple', 'yes_no')),
    title          text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    visibility     text NOT NULL DEFAULT 'named' CHECK (visibility IN ('named', 'anonymous')),
    state          text NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'open', 'closed', 'published')),
    live_results   boolean NOT NULL DEFAULT false,
    allow_change   boolean NOT NULL DEFAULT false,
    threshold      numeric CHECK (threshold IS NULL OR threshold BETWEEN 0 AND 1),
    eligible_tiers text[] NOT NULL DEFAULT '{voting}',
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    opened_at      timestamptz,
    closed_at      timestamptz,
    published_at   timestamptz
);

CREATE TABLE poll_questions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    poll_id     bigint NOT NULL REFERENCES polls ON DELETE CASCADE,
    position    integer NOT NULL CHECK (position >= 0),
    text        text NOT NULL CHECK (length(text) BETWEEN 1 AND 500),
    max_choices integer NOT NULL DEFAULT 1 CHECK (max_choices >= 1),
    UNIQUE (poll_id, position)
);

CREATE TABLE poll_options (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    question_id bigint NOT NULL REFERENCES poll_questions ON DELETE CASCADE,
    position    integer NOT NULL CHECK (position >= 0),
    label       text NOT NULL CHECK (length(label) BETWEEN 1 AND 200),
    UNIQUE (question_id, position)
);

CREATE TABLE votes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    poll_id     bigint NOT NULL REFERENCES polls,
    question_id bigint NOT NULL REFERENCES poll_questions,
    rep_id      text NOT NULL,
    option_ids  bigint[] NOT NULL CHECK (cardinality(option_ids) >= 1),
    client_key  text NOT NULL CHECK (length(client_key) BETWEEN 1 AND 64),
    cast_at     timestamptz NOT NULL DEFAULT now(),
    -- One vote per representative per question, whatever the application does.
    UNIQUE (question_id, rep_id)
);
CREATE INDEX votes_poll ON votes (poll_id);

CREATE TABLE onsite_tallies (
    question_id bigint NOT NULL REFERENCES poll_questions ON DELETE CASCADE,
    option_id   bigint NOT NULL REFERENCES poll_options ON DELETE CASCADE,
    count       integer NOT NULL CHECK (count >= 0),
    entered_by  text NOT NULL,
    entered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (question_id, option_id)
);

CREATE TABLE attendance_intervals (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id  text NOT NULL REFERENCES sessions,
    rep_id      text NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    lease_until timestamptz NOT NULL,
    node_id     text NOT NULL,
    close_reason text CHECK (close_reason IN ('left', 'lease_expired', 'session_ended')),
    CHECK (ended_at IS NULL OR ended_at >= started_at),
    -- One representative's intervals in one session never overlap (an open one runs to infinity).
    CONSTRAINT attendance_no_overlap EXCLUDE USING gist (
        session_id WITH =, rep_id WITH =,
        tstzrange(started_at, coalesce(ended_at, 'infinity'), '[)') WITH &&)
);
CREATE INDEX attendance_open ON attendance_intervals (lease_until) WHERE ended_at IS NULL;

CREATE TABLE leaves_of_absence (
    session_id  text NOT NULL REFERENCES sessions,
    rep_id      text NOT NULL,
    reason      text NOT NULL DEFAULT '' CHECK (length(reason) <= 500),
    recorded_by text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, rep_id)
);

CREATE TABLE score_rules (
    version    integer PRIMARY KEY CHECK (version > 0),
    rules      jsonb NOT NULL,
    note       text NOT NULL DEFAULT '',
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER score_rules_append_only BEFORE UPDATE OR DELETE ON score_rules
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- Refused attempts and staff actions, for whoever has to answer "who did this".
CREATE TABLE audit_log (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text NOT NULL,
    action text NOT NULL,
    target text NOT NULL DEFAULT '',
    detail jsonb NOT NULL DEFAULT '{}'
);
