-- Feeds relayed from an upstream HLS URL: the node pulling one holds it while it is live or
-- stalled (the upstream stopped sending; it resumes by itself).
ALTER TABLE feeds
    DROP CONSTRAINT feeds_live_node,
    ADD CONSTRAINT feeds_live_node CHECK ((state IN ('live', 'stalled')) = (node IS NOT NULL)),
    ADD CONSTRAINT feeds_upstream_length CHECK (upstream_url IS NULL OR length(upstream_url) <= 2048);
