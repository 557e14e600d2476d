"""The sensitive-word list (敏感词): a comment that contains one goes to review.

Matching is on normalised text — NFKC (full-width → half-width), case-folded, with
spaces, punctuation and symbols removed — so "敏 感-词" and "ＡＢＣ" still match. Chinese
needs no word segmentation for this: a listed word is found as a substring.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

import asyncpg

from interaction.errors import InvalidMessage

MAX_WORDS = 10_000


def normalise(text: str) -> str:
    out = []
    for ch in unicodedata.normalize("NFKC", text).casefold():
        category = unicodedata.category(ch)
        if category[0] in {"Z", "P", "S", "C"}:
            continue
        out.append(ch)
    return "".join(out)


class WordList:
    """An immutable matcher over a set of normalised words."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self.words = frozenset(w for w in (normalise(w) for w in words) if w)
        # Index by first character: a comment is scanned once, each position checked only
        # against the words that start with that character.
        index: dict[str, list[str]] = {}
        for word in sorted(self.words, key=len, reverse=True):
            index.setdefault(word[0], []).append(word)
        self._index = index

    def hits(self, text: str) -> list[str]:
        subject = normalise(text)
        found: set[str] = set()
        for i, ch in enumerate(subject):
            for word in self._index.get(ch, ()):
                if subject.startswith(word, i):
                    found.add(word)
        return sorted(found)


async def load(conn: asyncpg.Pool | asyncpg.Connection) -> WordList:
    return WordList(r["word"] for r in await conn.fetch("SELECT word FROM sensitive_words"))


def clean_words(words: list[str]) -> list[str]:
    cleaned = sorted({normalise(w) for w in words} - {""})
    if len(cleaned) > MAX_WORDS:
        raise InvalidMessage(f"at most {MAX_WORDS} sensitive words")
    if too_long := [w for w in cleaned if len(w) > 50]:
        raise InvalidMessage(f"sensitive words are at most 50 characters: {too_long[0][:20]}…")
    return cleaned


async def replace(pool: asyncpg.Pool, words: list[str], actor: str) -> dict[str, list[str]]:
    """Replace the whole list in one transaction, with the change in the audit log."""
    wanted = set(clean_words(words))
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE sensitive_words IN EXCLUSIVE MODE")
        current = {r["word"] for r in await conn.fetch("SELECT word FROM sensitive_words")}
        added, removed = sorted(wanted - current), sorted(current - wanted)
        if removed:
            await conn.execute("DELETE FROM sensitive_words WHERE word = ANY($1::text[])", removed)
        if added:
            await conn.executemany(
                "INSERT INTO sensitive_words (word, added_by) VALUES ($1, $2)", [(w, actor) for w in added]
            )
        if added or removed:
            await conn.execute(
                "INSERT INTO audit_log (actor, action, detail) VALUES ($1, 'sensitive_words.replace', $2)",
                actor,
                {"added": added, "removed": removed},
            )
    return {"added": added, "removed": removed}
