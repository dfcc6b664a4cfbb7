"""Allow-list HTML sanitising (nh3) for anything that came from outside.

What survives: structural and inline text markup, links (http, https, mailto,
tel) and images (http, https). Scripts, styles, forms, frames, embedded objects,
SVG/MathML, event-handler and style attributes, ``javascript:``/``data:`` URLs
and tracking pixels do not. Relative links are made absolute against the page
they came from (an email has no page to be relative to) or dropped.
"""

from __future__ import annotations

import html as html_lib
import re

import nh3
from lxml import etree
from lxml import html as lxml_html

ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "div", "dl",
    "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i",
    "img", "li", "ol", "p", "pre", "q", "s", "small", "span", "strong", "sub", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
# Removed together with everything inside them, not just unwrapped.
DROPPED_WITH_CONTENT = {
    "script", "style", "noscript", "template", "iframe", "frame", "frameset", "object",
    "embed", "applet", "form", "select", "textarea", "button", "svg", "math", "head",
    "title", "nav", "aside", "audio", "video", "canvas", "map", "dialog",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "ol": {"start"},
}
URL_SCHEMES = {"http", "https", "mailto", "tel"}
_PIXEL_NAME = re.compile(
    r"^(pixel|tracking|tracker|beacon|spacer|blank|1x1|open|transparent)[-_]?\d*(x\d+)?$"
)
_PIXEL_PATH = re.compile(r"/(pixel|track|tracking|beacon)s?/", re.IGNORECASE)


# Active or invisible content: its text must not reach readers as if it were prose.
_NEVER_SHOWN = {"script", "style", "noscript", "template"}
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HIDDEN_HINT = re.compile(r"hidden|display|<script|<style|<noscript|<template", re.IGNORECASE)
_HIDDEN_HINT_WORDS = ("hidden", "display", "<script", "<style", "<noscript", "<template")


def _may_hide(html: str) -> bool:
    """Whether ``html`` may hold hidden or active content (``_HIDDEN_HINT``). On ASCII
    text lower() and substring checks give the regex's verdict at a tenth of its cost
    (a case-insensitive alternation is tried at every position); other text keeps the
    regex, whose case folding also matches letters such as U+017F and U+212A."""
    if html.isascii():
        lowered = html.lower()
        return any(word in lowered for word in _HIDDEN_HINT_WORDS)
    return _HIDDEN_HINT.search(html) is not None


def drop_hidden(root: etree._Element) -> None:
    """Remove, text and all, what a browser would not show: scripts, styles,
    ``hidden`` and ``aria-hidden="true"`` elements, ``display:none`` and
    ``visibility:hidden`` styles. nh3 drops style attributes, so this runs first."""
    doomed = [
        element
        for element in root.iter()
        if isinstance(element.tag, str)
        and element is not root
        and (
            element.tag.lower() in _NEVER_SHOWN
            or element.get("hidden") is not None
            or (element.get("aria-hidden") or "").strip().lower() == "true"
            or _HIDDEN_STYLE.search(element.get("style") or "") is not None
        )
    ]
    for element in doomed:
        if element.getparent() is not None:
            element.drop_tree()


def _parsed(html: str) -> etree._Element | None:
    """A fragment as a tree under a <div>, or None when lxml cannot read it."""
    try:
        return lxml_html.fragment_fromstring(_CONTROL.sub("", html), create_parent="div")
    except (etree.ParserError, ValueError):
        return None


def _without_hidden(html: str) -> str:
    if not _may_hide(html):
        return html
    root = _parsed(html)
    if root is None:
        return html
    drop_hidden(root)
    return _inner_html(root)


def _inner_html(root: etree._Element) -> str:
    return "".join(
        [escape_text(root.text or "")]
        + [lxml_html.tostring(child, encoding="unicode") for child in root]
    )


def visible_text(html: str) -> str:
    """The text a reader would see of an HTML snippet (a feed title, a name)."""
    if "<" not in html:
        return html
    root = _parsed(html)
    if root is None:
        # Not markup after all ("<" and a control character): drop tag-like bits.
        return html_lib.unescape(nh3.clean(html, tags=set()))
    drop_hidden(root)
    return root.text_content()


def sanitize_html(html: str, base_url: str | None = None) -> str:
    """Sanitised HTML fragment: safe to show in a browser or an email as it is."""
    return sanitize_fragment(html, base_url)[0]


def sanitize_fragment(html: str, base_url: str | None = None) -> tuple[str, etree._Element | None]:
    """The sanitised fragment (see :func:`sanitize_html`) and, when checking its
    images meant parsing it and nothing was removed, that tree under a <div>: the
    same tree parsing the fragment would give, so a caller need not parse it again."""
    if not html or not html.strip():
        return "", None
    if _UNCHANGED_PARAGRAPHS.fullmatch(html):
        return html, None
    cleaned = nh3.clean(
        _without_hidden(html),
        tags=ALLOWED_TAGS,
        clean_content_tags=DROPPED_WITH_CONTENT,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        strip_comments=True,
        link_rel="noopener noreferrer nofollow",
        url_relative=("rewrite_with_base", base_url) if _is_http(base_url) else "deny",
    )
    return _drop_pixels_and_empty_images(cleaned)


# Paragraphs of text with no markup in them, which sanitising gives back as they are:
# "<p>", text without "<", ">", "&" (so no tag, comment or entity), carriage return,
# NUL, other control characters, no-break space (written back as "&nbsp;") or
# surrogate (which nh3 refuses), "</p>", then spaces, tabs or line feeds, from the
# first character (leading white space is not kept). Checked against nh3 in a test.
_UNCHANGED_PARAGRAPHS = re.compile(
    "(?:<p>[^<>&\r\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u00a0\ud800-\udfff]*</p>[ \t\n]*)+"
)


def _is_http(url: str | None) -> bool:
    return bool(url) and re.match(r"^https?://[^/\s]+", url or "") is not None


def _drop_pixels_and_empty_images(fragment: str) -> tuple[str, etree._Element | None]:
    if "<img" not in fragment:
        return fragment, None
    root = lxml_html.fragment_fromstring(fragment, create_parent="div")
    changed = False
    for image in root.iter("img"):
        src = image.get("src", "")
        if not src.startswith(("http://", "https://")) or is_tracking_pixel(
            src, image.get("width"), image.get("height")
        ):
            image.drop_tree()
            changed = True
    if not changed:
        return fragment, root
    # The tree is not handed on: what a caller parses is the serialised fragment.
    return _inner_html(root), None


def is_tracking_pixel(src: str, width: str | None = None, height: str | None = None) -> bool:
    """An image too small to see or named like a web beacon."""
    for size in (width, height):
        if size is not None:
            digits = re.match(r"\s*(\d+)", size)
            if digits and int(digits.group(1)) <= 2:
                return True
    path = src.split("#", 1)[0].split("?", 1)[0]
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0].lower()
    return _PIXEL_NAME.match(stem) is not None or _PIXEL_PATH.search(path) is not None


def escape_text(text: str) -> str:
    """Plain text as HTML text content."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
