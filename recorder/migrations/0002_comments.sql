-- Live comments: moderation mode per session, the sensitive-word list, and what the
-- comment export and the moderators' queue read.

ALTER TABLE sessions
    ADD COLUMN moderation text NOT NULL DEFAULT 'pre' CHECK (moderation IN ('pre', 'post'));

-- Words that send a comment to review instead of straight to screen. Stored normalised
-- (NFKC, case-folded, without spaces and punctuation) so matching is by substring.
CREATE TABLE sensitive_words (
    word     text PRIMARY KEY CHECK (length(word) BETWEEN 1 AND 50),
    added_by text NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE comments ADD COLUMN delegation text NOT NULL DEFAULT '';
ALTER TABLE comments ADD COLUMN adopted_note text NOT NULL DEFAULT '' CHECK (length(adopted_note) <= 1000);
CREATE INDEX comments_pending ON comments (session_id, id) WHERE status = 'pending';
CREATE INDEX comments_pinned ON comments (session_id, id) WHERE pinned AND status = 'published';
