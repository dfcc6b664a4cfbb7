"""Case-insensitive LIKE search that also works for non-ASCII names on SQLite."""

from __future__ import annotations


def like_patterns(search: str) -> list[str]:
    """LIKE patterns for a case-insensitive search. SQLite folds case for ASCII only,
    so "šimonytė" would miss "Šimonytė"; the lower-cased, as-typed and capitalised
    forms cover how names are written without a database-specific collation."""
    forms = {search.lower(), search, search.capitalize(), search.title()}
    return [f"%{form.replace('%', '').replace('_', '')}%" for form in sorted(forms)]
