"""The summary: the lead paragraph, cut at a sentence end.

Sentence splitting is hand-written because the installed NLP-free options split
at every full stop, which breaks at "Mr.", "No. 5", "J. Smith" and at the
Lithuanian abbreviations releases use ("proc.", "mln.", "d."). The rule: a
boundary is end punctuation, optional closing quotes, space, and an upper-case
letter, digit or opening quote, unless the word before the stop is a known
abbreviation or a single letter.
"""

from __future__ import annotations

import re

from mailer.collect.blocks import Block

SUMMARY_CHARS = 320
LEAD_MIN_CHARS = 60

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "no", "nos", "vs", "etc", "eg", "ie", "e.g", "i.e",
    "inc", "ltd", "co", "corp", "jr", "sr", "gen", "gov", "sen", "rep", "min", "p", "pp",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    "approx", "dept", "est", "fig", "vol", "art", "para", "ch", "u.s", "a.m", "p.m",
    # Lithuanian
    "g", "d", "m", "val", "proc", "mln", "mlrd", "tūkst", "kt", "pvz", "gim", "str", "nr",
    "doc", "šv", "pan", "t.y", "žr",
}  # fmt: skip
_BOUNDARY = re.compile(r"([.!?…]+)([\"”’»)]*)\s+(?=[\"“„«(]?[0-9A-ZÀ-ÖØ-ÞĀ-ŽА-Я])")
_PREVIOUS_WORD = re.compile(r"([\w.]+)$")
_ENDS_SENTENCE = re.compile(r"[.!?…][\"”’»)]*$")


def split_sentences(text: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if match.group(1) == ".":
            word = _PREVIOUS_WORD.search(text[start : match.start()])
            token = word.group(1).casefold().rstrip(".") if word else ""
            if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
                continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def cut_at_sentence(text: str, limit: int = SUMMARY_CHARS) -> str:
    """As many whole sentences as fit in ``limit``; a first sentence that alone is
    longer is cut at a word boundary and marked with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    kept: list[str] = []
    length = 0
    for sentence in split_sentences(text):
        if kept and length + 1 + len(sentence) > limit:
            break
        if not kept and len(sentence) > limit:
            cut = sentence[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:–—- ")
            return cut + "…"
        kept.append(sentence)
        length += len(sentence) + (1 if length else 0)
    return " ".join(kept)


def lead_summary(blocks: list[Block], limit: int = SUMMARY_CHARS) -> str:
    """The first real paragraph (not a heading or a list), else whatever text there is."""
    paragraphs = [b for b in blocks if b.kind in ("p", "quote") and not b.is_empty]
    for block in paragraphs:
        text = " ".join(block.kept_lines)
        if len(text) >= LEAD_MIN_CHARS and _ENDS_SENTENCE.search(text):
            return cut_at_sentence(text, limit)
    for block in paragraphs:
        text = " ".join(block.kept_lines)
        if len(text) >= LEAD_MIN_CHARS:
            return cut_at_sentence(text, limit)
    remaining = " ".join(" ".join(b.kept_lines) for b in blocks if not b.is_empty)
    return cut_at_sentence(remaining, limit)
