-- WHIP feeds: a stream key per feed, stored only as the SHA-256 digest of a 256-bit random
-- key (hex), rotated by an admin; which node ingests a live feed, and since when.
ALTER TABLE feeds
    ADD COLUMN key_version integer NOT NULL DEFAULT 1 CHECK (key_version > 0),
    ADD COLUMN created_by  text NOT NULL DEFAULT '',
    ADD COLUMN rotated_at  timestamptz,
    ADD COLUMN node        text,
    ADD COLUMN live_since  timestamptz,
    ADD CONSTRAINT feeds_whip_key CHECK (source <> 'whip' OR stream_key_hash ~ '^[0-9a-f]{64}$'),
    ADD CONSTRAINT feeds_live_node CHECK ((state = 'live') = (node IS NOT NULL));

CREATE INDEX feeds_session ON feeds (session_id);
