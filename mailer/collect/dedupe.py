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
from dataclasses import dataclass

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
    return content_hash_of_normalised(normalised_text(text))


def content_hash_of_normalised(normalised: str) -> str:
    return hashlib.sha256(normalised.encode()).hexdigest()


def shingles(normalised: str) -> set[str]:
    words = normalised.split()
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words)} if words else set()
    # Each run of SHINGLE_WORDS consecutive words, joined in C (zip of shifted lists)
    # rather than sliced and joined in a Python loop.
    return set(map(" ".join, zip(*[words[i:] for i in range(SHINGLE_WORDS)], strict=False)))


def simhash(text: str) -> int:
    """Unsigned 64-bit SimHash over word shingles of the normalised text."""
    return simhash_of_normalised(normalised_text(text))


def utf8_shingles(normalised: str) -> set[bytes]:
    """``shingles(normalised)``, each in UTF-8: made from one encoding of the whole text
    rather than one per shingle. For a text as ``normalise`` writes it (runs of word
    characters between single spaces): its UTF-8 form splits at ASCII spaces where the
    text splits, and encoding is one-to-one, so the set is the same set encoded."""
    words = normalised.encode().split()
    if len(words) < SHINGLE_WORDS:
        return {b" ".join(words)} if words else set()
    return set(map(b" ".join, zip(*[words[i:] for i in range(SHINGLE_WORDS)], strict=False)))


def simhash_of_normalised(normalised: str) -> int:
    """``simhash_of_shingles(shingles(normalised))`` for a text as ``normalise``
    writes it, without making the shingles as strings (see ``utf8_shingles``)."""
    features = utf8_shingles(normalised)
    if not features:
        return 0
    return _majority_bits(_utf8_feature_hashes(features), len(features))


def simhash_of_shingles(features: set[str]) -> int:
    """SimHash of a text's shingles (``shingles``): for a caller that holds them
    already, as a Comparable does, so they are not made twice."""
    if not features:
        return 0
    # The feature hashes side by side, 8 bytes each, most significant byte first. Bit
    # ``bit`` of byte ``byte`` of every hash is tallied at once: that byte of all the
    # hashes read as one integer, shifted and masked to one bit a byte, then counted
    # with int.bit_count (C speed instead of a Python loop over features). A bit of
    # the result is set when more than half of the features have it set.
    return _majority_bits(_feature_hashes(features), len(features))


def _majority_bits(hashes: bytes, count: int) -> int:
    """The 64 bits that more than half of ``count`` 8-byte hashes have set."""
    half = count / 2
    ones = int.from_bytes(b"\x01" * count, "big")
    result = 0
    for byte in range(8):
        column = int.from_bytes(hashes[byte::8], "big")
        for bit in range(7, -1, -1):
            result = (result << 1) | (((column >> bit) & ones).bit_count() > half)
    return result


# An empty 8-byte BLAKE2b state: copying it and feeding a feature gives the digest
# ``blake2b(feature, digest_size=8)`` gives, without setting up the parameter block
# again for every feature (a third of the cost of a new hash object).
_BLAKE2B_8 = hashlib.blake2b(digest_size=8)


def _feature_hashes(features: Iterable[str]) -> bytes:
    """The 8-byte BLAKE2b digest of each feature's UTF-8 form, side by side."""
    empty = _BLAKE2B_8
    digests = []
    for feature in features:
        state = empty.copy()
        state.update(feature.encode())
        digests.append(state.digest())
    return b"".join(digests)


def _utf8_feature_hashes(features: Iterable[bytes]) -> bytes:
    """``_feature_hashes`` of features already in UTF-8."""
    empty = _BLAKE2B_8
    digests = []
    for feature in features:
        state = empty.copy()
        state.update(feature)
        digests.append(state.digest())
    return b"".join(digests)


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
    return _containment(shingles(a), shingles(b))


def _containment(first: set[str], second: set[str]) -> float:
    if not first or not second:
        return 0.0
    return len(first & second) / min(len(first), len(second))


def is_near_duplicate(text_a: str, text_b: str) -> bool:
    return Comparable.of(text_a).is_near_duplicate(Comparable.of(text_b))


@dataclass
class Comparable:
    """A text ready for near-duplicate checks: normalised and split once, shingled
    on first use, so a stored release compared with many candidates costs that once."""

    normalised: str
    words: int
    _shingles: set[str] | None = None

    @classmethod
    def of(cls, text: str) -> Comparable:
        return cls.of_normalised(normalised_text(text))

    @classmethod
    def of_normalised(cls, normalised: str) -> Comparable:
        return cls(normalised, len(normalised.split()))

    @property
    def shingles(self) -> set[str]:
        if self._shingles is None:
            self._shingles = shingles(self.normalised)
        return self._shingles

    def is_near_duplicate(self, other: Comparable) -> bool:
        """Same text, or (both at least MIN_WORDS long) shingle containment of at
        least CONTAINMENT."""
        if min(self.words, other.words) < MIN_WORDS:
            return self.normalised == other.normalised
        return _containment(self.shingles, other.shingles) >= CONTAINMENT


class SimhashIndex:
    """Fingerprints of stored releases, banded for quick candidate lookup."""

    def __init__(self, items: Iterable[tuple[int, int]] = ()) -> None:
        # Each band's buckets map key → unsigned fingerprint (not a set of keys): a
        # lookup merges the 8 buckets with dict.update and scores the merged items,
        # without looking every key's fingerprint up again.
        self._bands: list[dict[int, dict[int, int]]] = [defaultdict(dict) for _ in range(BANDS)]
        self._values: dict[int, int] = {}
        for key, value in items:
            self.add(key, value)

    @staticmethod
    def _band_values(value: int) -> bytes:
        # Band n is bits 8n..8n+7, i.e. byte n of the little-endian form.
        return to_unsigned(value).to_bytes(8, "little")

    def add(self, key: int, value: int) -> None:
        self.remove(key)
        unsigned = to_unsigned(value)
        self._values[key] = unsigned
        for band, part in zip(self._bands, unsigned.to_bytes(8, "little"), strict=True):
            band[part][key] = unsigned

    def remove(self, key: int) -> None:
        old = self._values.pop(key, None)
        if old is None:
            return
        for band, part in zip(self._bands, old.to_bytes(8, "little"), strict=True):
            band[part].pop(key, None)

    def value(self, key: int) -> int | None:
        """The unsigned fingerprint stored under ``key``."""
        return self._values.get(key)

    def candidates(self, value: int, max_distance: int = MAX_DISTANCE) -> list[int]:
        """Keys whose fingerprint is within ``max_distance`` bits, closest first."""
        return [key for _, key in self.scored(value, max_distance)]

    def scored(self, value: int, max_distance: int = MAX_DISTANCE) -> list[tuple[int, int]]:
        """(distance, key) of the keys ``candidates`` gives, in its order."""
        found: dict[int, int] = {}
        for band, part in zip(self._bands, self._band_values(value), strict=True):
            bucket = band.get(part)
            if bucket:
                found.update(bucket)
        unsigned = to_unsigned(value)
        # Both sides are unsigned 64-bit: the XOR's popcount is their distance.
        scored = [
            (score, key)
            for key, other in found.items()
            if (score := (unsigned ^ other).bit_count()) <= max_distance
        ]
        scored.sort()
        return scored
