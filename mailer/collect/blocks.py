"""A release body as a list of blocks (paragraphs, headings, lists, quotes, tables).

Both HTML and plain text become blocks of text lines, so one boilerplate filter
works on either; a block that the filter leaves untouched keeps its sanitised
HTML, and one it trimmed is rebuilt from the lines that are left.
"""

from __future__ import annotations

import html as html_lib
import re
import unicodedata
from dataclasses import dataclass, field

from lxml import etree
from lxml import html as lxml_html

from mailer.collect.sanitize import escape_text

HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
# Elements whose children are laid out as separate blocks.
CONTAINERS = {
    "div", "article", "section", "main", "header", "footer", "body", "html", "center",
    "details",
}  # fmt: skip
# Parts of lists and tables found outside them (feeds do send a bare <dd> or <li>):
# a browser shows each as a line of text, and so does a release.
STRAY_ITEMS = {"li", "dd", "dt", "td", "th", "caption", "figcaption"}
STRAY_GROUPS = {"tr", "tbody", "thead", "tfoot"}
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")


def clean_line(text: str) -> str:
    """NFC, no invisible characters, single spaces, trimmed."""
    if not text.isascii():
        # Invisible characters are all outside ASCII, and ASCII is already NFC.
        text = unicodedata.normalize("NFC", _INVISIBLE.sub("", text))
    elif "  " not in text and not _ASCII_SPACING.intersection(text):
        # Nothing for _SPACES to change (its only ASCII members are these and runs
        # of spaces): skip the substitution, which copies the line.
        return text.strip()
    return _SPACES.sub(" ", text).strip()


_ASCII_SPACING = frozenset("\t\r\f\v")


@dataclass
class Image:
    src: str
    alt: str | None = None
    caption_lines: list[str] = field(default_factory=list)


@dataclass
class Block:
    # p, h (heading), ul, ol, quote, pre, table
    kind: str
    lines: list[str]
    # Sanitised HTML of the element; used as it is while no line was removed.
    html: str | None = None
    level: int = 2
    removed: set[int] = field(default_factory=set)

    @property
    def kept_lines(self) -> list[str]:
        if not self.removed:
            return list(self.lines)
        return [line for index, line in enumerate(self.lines) if index not in self.removed]

    @property
    def is_empty(self) -> bool:
        return not any(map(str.strip, self.kept_lines))

    def text(self) -> str:
        lines = self.kept_lines
        if self.kind in ("ul", "ol"):
            return "\n".join(
                f"{index}. {line}" if self.kind == "ol" else f"- {line}"
                for index, line in enumerate(lines, start=1)
            )
        return "\n".join(lines)

    def to_html(self) -> str:
        if self.html is not None and not self.removed:
            return self.html
        lines = [escape_text(line) for line in self.kept_lines]
        if self.kind == "h":
            return f"<h{self.level}>{' '.join(lines)}</h{self.level}>"
        if self.kind in ("ul", "ol"):
            items = "".join(f"<li>{line}</li>" for line in lines)
            return f"<{self.kind}>{items}</{self.kind}>"
        if self.kind == "quote":
            return "<blockquote>" + "".join(f"<p>{line}</p>" for line in lines) + "</blockquote>"
        if self.kind == "pre":
            return "<pre>" + "\n".join(lines) + "</pre>"
        return "<p>" + "<br>".join(lines) + "</p>"


@dataclass
class Body:
    blocks: list[Block]
    images: list[Image] = field(default_factory=list)


# --- plain text -----------------------------------------------------------------------


def blocks_from_text(text: str) -> Body:
    """Paragraphs are separated by blank lines; text with no blank lines at all (as
    scraped text often is) has one paragraph per line. Hard-wrapped paragraphs are
    joined back into one line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    raw_lines = [clean_line(line) for line in text.split("\n")]
    if not any(not line for line in _trim(raw_lines)):
        return Body([Block("p", [line]) for line in raw_lines if line])
    blocks: list[Block] = []
    paragraph: list[str] = []
    for line in [*raw_lines, ""]:
        if line:
            paragraph.append(line)
            continue
        if paragraph:
            blocks.append(Block("p", _unwrap(paragraph)))
            paragraph = []
    return Body(blocks)


def _trim(lines: list[str]) -> list[str]:
    start = next((i for i, line in enumerate(lines) if line), len(lines))
    end = len(lines) - next((i for i, line in enumerate(reversed(lines)) if line), 0)
    return lines[start:end]


_BULLET = re.compile(r"^([-*•–]|\d+[.)])\s+")
_BOX_EDGE = re.compile(r"^[|│┃║]")


def _unwrap(lines: list[str]) -> list[str]:
    """Join lines of a paragraph that was wrapped at a fixed width (e-mail style)."""
    if len(lines) < 2 or any(_BULLET.match(line) or _BOX_EDGE.match(line) for line in lines):
        return lines
    body = lines[:-1]
    if all(45 <= len(line) <= 100 for line in body):
        return [" ".join(lines)]
    return lines


# --- HTML -----------------------------------------------------------------------------


def blocks_from_html(fragment: str, root: etree._Element | None = None) -> Body:
    """Blocks from a sanitised HTML fragment. Images are taken out of the flow and
    returned separately: the lead image is stored on its own, not inline.

    ``root``: the fragment already parsed under a <div> (by the sanitiser); it is
    consumed."""
    body = Body([])
    if not fragment.strip():
        return body
    if root is None:
        plain = _plain_paragraphs(fragment)
        if plain is not None:
            return plain
        try:
            root = lxml_html.fragment_fromstring(fragment, create_parent="div")
        except (etree.ParserError, ValueError):
            return blocks_from_text(lxml_html.fromstring(fragment).text_content())
    _walk(root, body)
    return body


# A fragment that is only paragraphs of text, as the sanitiser writes them: "<p>",
# text in which "<" and ">" never occur and "&" only starts one of the four entities
# the sanitiser writes in text (a quote stays a character), "</p>", with white space
# between paragraphs, and no carriage return or NUL (which the HTML parser would turn
# into a line feed and U+FFFD). lxml writes such a paragraph back as it is, but for "&nbsp;".
_PLAIN_PARAGRAPHS = re.compile(r"(?:\s*<p>[^<>&\r\0]*(?:&(?:amp|lt|gt|nbsp);[^<>&\r\0]*)*</p>)+\s*")
_PLAIN_PARAGRAPH = re.compile(r"<p>([^<]*)</p>")
_ENTITY = re.compile(r"&(?:amp|lt|gt|nbsp);")
_ENTITY_TEXT = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&nbsp;": "\u00a0"}


def _plain_paragraphs(fragment: str) -> Body | None:
    """The blocks of a fragment of plain paragraphs (``_PLAIN_PARAGRAPHS``) without
    parsing it, else None. They are the blocks parsing and walking it gives: one "p"
    block a paragraph with any text, its lines the text's lines (entities decoded),
    and its HTML what lxml writes for it: the paragraph as it is but for "&nbsp;",
    which lxml writes as the character."""
    if not _PLAIN_PARAGRAPHS.fullmatch(fragment):
        return None
    body = Body([])
    for inner in _PLAIN_PARAGRAPH.findall(fragment):
        text = _ENTITY.sub(_entity_text, inner) if "&" in inner else inner
        lines = [line for line in (clean_line(part) for part in text.split("\n")) if line]
        if lines:
            html = "<p>" + inner.replace("&nbsp;", "\u00a0") + "</p>"
            body.blocks.append(Block("p", lines, html))
    return body


def _entity_text(match: re.Match[str]) -> str:
    return _ENTITY_TEXT[match.group()]


class _Inline:
    """Loose inline content between blocks, gathered into one paragraph."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, html: str) -> None:
        self.parts.append(html)

    def flush(self, body: Body) -> None:
        html = "".join(self.parts).strip()
        self.parts = []
        if not html:
            return
        # The <p> is made around the parsed pieces, not parsed with them: a piece
        # that may not sit in a paragraph would otherwise split it in two.
        try:
            wrapper = lxml_html.fragment_fromstring(html, create_parent="p")
        except (etree.ParserError, ValueError):
            lines = [clean_line(html_lib.unescape(re.sub(r"<[^>]*>", " ", html)))]
            body.blocks.append(Block("p", [line for line in lines if line]))
            return
        lines = _element_lines(wrapper)
        if lines:
            body.blocks.append(Block("p", lines, lxml_html.tostring(wrapper, encoding="unicode")))


def _walk(element: etree._Element, body: Body) -> None:
    inline = _Inline()
    if element.text and element.text.strip():
        inline.add(escape_text(element.text))
    for child in element:
        tag = child.tag if isinstance(child.tag, str) else ""
        tail = child.tail
        child.tail = None
        if tag == "img":
            _take_image(child, body)
        elif tag in CONTAINERS or tag in STRAY_GROUPS:
            inline.flush(body)
            _walk(child, body)
        elif tag in STRAY_ITEMS:
            inline.flush(body)
            child.tag = "p"
            child.attrib.clear()
            _take_block(child, "p", body)
        elif tag == "figure":
            inline.flush(body)
            _take_figure(child, body)
        elif tag in HEADINGS or tag in ("p", "pre", "blockquote", "ul", "ol", "dl", "table"):
            inline.flush(body)
            _take_block(child, tag, body)
        elif tag == "hr":
            inline.flush(body)
        elif tag == "br":
            inline.add("<br>")
        elif tag:
            for image in list(child.iter("img")):
                _take_image(image, body)
            inline.add(lxml_html.tostring(child, encoding="unicode"))
        if tail and tail.strip():
            inline.add(escape_text(tail))
        elif tail:
            inline.add(" ")
    inline.flush(body)


def _take_image(image: etree._Element, body: Body) -> None:
    src = image.get("src")
    if src:
        body.images.append(Image(src, clean_line(image.get("alt") or "") or None))
    if image.getparent() is not None:
        image.drop_tree()  # keeps the text that followed the image


def _take_figure(figure: etree._Element, body: Body) -> None:
    caption_lines: list[str] = []
    for caption in figure.iter("figcaption"):
        caption_lines.extend(_element_lines(caption))
    sources = [img for img in figure.iter("img") if img.get("src")]
    if sources:
        first = sources[0]
        body.images.append(
            Image(first.get("src"), clean_line(first.get("alt") or "") or None, caption_lines)
        )
    elif caption_lines:
        body.blocks.append(Block("p", caption_lines))


def _take_block(element: etree._Element, tag: str, body: Body) -> None:
    for image in list(element.iter("img")):
        _take_image(image, body)
    html = lxml_html.tostring(element, encoding="unicode").strip()
    if tag in HEADINGS:
        lines = [" ".join(_element_lines(element))]
        level = max(2, min(int(tag[1]), 6))
        if lines[0]:
            heading_html = re.sub(r"^<h\d", f"<h{level}", re.sub(r"</h\d>$", f"</h{level}>", html))
            body.blocks.append(Block("h", lines, heading_html, level=level))
        return
    if tag in ("ul", "ol"):
        items = [" ".join(_element_lines(li)) for li in element if li.tag == "li"]
        items = [item for item in items if item]
        if items:
            body.blocks.append(Block(tag, items, html))
        return
    if tag == "table":
        rows = []
        for row in element.iter("tr"):
            cells = [" ".join(_element_lines(cell)) for cell in row if cell.tag in ("td", "th")]
            if any(cells):
                rows.append(" | ".join(cells))
        if rows:
            body.blocks.append(Block("table", rows, html))
        return
    if tag == "pre":
        text = element.text_content()
        lines = [line.rstrip() for line in text.strip("\n").split("\n")]
        if any(lines):
            body.blocks.append(Block("pre", lines, html))
        return
    if tag == "blockquote":
        lines = []
        inner = Body([])
        _walk(element, inner)
        for block in inner.blocks:
            lines.extend(block.lines)
        body.images.extend(inner.images)
        if lines:
            body.blocks.append(Block("quote", lines, html))
        return
    if tag == "dl":
        lines = [" ".join(_element_lines(item)) for item in element if item.tag in ("dt", "dd")]
        lines = [line for line in lines if line]
        if lines:
            body.blocks.append(Block("p", lines, html))
        return
    # A paragraph that itself holds block elements (invalid but common) is walked.
    nested_blocks = HEADINGS | {"p", "ul", "ol", "table"}
    if any(isinstance(c.tag, str) and c.tag in nested_blocks for c in element):
        _walk(element, body)
        return
    lines = _element_lines(element)
    if lines:
        body.blocks.append(Block("p", lines, html))


def _element_lines(element: etree._Element) -> list[str]:
    """Text of an element, one entry per <br>-separated line."""
    pieces: list[str] = []

    def visit(node: etree._Element) -> None:
        if node.tag == "br":
            pieces.append("\n")
        elif isinstance(node.tag, str) and node.text:
            pieces.append(node.text)
        for child in node:
            visit(child)
            if child.tail:
                pieces.append(child.tail)

    visit(element)
    text = "".join(pieces)
    return [line for line in (clean_line(part) for part in text.split("\n")) if line]
