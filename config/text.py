"""Text from outside: trimmed, control characters removed, stored as text (escaped when shown)."""

from __future__ import annotations

import unicodedata


def clean_text(value: str, *, multiline: bool = False) -> str:
    """Drop control and format characters (keeping newlines and tabs when `multiline`),
    normalise to NFC and trim. Bidi overrides and zero-width characters go too: they are
    how a comment hides what it says."""
    kept = []
    for ch in unicodedata.normalize("NFC", value):
        if multiline and ch in "\n\t":
            kept.append(ch)
        elif ch in "\r" or unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            continue
        else:
            kept.append(ch)
    return "".join(kept).strip()
