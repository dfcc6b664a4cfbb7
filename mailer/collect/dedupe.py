"""Fingerprints for deduplication: an exact hash and a SimHash of the normalised text.

SimHash (Charikar) is hand-written: it is twenty lines, and the PyPI packages for
it are unmaintained or pull in NumPy. Candidates for a near-duplicate are found
through an in-memory index of 8 bands of 8 bits (any two fingerprints within
``BAND_GUARANTEE`` bits share a band), then confirmed on the texts themselves
with word-shingle containment, which is what tells "the same release under an
aggregator's banner and footer" from "a similar release on the same topic".
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable

from mailer.collect.boilerplate import normalise

SHINGLE_WORDS = 3
BANDS = 8
BAND_BITS = 64 // BANDS
BAND_GUARANTEE = BANDS - 1
# Fingerprints further apart than this are not worth comparing texts for.
MAX_DISTANCE = 18
# Share of the shorter text's shingles that must appear in the longer one.
CONTAINMENT = 0.8
# Texts shorter than this (in words) are only deduplicated by exact hash.
MIN_WORDS = 25
_MASK = (1 << 64) - 1


def normalised_text(text: str) -> str:
    return normalise(text)


def content_hash(text: str) -> str:
    return hashlib.sha256(normalised_text(text).encode()).hexdigest()


def _token_hash(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "big")


def shingles(normalised: str) -> set[str]:
    words = normalised.split()
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def simhash(text: str) -> int:
    """Unsigned 64-bit SimHash over word shingles of the normalised text."""
    features = shingles(normalised_text(text))
    if not features:
        return 0
    # Bit columns of all feature hashes, most significant first; a bit of the result
    # is set when more than half of the features have it set.
    rows = [format(_token_hash(feature), "064b") for feature in features]
    half = len(rows) / 2
    result = 0
    for column in zip(*rows, strict=True):
        result = (result << 1) | (column.count("1") > half)
    return result


def to_signed(value: int) -> int:
    """Unsigned 64-bit → signed, as a BIGINT column stores it."""
    value &= _MASK
    return value - (1 << 64) if value >= 1 << 63 else value


def to_unsigned(value: int) -> int:
    return value & _MASK


def distance(a: int, b: int) -> int:
    return ((a ^ b) & _MASK).bit_count()


def word_count(text: str) -> int:
    return len(re.findall(r"\w+", text))


def containment(a: str, b: str) -> float:
    """|A ∩ B| / min(|A|, |B|) over word shingles of two normalised texts."""
    first, second = shingles(a), shingles(b)
    if not first or not second:
        return 0.0
    return len(first & second) / min(len(first), len(second))


def is_near_duplicate(text_a: str, text_b: str) -> bool:
    a, b = normalised_text(text_a), normalised_text(text_b)
    if min(len(a.split()), len(b.split())) < MIN_WORDS:
        return a == b
    return containment(a, b) >= CONTAINMENT


class SimhashIndex:
    """Fingerprints of stored releases, banded for quick candidate lookup."""

    def __init__(self, items: Iterable[tuple[int, int]] = ()) -> None:
        self._bands: list[dict[int, set[int]]] = [defaultdict(set) for _ in range(BANDS)]
        self._values: dict[int, int] = {}
        for key, value in items:
            self.add(key, value)

    @staticmethod
    def _band_values(value: int) -> list[int]:
        value = to_unsigned(value)
        mask = (1 << BAND_BITS) - 1
        return [(value >> (band * BAND_BITS)) & mask for band in range(BANDS)]

    def add(self, key: int, value: int) -> None:
        self.remove(key)
        self._values[key] = to_unsigned(value)
        for band, part in enumerate(self._band_values(value)):
            self._bands[band][part].add(key)

    def remove(self, key: int) -> None:
        old = self._values.pop(key, None)
        if old is None:
            return
        for band, part in enumerate(self._band_values(old)):
            self._bands[band][part].discard(key)

    def candidates(self, value: int, max_distance: int = MAX_DISTANCE) -> list[int]:
        """Keys whose fingerprint is within ``max_distance`` bits, closest first."""
        found: set[int] = set()
        for band, part in enumerate(self._band_values(value)):
            found |= self._bands[band].get(part, set())
        unsigned = to_unsigned(value)
        scored = [(distance(unsigned, self._values[key]), key) for key in found]
        return [key for score, key in sorted(scored) if score <= max_distance]
