"""Keep page furniture out of a release: cookie banners, rating widgets, share bars,
image file names, newsletter boxes, navigation, labels; and lift out what the
furniture tells us (photo credit, date lines, the publisher line under the title).

Hand-written: readability-style extractors (trafilatura) decide which part of a
page is the article, but what they keep still carries these lines, and plain text
or e-mail releases never pass through them. The rules work line by line on the
text of every block, with a little context (a "Date" label and its value, a
"Rating" label and its number, a boxed newsletter footer).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from functools import lru_cache

from mailer.collect.blocks import Block, clean_line
from mailer.collect.dates import Published, is_date_label, parse_published
from mailer.collect.sanitize import visible_text

_BOX_CHARS = "|│┃║┆┇┊┋╎╏"
_BORDER = re.compile(r"^[\s\-=_*~#+.•·|│┃║═─━┌┐└┘╔╗╚╝╭╮╯╰┼├┤┬┴┏┓┗┛┣┫┳┻╋]+$")

# Whole lines, compared after normalising (lower case, no accents, no punctuation).
_EXACT = {
    # consent and cookie banners (English and Lithuanian)
    "bdar", "gdpr", "close", "uzdaryti", "accept", "accept all", "accept all cookies",
    "accept cookies", "allow all", "allow cookies", "allow all cookies", "reject", "reject all",
    "decline", "i agree", "agree", "ok", "got it", "sutinku", "nesutinku", "priimti",
    "priimti visus", "atmesti", "cookie settings", "cookies settings", "cookie preferences",
    "manage cookies", "manage preferences", "cookie policy", "privacy policy", "cookies",
    "slapukai", "slapuku nustatymai", "slapuku politika", "necessary cookies",
    "statistics cookies", "marketing cookies", "preferences", "more information",
    "learn more", "customize", "save preferences", "save settings",
    # rating widgets
    "rating", "rate this", "rate this article", "rate this page", "rate", "ivertinimas",
    "ivertinkite", "ivertinti", "votes", "average rating",
    # share bars and print
    "share", "share this", "share this article", "share this page", "share on facebook",
    "share on twitter", "share on x", "share on linkedin", "tweet", "print", "print this page",
    "print version", "printer friendly version", "email", "e mail", "facebook", "twitter",
    "linkedin", "whatsapp", "telegram", "copy link", "link copied", "dalintis",
    "dalinkites", "pasidalinti", "spausdinti", "siusti",
    # navigation
    "back", "back to top", "go back", "to top", "top", "read more", "skaityti daugiau",
    "skip to content", "skip to main content", "home", "pradzia", "news", "naujienos",
    "press releases", "pranesimai spaudai", "all news", "visos naujienos", "previous", "next",
    "menu", "meniu", "search", "paieska", "related articles", "related news",
    "susijusios naujienos", "atgal", "grizti",
    # newsletter prompts standing alone
    "subscribe", "sign up", "newsletter", "naujienlaiskis", "prenumeruoti",
    "enter your email", "your email", "email address", "your email address",
    "el pastas", "el pasto adresas",
    # labels
    "press release", "news release", "media release", "for immediate release",
    "pranesimas spaudai", "pranesimas ziniasklaidai", "photo gallery", "gallery", "video",
    "nuotraukos", "galerija", "was this page helpful", "was this information useful",
    "ar si informacija buvo naudinga", "yes", "no", "taip", "ne",
}  # fmt: skip
_PATTERNS = [
    # share bars: several share targets on one line
    re.compile(
        r"^((share( on)?|tweet|print|email|e mail|facebook|twitter|x|linkedin|whatsapp|"
        r"telegram|copy link|pinterest|reddit|dalintis|spausdinti)\s*){2,}$"
    ),
    # rating widgets with their value
    re.compile(r"^(rating|rate this( article| page)?|ivertinimas|average rating)\s*[\d\s/.,]*$"),
    re.compile(r"^\d+\s*(votes?|balsai|balsu|ratings?|ivertinimai|ivertinimu)$"),
    # navigation with arrows
    re.compile(r"^(back to|return to|grizti i)\b.{0,40}$"),
    # tags and categories
    re.compile(r"^(tags|zymes|keywords|categories|kategorijos|topics)\s*:?\s.{0,200}$"),
    re.compile(r"^(download|atsisiusti)( \w+){0,6}( pdf| doc| docx| \d+ ?(kb|mb))?$"),
    re.compile(r"^(last (modified|updated)|page last (modified|updated))\s*:?.{0,40}$"),
]
# One alternation each, tried in a single match call: the same verdict as trying
# the patterns one by one (none has groups that another refers to).
_ANY_PATTERN = re.compile("|".join(f"(?:{p.pattern})" for p in _PATTERNS))
_RAW_PATTERNS = [
    re.compile(r"^[\d\s.,/%()★☆*+\-]{1,8}$"),  # stray counters: "0", "4.5", "(12)"
    re.compile(
        r"^[\w\-.()%, ]{1,120}\.(jpe?g|png|gif|webp|svg|bmp|tiff?|heic|avif)$", re.IGNORECASE
    ),
    re.compile(r"^[«‹←<]+\s*\S.{0,40}$"),
    re.compile(r"^.{0,40}\s[»›→>]+$"),
]
_ANY_RAW_PATTERN = re.compile(
    "|".join(
        f"(?i:{p.pattern})" if p.flags & re.IGNORECASE else f"(?:{p.pattern})"
        for p in _RAW_PATTERNS
    )
)
# An aggregator's banner and "About us" footer around a republished release.
_REPUBLISHER = re.compile(
    r"\b(republished|re published|reproduced|redistributed|syndicated)\b|^about [\w .&-]{2,50}:"
)
_COOKIE_WORDS = re.compile(r"\b(cookies?|slapuk\w*)\b")
_COOKIE_CONTEXT = re.compile(
    r"\b(we use|this (web)?site uses|uses cookies|accept|consent|privacy|browsing|"
    r"naudoja|naudojame|sutinkate|sutikim\w*|nar[sš]ym\w*|experience|analytics|settings)\b"
)
_NEWSLETTER = re.compile(
    r"\b((join|subscribe to|sign up (for|to)|get) (our|the)( \w+){0,2} (mailing list|newsletter|"
    r"updates|press releases)|mailing list|newsletter|in your inbox|straight to your inbox|"
    r"prenumeruok\w*|naujienlaiski\w*)\b"
)
_PHOTO_CREDIT = [
    re.compile(
        r"^[(\[]?(?:photo|photos|photograph|image|picture|foto|pictured|photo credit|"
        r"image credit|credit|credits|nuotrauka|nuotraukos autorius|nuotr\.)\s*"
        r"(?:by\b|:|–|—|-|©)\s*(?P<credit>[^\s].{1,150}?)[)\]]?$",
        re.IGNORECASE,
    ),
    re.compile(r"^(?:nuotr\.|foto)\s+(?P<credit>[^\s].{1,150})$", re.IGNORECASE),
    re.compile(r"^(?P<credit>[^\s].{1,120}?)\s*(?:nuotr\.|nuotrauka)$", re.IGNORECASE),
    re.compile(r"^[(\[]?©\s*(?P<credit>[^\s].{1,120}?)[)\]]?$"),
]
_ATTRIBUTION = re.compile(
    r"^(?:source|originally published (?:by|on|at)|republished from|distributed on behalf of|"
    r"šaltinis|saltinis)\s*:?\s+(?P<publisher>[^\s].{1,150})$",
    re.IGNORECASE,
)
_UPDATED_LABEL = re.compile(r"^\s*(last\s+)?updated|^\s*atnaujinta", re.IGNORECASE)
_ORGANISATION = re.compile(
    r"\b(ministry|ministries|ministerija\w*|government|vyriausyb\w*|office|department|"
    r"departamentas|agency|agentūra|agentura|embassy|ambasada|council|taryba|commission|"
    r"komisija|parliament|seimas|presidency|prezident\w*|chancellery|kanceliarija|"
    r"inspectorate|inspekcija|authority|service|tarnyba|bank|bankas|municipality|"
    r"savivaldyb\w*|institute|institutas|university|universitetas|secretariat|press office|"
    r"spaudos|foundation|fondas|association|asociacija|police|policija|directorate)\b",
    re.IGNORECASE,
)
# How many lines from the top are a release's "header" (date, publisher, title).
HEADER_LINES = 12
_SENTENCE_END = re.compile(r"[.!?:;…]$")


_COMBINING_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff]+")
_NON_WORD = re.compile(r"[^\w]+")


# ASCII bytes → themselves in lower case when a word character (\w: letters, digits,
# "_"), else a space.
_ASCII_WORD_BYTES = bytes(
    (byte | 0x20 if 65 <= byte <= 90 else byte) if chr(byte).isalnum() or byte == 95 else 32
    for byte in range(256)
)


def normalise(text: str) -> str:
    """Compare-friendly form: no accents, lower case, words separated by single spaces."""
    if text.isascii():
        # What the substitution below gives for ASCII (casefold is lower(), \w is
        # [A-Za-z0-9_]), a few times cheaper: one table lookup a byte, then the runs of
        # spaces collapsed by split and join, which also drops them at either end.
        return " ".join(text.encode().translate(_ASCII_WORD_BYTES).decode().split())
    text = _COMBINING_MARKS.sub("", unicodedata.normalize("NFKD", text))
    return _NON_WORD.sub(" ", text.casefold()).strip()


def joined_normalised(*normalised: str) -> str:
    """``normalise("\\n".join(texts))`` from each text's own normalised form: the line
    break and any non-word characters around it become the one space between them, and
    a text with no words leaves none. Lets a text normalised once (for dedupe) be
    matched without normalising it again."""
    return " ".join(part for part in normalised if part)


# A line is normalised by several checks in turn (newsletter prompt, boilerplate,
# title, publisher): once per distinct line with this cache. Lines only; whole
# texts (dedupe) would fill it with large strings used once.
_line_key = lru_cache(maxsize=2048)(normalise)


def normalised_body(blocks: Sequence[Block]) -> str:
    """``normalise`` of the text the blocks make ("\\n\\n" between blocks, "\\n"
    between lines, "- " or "1. " before list items: see Block.text), put together from
    the normalised lines clean_blocks has just looked up, not by normalising the whole
    text again."""
    parts: list[str] = []
    for block in blocks:
        numbered = block.kind == "ol"
        for number, line in enumerate(block.kept_lines, start=1):
            if numbered:
                parts.append(str(number))
            parts.append(_line_key(line))
    return joined_normalised(*parts)


@dataclass
class CleanResult:
    blocks: list[Block]
    title: str | None = None
    published: Published | None = None
    updated: Published | None = None
    photo_credit: str | None = None
    publisher: str | None = None
    removed_lines: list[str] = field(default_factory=list)


@dataclass
class _Line:
    block: Block
    index: int

    @property
    def text(self) -> str:
        return self.block.lines[self.index]

    @property
    def removed(self) -> bool:
        return self.index in self.block.removed

    def remove(self, result: CleanResult) -> None:
        if not self.removed:
            self.block.removed.add(self.index)
            result.removed_lines.append(self.text)


def strip_box(text: str) -> str:
    inner = text.strip()
    if inner and (inner[0] in _BOX_CHARS or inner[-1] in _BOX_CHARS):
        return inner.strip(_BOX_CHARS).strip()
    # Neither end is a box character: stripping them would change nothing.
    return inner


def is_boilerplate(line: str) -> bool:
    """A whole line that is page furniture, never release content."""
    inner = strip_box(line)
    if not inner or _BORDER.match(line.strip()):
        return True
    key = _line_key(inner)
    if not key:
        return True
    if key in _EXACT or _ANY_PATTERN.match(key):
        return True
    if _may_be_raw_furniture(inner) and _ANY_RAW_PATTERN.match(inner):
        return True
    if len(inner) < 400 and _has_cookie_word(key) and _COOKIE_CONTEXT.search(key):
        return True
    if len(inner) < 250 and _mentions_republishing(inner.casefold()):
        return True
    return _is_newsletter_key(key)


# The regular expressions below are tried only where a plain substring check (much
# cheaper than a search at every position) finds what any match must contain, so
# their verdict is unchanged.


def _may_be_raw_furniture(inner: str) -> bool:
    """Whether ``inner`` (stripped, not empty) can match ``_ANY_RAW_PATTERN``: a counter
    (≤ 8 characters) or an image file name (≤ 125) is short, and an arrow line starts or
    ends with its arrows."""
    return len(inner) <= 125 or inner[0] in "«‹←<" or inner[-1] in "»›→>"


def _has_cookie_word(key: str) -> bool:
    """``_COOKIE_WORDS.search(key)``."""
    return ("cookie" in key or "slapuk" in key) and _COOKIE_WORDS.search(key) is not None


_REPUBLISHER_WORDS = ("publish", "reproduced", "redistributed", "syndicated")


def _mentions_republishing(folded: str) -> bool:
    """``_REPUBLISHER.search(folded)``."""
    return (
        folded.startswith("about ") or any(word in folded for word in _REPUBLISHER_WORDS)
    ) and _REPUBLISHER.search(folded) is not None


def is_newsletter_prompt(line: str) -> bool:
    return _is_newsletter_key(_line_key(line))


def _is_newsletter_key(key: str) -> bool:
    # Box characters are not word characters: normalise() drops them like strip_box.
    return (
        len(key) < 200
        and any(word in key for word in _NEWSLETTER_WORDS)
        and _NEWSLETTER.search(key) is not None
    )


# One of these is in every match of _NEWSLETTER.
_NEWSLETTER_WORDS = (
    "mailing list", "newsletter", "updates", "press releases", "inbox", "prenumeruok",
    "naujienlaiski",
)  # fmt: skip


def photo_credit_of(line: str) -> str | None:
    """The credit line as the publisher wrote it ("Photo by Žygimantas Gedvila / ELTA."),
    when the whole line is a photo credit."""
    inner = strip_box(line)
    if len(inner) > 160:
        return None
    for pattern in _PHOTO_CREDIT:
        if match := pattern.match(inner):
            credit = match.group("credit").strip(" .;,")
            if credit and not _SENTENCE_END.search(credit.rstrip(".")):
                bracketed = inner[:1] in "([" and inner[-1:] in ")]"
                return inner[1:-1].strip() if bracketed else inner
    return None


_HOST = re.compile(
    r"^(?:(?:[a-z0-9-]+\.)+[a-z]{2,}|\d{1,3}(?:\.\d{1,3}){3}|localhost|\[[0-9a-f:]+\])"
    r"(?::\d+)?/?$",
    re.IGNORECASE,
)


def is_bare_host(name: str) -> bool:
    """A host name or address ("127.0.0.1:8790", "www.urm.lt"), not an organisation."""
    value = name.strip().removeprefix("https://").removeprefix("http://")
    return _HOST.match(value) is not None


_NAME_JOINERS = {"of", "the", "and", "for", "on", "in", "at", "to", "&", "ir", "del", "de", "und"}
# Words of a sentence or a list item ("Applications at any embassy"), never of a name.
_NOT_IN_NAMES = {
    "a", "an", "any", "all", "every", "each", "some", "your", "our", "their", "this", "these",
    "those", "more", "now", "will", "is", "are", "was", "were", "has", "have", "can", "may",
    "must", "not", "no", "with", "from", "by",
}  # fmt: skip


def looks_like_publisher(line: str) -> bool:
    """An organisation's name on a line of its own: "Ministry of Foreign Affairs of the
    Republic of Lithuania", "Lietuvos bankas". A headline that starts with a ministry
    ("Ministry of Health opens …") has lower-case words that are not name joiners."""
    if len(line) > 120 or _SENTENCE_END.search(line):
        return False
    words = [w.strip(",.()\"'“”„") for w in line.split()]
    # "Republic of Lithuania - Ministry of Foreign Affairs": dashes join name parts.
    words = [w for w in words if w and w not in ("-", "–", "—", "|", "·")]
    if not words or len(words) > 14:
        return False
    if _ORGANISATION.search(line) is None:
        return False
    if any(w.casefold() in _NOT_IN_NAMES for w in words) or not words[0][0].isupper():
        return False
    ends_with_organisation = _ORGANISATION.fullmatch(words[-1]) is not None
    all_name_words = all(
        w[0].isupper() or w.casefold() in _NAME_JOINERS or _ORGANISATION.fullmatch(w) for w in words
    )
    return ends_with_organisation or all_name_words


def clean_title(title: str | None, site_names: list[str | None] = ()) -> str | None:
    """Strip a trailing "| Site name" and boilerplate; None when nothing real is left."""
    if not title:
        return None

    if "<" in title:
        # Titles are plain text; markup in them (feeds do this) is dropped, and what
        # a browser would not show (scripts, hidden spans) goes with its words.
        title = visible_text(title)
    title = clean_line(title.replace("\n", " "))
    for name in site_names:
        if name:
            folded_name = name.casefold()
            if not title.casefold().endswith(folded_name):
                # Every suffix below ends with the name (casefold works a character
                # at a time), and a title only loses one that it ends with.
                continue
            for separator in (" | ", " - ", " – ", " — ", " :: ", " · "):
                suffix = f"{separator}{name}"
                if title.casefold().endswith(suffix.casefold()) and len(title) > len(suffix):
                    title = title[: -len(suffix)].rstrip()
    if " | " in title:
        head, _, tail = title.rpartition(" | ")
        if _ORGANISATION.search(tail) and len(head) > 15:
            title = head
    title = re.sub(
        r"^(press release|news release|pranešimas spaudai)\s*[:\-–—|]\s*", "", title, flags=re.I
    )
    if not title or is_boilerplate(title):
        return None
    return title


def clean_blocks(
    blocks: list[Block],
    *,
    title: str | None,
    default_tz: tzinfo = UTC,
    take_title: bool = True,
    site_names: Sequence[str | None] = (),
) -> CleanResult:
    """Remove furniture lines in place; find date, credit, publisher and title."""
    result = CleanResult(blocks=blocks, title=title)
    lines = [_Line(block, i) for block in blocks for i in range(len(block.lines))]
    _remove_boxes(lines, result)

    position = 0  # index among lines that were not removed before this one
    for number, line in enumerate(lines):
        if line.removed:
            continue
        text = line.text
        in_header = position < HEADER_LINES
        position += 1
        if is_newsletter_prompt(text):
            line.remove(result)
            _remove_form_lines(lines[number + 1 : number + 6], result)
            continue
        if is_boilerplate(text):
            line.remove(result)
            continue
        credit = photo_credit_of(text)
        if credit:
            result.photo_credit = result.photo_credit or credit
            line.remove(result)
            continue
        if attribution := _ATTRIBUTION.match(strip_box(text)):
            result.publisher = result.publisher or attribution.group("publisher").strip(" .")
            line.remove(result)
            continue
        if in_header and is_date_label(text):
            following = _next_kept(lines, number)
            if following is not None:
                value = parse_published(following.text, default_tz=default_tz)
                if value is not None:
                    _record_date(result, value, text)
                    line.remove(result)
                    following.remove(result)
                    continue
        value = parse_published(text, default_tz=default_tz)
        if value is not None and (in_header or _UPDATED_LABEL.match(text) or len(text) <= 40):
            _record_date(result, value, text)
            line.remove(result)
            continue

    if take_title and not result.title:
        # A plain-text release may open with its publisher's line above the title.
        _find_publisher(lines, result, site_names, first_only=True)
    if take_title:
        _settle_title(lines, result)
    _find_publisher(lines, result, site_names)
    result.blocks = [block for block in blocks if not block.is_empty]
    return result


def _record_date(result: CleanResult, value: Published, label: str) -> None:
    if _UPDATED_LABEL.match(label):
        result.updated = result.updated or value
    else:
        result.published = result.published or value


def _next_kept(lines: list[_Line], number: int) -> _Line | None:
    for line in lines[number + 1 :]:
        if not line.removed:
            return line
    return None


def _remove_boxes(lines: list[_Line], result: CleanResult) -> None:
    """A run of lines drawn as a box (| … |, ║ … ║ or ┌──┐ borders) that holds a
    newsletter or cookie prompt goes as a whole, sign-up button included."""
    run: list[_Line] = []
    for line in [*lines, None]:
        text = line.text.strip() if line is not None else ""
        boxed = bool(text) and (text[0] in _BOX_CHARS or bool(_BORDER.match(text)))
        if line is not None and boxed:
            run.append(line)
            continue
        if len(run) >= 2 and any(
            is_newsletter_prompt(member.text) or _has_cookie_word(_line_key(member.text))
            for member in run
        ):
            for member in run:
                member.remove(result)
        run = []


def _remove_form_lines(following: list[_Line], result: CleanResult) -> None:
    """The short lines under a newsletter prompt: "Email address", "Subscribe", a
    line of small print about the list."""
    for line in following:
        if line.removed:
            continue
        text = strip_box(line.text)
        form_like = (
            is_boilerplate(text)
            or "@" in text
            or (len(text) <= 80 and not _SENTENCE_END.search(text))
            or re.search(r"\b(unsubscribe|spam|privacy|inbox|e-?mail)\b", text, re.I)
        )
        if not form_like:
            return
        line.remove(result)


def _settle_title(lines: list[_Line], result: CleanResult) -> None:
    kept = [line for line in lines if not line.removed][:6]
    if result.title:
        wanted = _line_key(result.title)
        for line in kept:
            key = _line_key(line.text)
            if key == wanted or (key and wanted.startswith(key) and len(key) > 0.6 * len(wanted)):
                line.remove(result)
                return
        return
    # Only the opening line can be the title, and only if it reads like one: a
    # heading, or a short line that is not a sentence. Otherwise the text keeps its
    # first paragraph and the caller makes a title of its opening words.
    if not kept:
        return
    first = kept[0]
    text = strip_box(first.text).lstrip("#").strip()
    is_heading = first.block.kind == "h"
    if 3 <= len(text) <= 250 and (is_heading or not re.search(r"[.!?…]$", text)):
        result.title = text
        first.remove(result)


def _reads_like_title(text: str) -> bool:
    line = strip_box(text)
    return 3 <= len(line) <= 250 and not re.search(r"[.!?…]$", line)


def _find_publisher(
    lines: list[_Line],
    result: CleanResult,
    site_names: Sequence[str | None],
    *,
    first_only: bool = False,
) -> None:
    """A publisher line above the text (the site's or feed's name, or an
    organisation's name on a line of its own) is the publisher, not the body.
    ``first_only``: only the opening line, and only when a line follows it."""
    if result.publisher and first_only:
        return
    known = {_line_key(name) for name in site_names if name}
    kept = [line for line in lines if not line.removed]
    if first_only and (len(kept) < 2 or not _reads_like_title(kept[1].text)):
        # "Vilnius City Municipality Opens New School" above the first paragraph is
        # the title; a publisher line stands above a title.
        return
    for line in kept[: 1 if first_only else 3]:
        text = strip_box(line.text)
        if line.block.kind != "p":
            continue
        if _line_key(text) in known or looks_like_publisher(text):
            result.publisher = result.publisher or text
            line.remove(result)
            return
