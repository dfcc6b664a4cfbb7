"""Boilerplate never reaches the title, the text or the summary; what the furniture
says (photo credit, publisher, date) lands in its own field."""

from __future__ import annotations

from mailer.collect.extract import build_candidate
from mailer.collect.pages import extract_page
from mailer.collect.summary import cut_at_sentence, split_sentences

FURNITURE = [
    "BDAR",
    "Close",
    "Rating",
    "2.jpg",
    "Share",
    "Join our mailing list",
    "Subscribe",
    "Tweet",
    "cookies",
]

MESSY_TEXT = """BDAR
We use cookies to make this website work. By continuing to browse you agree to our use of cookies.
Close

Prime Minister Šimonytė meets NATO envoys

Ministry of Foreign Affairs of the Republic of Lithuania

Date
2023 07 12

2.jpg
Photo by Žygimantas Gedvila / BNS

{lead}

"Our security is indivisible," said Šimonytė.

Rating
0

Share
Facebook | Twitter | LinkedIn

+----------------------------------------+
| Join our mailing list                  |
| Press releases straight to your inbox. |
| Email: ____________  [ Subscribe ]     |
+----------------------------------------+
""".format(
    lead="On Wednesday, Prime Minister Ingrida Šimonytė met the ambassadors of NATO member states"
    " in Vilnius. The talks focused on the defence budget and on support for Ukraine."
    " Mr. Landsbergis also attended."
)


def assert_clean(*texts: str) -> None:
    for text in texts:
        lines = {line.strip().strip("|").strip() for line in text.splitlines()}
        for junk in FURNITURE:
            assert junk not in lines, f"{junk!r} left in {text!r}"
        assert "cookies" not in text
        assert "mailing list" not in text.lower()
        assert ".jpg" not in text


def test_scraped_text_loses_banners_widgets_and_footers() -> None:
    release = build_candidate(label="messy.txt", text=MESSY_TEXT)
    assert release.title == "Prime Minister Šimonytė meets NATO envoys"
    assert release.publisher == "Ministry of Foreign Affairs of the Republic of Lithuania"
    assert release.photo_credit == "Photo by Žygimantas Gedvila / BNS"
    assert release.published is not None and release.published.date().isoformat() == "2023-07-12"
    assert release.text.startswith("On Wednesday, Prime Minister Ingrida Šimonytė met")
    assert release.text.endswith('"Our security is indivisible," said Šimonytė.')
    # Paragraphs are kept.
    assert release.text.count("\n\n") == 1
    assert "Photo by" not in release.text
    assert "Ministry of Foreign Affairs" not in release.text
    assert_clean(release.title, release.text, release.summary, release.html)


def test_summary_is_the_lead_paragraph_cut_at_a_sentence_end() -> None:
    release = build_candidate(label="messy.txt", text=MESSY_TEXT)
    assert release.summary.startswith("On Wednesday")
    assert release.summary.endswith("Mr. Landsbergis also attended.")
    long_lead = " ".join(f"Sentence number {n} is about the budget." for n in range(40))
    cut = build_candidate(label="t", title="Long", text=long_lead).summary
    assert len(cut) <= 320
    assert cut.endswith("budget.")


def test_sentence_splitting_respects_abbreviations_and_initials() -> None:
    text = "Mr. J. Smith met Dr. Brown at 10 a.m. on Monday. They agreed. Kaina 5 mln. eurų."
    assert split_sentences(text) == [
        "Mr. J. Smith met Dr. Brown at 10 a.m. on Monday.",
        "They agreed.",
        "Kaina 5 mln. eurų.",
    ]
    assert cut_at_sentence("x" * 400, 100).endswith("…")


MESSY_PAGE = """<!doctype html><html lang="lt"><head><meta charset="utf-8">
<title>Prime Minister Šimonytė meets NATO envoys | Ministry of Foreign Affairs</title>
<meta property="og:site_name" content="Ministry of Foreign Affairs">
<meta property="og:image" content="/images/summit.jpg">
<link rel="canonical" href="https://urm.example/news/simonyte-nato?utm_source=x">
</head><body>
<div class="cookie">BDAR<br>We use cookies to improve your experience.<button>Close</button></div>
<nav><a href="/">Home</a> <a href="/news">News</a></nav>
<main><article>
<h1>Prime Minister Šimonytė meets NATO envoys</h1>
<p>Date</p><p>2023 07 12</p>
<p>Ministry of Foreign Affairs of the Republic of Lithuania</p>
<figure><img src="/images/summit.jpg" alt="Šimonytė at the summit">
<figcaption>Photo by Žygimantas Gedvila / BNS</figcaption></figure>
<p>2.jpg</p>
<p>On Wednesday, Prime Minister Ingrida Šimonytė met the ambassadors of NATO member states
in Vilnius. The talks focused on the defence budget and on support for Ukraine.</p>
<p>“Our security is indivisible,” said Šimonytė. The government will raise defence
investment to 3 percent of GDP next year.</p>
<div class="rating">Rating<br>0</div>
<div class="share">Share on Facebook | Tweet | Print</div>
</article></main>
<footer><div class="box"><p>Join our mailing list</p><form><input name=email>
<button>Subscribe</button></form></div></footer>
</body></html>"""


def test_release_page_fields_and_no_boilerplate() -> None:
    release = extract_page(MESSY_PAGE.encode(), url="https://urm.example/news/simonyte-nato")
    assert release.title == "Prime Minister Šimonytė meets NATO envoys"
    assert release.url == "https://urm.example/news/simonyte-nato"
    assert release.image_url == "https://urm.example/images/summit.jpg"
    assert release.photo_credit == "Photo by Žygimantas Gedvila / BNS"
    assert release.publisher == "Ministry of Foreign Affairs of the Republic of Lithuania"
    assert release.published is not None and release.published.date().isoformat() == "2023-07-12"
    assert release.text.startswith("On Wednesday, Prime Minister Ingrida Šimonytė met")
    assert "3 percent of GDP" in release.text
    assert_clean(release.title, release.text, release.summary, release.html)


def test_publisher_falls_back_to_the_site_name() -> None:
    page = MESSY_PAGE.replace(
        "<p>Ministry of Foreign Affairs of the Republic of Lithuania</p>", ""
    ).encode()
    release = extract_page(page, url="https://urm.example/news/simonyte-nato")
    assert release.publisher == "Ministry of Foreign Affairs"


def test_a_headline_that_starts_with_a_ministry_is_not_taken_for_the_publisher() -> None:
    release = build_candidate(
        label="t",
        text="Ministry of Health opens a new hospital wing\n\nThe new wing has 120 beds.",
    )
    assert release.title == "Ministry of Health opens a new hospital wing"
    assert release.publisher is None


def test_lithuanian_banner_and_credit_forms() -> None:
    text = (
        "Sutinku\nUždaryti\n\nVyriausybė pritarė biudžetui\n\nLietuvos Respublikos finansų "
        "ministerija\n\nJono Jonaičio / ELTA nuotr.\n\nVyriausybė trečiadienį pritarė 2026 metų "
        "biudžeto projektui ir perdavė jį Seimui.\n\nĮvertinimas\n0\nDalintis"
    )
    release = build_candidate(label="lt.txt", text=text)
    assert release.title == "Vyriausybė pritarė biudžetui"
    assert release.publisher == "Lietuvos Respublikos finansų ministerija"
    assert release.photo_credit == "Jono Jonaičio / ELTA nuotr."
    assert release.text == (
        "Vyriausybė trečiadienį pritarė 2026 metų biudžeto projektui ir perdavė jį Seimui."
    )


def test_title_loses_the_site_suffix_given_by_a_feed() -> None:
    release = build_candidate(
        label="t",
        title="Budget approved | Ministry of Finance",
        text="The budget was approved.",
        site_names=("Ministry of Finance",),
    )
    assert release.title == "Budget approved"


def test_hard_wrapped_plain_text_is_joined_into_paragraphs() -> None:
    text = (
        "Embassy reopens\n\n"
        "The Lithuanian embassy in Kyiv resumed full consular services on Tuesday,\n"
        "the Ministry of Foreign Affairs announced. Citizens can again apply for\n"
        "passports in person.\n\n"
        "The embassy is open on weekdays."
    )
    release = build_candidate(label="t", text=text)
    assert release.text == (
        "The Lithuanian embassy in Kyiv resumed full consular services on Tuesday, the Ministry "
        "of Foreign Affairs announced. Citizens can again apply for passports in person.\n\n"
        "The embassy is open on weekdays."
    )
