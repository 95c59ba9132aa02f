"""The vendored KJV corpus and the standard-library corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from htsr.data.corpora import KJV_BOOKS, KJV_GENRES, kjv_text, kjv_verses, stdlib_source_text
from htsr.errors import ConfigError


def test_kjv_is_complete_and_labelled():
    df = kjv_verses()
    assert len(df) == 31102
    assert tuple(df["book"].unique()) == KJV_BOOKS
    assert set(df["genre"]) == set(KJV_GENRES)
    first = df.iloc[0]
    assert (first.book, first.chapter, first.verse) == ("Genesis", 1, 1)
    assert first.text == "In the beginning God created the heaven and the earth."
    assert df[df.testament == "new"].iloc[0].book == "Matthew"
    assert df.iloc[-1].text.startswith("The grace of our Lord Jesus Christ")
    df.loc[0, "text"] = "changed"
    assert kjv_verses().iloc[0].text != "changed"  # a copy each time


def test_kjv_text_and_stdlib():
    ruth = kjv_text(("Ruth",))
    assert ruth.count("\n") == 85 and "Naomi" in ruth
    with pytest.raises(ConfigError, match="unknown KJV book"):
        kjv_text(("Genesys",))
    src = stdlib_source_text(max_chars=10_000)
    assert len(src) == 10_000 and "def " in src
    assert "class ArgumentParser" in stdlib_source_text(modules=("argparse",))
    with pytest.raises(ConfigError, match="not found"):
        stdlib_source_text(modules=("no_such_module_xyz",))


@pytest.mark.skipif(not Path("/usr/share/games/fortunes/computers").exists(), reason="apt-get install fortunes")
def test_fortunes_corpus_is_split_on_percent_lines():
    from htsr.data.corpora import FORTUNES_DIR, fortunes

    df = fortunes(("computers", "food"))
    raw = (FORTUNES_DIR / "food").read_text(encoding="utf-8", errors="replace")
    # every entry ends at a line holding only "%"
    assert (df.category == "food").sum() == sum(1 for e in raw.split("\n%\n") if e.strip() and e.strip() != "%")
    assert not df.text.str.contains("\n%\n").any() and df.text.str.len().min() > 0
    with pytest.raises(ConfigError, match="unknown fortunes categories"):
        fortunes(("nope",))
