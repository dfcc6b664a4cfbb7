"""Script injection in its many spellings never survives into a release's HTML."""

from __future__ import annotations

import re

import pytest
from lxml import html as lxml_html

from mailer.collect import blocks
from mailer.collect.extract import build_candidate
from mailer.collect.sanitize import sanitize_html

ATTACKS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    '<img src=x onerror="alert(1)">',
    '<img src="javascript:alert(1)">',
    '<a href="javascript:alert(1)">click</a>',
    '<a href="JaVaScRiPt:alert(1)">click</a>',
    '<a href="java&#x09;script:alert(1)">click</a>',
    '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>',
    '<a href=" javascript:alert(1)">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    "<svg onload=alert(1)><circle/></svg>",
    '<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>',
    '<math><mi xlink:href="javascript:alert(1)">x</mi></math>',
    '<iframe src="https://evil.example/"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<object data="https://evil.example/x.swf"></object>',
    '<embed src="https://evil.example/x.swf">',
    '<form action="https://evil.example/"><input name=q><button>Go</button></form>',
    '<p style="background:url(javascript:alert(1))">styled</p>',
    '<div style="width: expression(alert(1))">styled</div>',
    "<style>body{background:url(javascript:alert(1))}</style>",
    '<link rel="stylesheet" href="https://evil.example/x.css">',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<base href="javascript:alert(1)//">',
    '<body onload="alert(1)">body</body>',
    '<p onmouseover="alert(1)">hover</p>',
    '<details open ontoggle="alert(1)">d</details>',
    "<!--<script>alert(1)</script>-->",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<img src="https://tracker.example/pixel.gif" width="1" height="1">',
    '<img src="https://tracker.example/o/open.gif">',
]


def dangerous(fragment: str) -> list[str]:
    """Anything in a sanitised fragment that could run code or phone home."""
    found = []
    if not fragment.strip():
        return found
    root = lxml_html.fragment_fromstring(fragment, create_parent="div")
    for element in root.iter():
        if not isinstance(element.tag, str):
            found.append("comment")
            continue
        if element.tag in {
            "script", "style", "iframe", "object", "embed", "form", "input", "button", "svg",
            "math", "link", "meta", "base", "noscript",
        }:  # fmt: skip
            found.append(element.tag)
        for name, value in element.attrib.items():
            if name.startswith("on") or name in ("style", "srcdoc", "formaction"):
                found.append(f"{element.tag}@{name}")
            if name in ("href", "src") and not re.match(r"^(https?:|mailto:|tel:)", value):
                found.append(f"{element.tag}@{name}={value}")
        if element.tag == "img" and re.search(r"pixel|open\.gif", element.get("src", "")):
            found.append("tracking pixel")
    return found


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_neutralised(attack: str) -> None:
    fragment = f"<p>Before</p>{attack}<p>After</p>"
    cleaned = sanitize_html(fragment, "https://press.example.org/news/1")
    assert dangerous(cleaned) == []
    assert "alert(" not in cleaned or "<" not in cleaned.split("alert(")[0][-1:]
    assert "Before" in cleaned and "After" in cleaned


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_does_not_reach_a_stored_release(attack: str) -> None:
    release = build_candidate(
        label="feed entry",
        title="Budget approved <script>alert(1)</script>",
        html=f"<p>The budget was approved on Thursday.</p>{attack}<p>It takes effect in 2026.</p>",
        url="https://press.example.org/news/1",
    )
    assert dangerous(release.html) == []
    assert "<script" not in release.title and "alert(1)" not in release.text
    assert "The budget was approved on Thursday." in release.text


def test_relative_links_become_absolute_and_safe_markup_stays() -> None:
    cleaned = sanitize_html(
        '<p>See <a href="/docs/budget.pdf" title="Budget">the budget</a> and '
        '<strong>act</strong>.</p><ul><li>one</li></ul><img src="/img/a.jpg" alt="A">',
        "https://press.example.org/news/1",
    )
    assert 'href="https://press.example.org/docs/budget.pdf"' in cleaned
    assert 'rel="noopener noreferrer nofollow"' in cleaned
    assert "<strong>act</strong>" in cleaned and "<li>one</li>" in cleaned
    assert 'src="https://press.example.org/img/a.jpg"' in cleaned


def test_relative_links_without_a_base_are_dropped() -> None:
    cleaned = sanitize_html('<p><a href="/x">x</a><img src="y.png"></p>', None)
    assert "href" not in cleaned and "<img" not in cleaned


def test_plain_paragraphs_give_the_blocks_parsing_gives() -> None:
    """The shortcut for fragments of plain paragraphs (no parse) gives the blocks,
    lines and HTML that parsing and walking the same fragment gives."""
    pieces = ["Text, \"quoted\" ", "Žodis ąž ", "&amp;", "&lt;", "&gt;", "&nbsp;", "\u00a0",
              "\u200b", "Cafe\u0301", "\n", "  ", "\t", "\x0c", "\u2028", "a > b", "x\r\ny",
              "1 < 2", "&quot;", "\x00"]  # fmt: skip
    checked = 0
    for first in pieces:
        for second in pieces:
            for gap in ("", " ", "\n", "\u00a0"):
                raw = f"{gap}<p>{first}{second}</p>{gap}<p>{second}x{first}</p>{gap}"
                fragment = sanitize_html(raw)
                shortcut = blocks._plain_paragraphs(fragment)
                if shortcut is None:
                    continue
                parsed = blocks.Body([])
                blocks._walk(lxml_html.fragment_fromstring(fragment, create_parent="div"), parsed)
                assert [(b.kind, b.lines, b.html) for b in shortcut.blocks] == [
                    (b.kind, b.lines, b.html) for b in parsed.blocks
                ], fragment
                checked += 1
    assert checked > 1000
    # What the sanitiser never writes is left to the parser.
    assert blocks._plain_paragraphs("<p>a &quot;b&quot;</p>") is None
    assert blocks._plain_paragraphs("<p>a > b</p>") is None
    assert blocks._plain_paragraphs("<p>a\r\nb</p>") is None
    assert blocks._plain_paragraphs("<p>a <b>b</b></p>") is None


def test_plain_paragraphs_are_what_the_sanitiser_would_write() -> None:
    """Paragraphs of text with no markup skip nh3 only where nh3 gives them back
    unchanged; the characters it would rewrite send them through it."""
    import random

    from mailer.collect import sanitize

    rng = random.Random(12)
    letters = list("abc XYZ .,;:'\"!?-–—()=/\\\u200b\t\n\u2028\u0301žąĘ€\u00a0\x0c\x01\r&<>")
    letters += ["hidden", "display", "script", "&amp;", "<b>", "\x00", "\x85", "\ufffe"]
    skipped = 0
    for _ in range(3000):
        fragment = "".join(
            "<p>"
            + "".join(rng.choice(letters) for _ in range(rng.randint(0, 12)))
            + "</p>"
            + rng.choice(["", " ", "\n", "\t "])
            for _ in range(rng.randint(1, 3))
        )
        cleaned = sanitize.nh3.clean(
            sanitize._without_hidden(fragment),
            tags=sanitize.ALLOWED_TAGS,
            clean_content_tags=sanitize.DROPPED_WITH_CONTENT,
            attributes=sanitize.ALLOWED_ATTRIBUTES,
            url_schemes=sanitize.URL_SCHEMES,
            strip_comments=True,
            link_rel="noopener noreferrer nofollow",
            url_relative="deny",
        )
        if sanitize._UNCHANGED_PARAGRAPHS.fullmatch(fragment):
            skipped += 1
            assert cleaned == fragment
        assert sanitize_html(fragment) == cleaned
    assert skipped > 300
