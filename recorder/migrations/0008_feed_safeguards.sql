-- Court-hearing safeguards: the public output of a feed trails live by `delay_seconds`, and
-- a host can cut it to a slate (`cut`) until released.
ALTER TABLE feeds
    ADD COLUMN delay_seconds integer NOT NULL DEFAULT 0 CHECK (delay_seconds BETWEEN 0 AND 300),
    ADD COLUMN cut           boolean NOT NULL DEFAULT false,
    ADD COLUMN cut_at        timestamptz;
