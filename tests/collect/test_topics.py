from mailer.collect.topics import TopicRules

RULES = TopicRules(
    [
        (1, "economy", ["economy", "tax", "budget"]),
        (2, "foreign-affairs", ["foreign minister", "European Union", "NATO"]),
        (3, "people", ["Šimonytė", "Žygimantas"]),
        (4, "empty", []),
    ]
)


def test_matching_ignores_case_and_diacritics() -> None:
    assert RULES.match_slugs("THE ECONOMY GREW") == ["economy"]
    assert RULES.match_slugs("Premjerė Simonyte ir ZYGIMANTAS") == ["people"]
    assert RULES.match_slugs("Ingrida Šimonytė spoke") == ["people"]


def test_matching_is_on_whole_words_only() -> None:
    assert RULES.match_slugs("A taxi strike in the capital") == []
    assert RULES.match_slugs("Taxes go up; the tax office opens") == ["economy"]
    assert RULES.match_slugs("NATOs") == []


def test_phrases_match_across_line_breaks_and_punctuation() -> None:
    assert RULES.match_slugs("the Foreign\nMinister said") == ["foreign-affairs"]
    assert RULES.match_slugs("member of the European Union.") == ["foreign-affairs"]
    assert RULES.match_slugs("a foreign policy minister") == []


def test_title_and_text_both_count() -> None:
    assert RULES.match_slugs("Budget day", "NATO allies met") == ["economy", "foreign-affairs"]
    assert RULES.match("Budget day", "NATO allies met") == [1, 2]
    assert RULES.match("nothing relevant") == []
