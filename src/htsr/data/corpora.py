"""Real text corpora that work offline: the King James Bible (vendored) and Python's own source.

The KJV text (public domain) was exported from Debian's ``bible-kjv-text`` package
(31,102 verses, 66 books) into ``kjv.tsv.xz`` (book, chapter, verse, text), so recipes
and tests have a real corpus without a network or an apt install. Python's standard
library source is a second real corpus that is on every machine that runs htsr.
"""

from __future__ import annotations

import functools
import io
import lzma
import sysconfig
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from htsr.errors import ConfigError

KJV_BOOKS: tuple[str, ...] = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1 Samuel", "2 Samuel",
    "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job", "Psalms", "Proverbs",
    "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel",
    "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi",
    "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians", "Galatians", "Ephesians",
    "Philippians", "Colossians", "1 Thessalonians", "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon",
    "Hebrews", "James", "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
)

# The traditional division of the canon into eight genres: a real, balanced-enough label set
# for text classification (every verse has exactly one).
_GENRE_SPANS: tuple[tuple[str, str, str], ...] = (
    ("law", "Genesis", "Deuteronomy"),
    ("history", "Joshua", "Esther"),
    ("wisdom", "Job", "Song of Solomon"),
    ("major_prophets", "Isaiah", "Daniel"),
    ("minor_prophets", "Hosea", "Malachi"),
    ("gospels_acts", "Matthew", "Acts"),
    ("pauline_epistles", "Romans", "Hebrews"),
    ("general_epistles", "James", "Revelation"),
)


def _genre_of() -> dict[str, str]:
    out: dict[str, str] = {}
    for genre, first, last in _GENRE_SPANS:
        for book in KJV_BOOKS[KJV_BOOKS.index(first): KJV_BOOKS.index(last) + 1]:
            out[book] = genre
    return out


KJV_GENRES: tuple[str, ...] = tuple(g for g, _, _ in _GENRE_SPANS)


@functools.lru_cache(maxsize=1)
def _kjv_frame() -> pd.DataFrame:
    raw = resources.files("htsr.data").joinpath("kjv.tsv.xz").read_bytes()
    text = lzma.decompress(raw).decode("utf-8")
    df = pd.read_csv(io.StringIO(text), sep="\t", quoting=3, dtype={"book": str, "text": str})
    genre = _genre_of()
    df["testament"] = np.where(df["book"].map(KJV_BOOKS.index) < KJV_BOOKS.index("Matthew"), "old", "new")
    df["genre"] = df["book"].map(genre)
    return df


def kjv_verses() -> pd.DataFrame:
    """All 31,102 KJV verses: columns book, chapter, verse, text, testament, genre (a fresh copy)."""
    return _kjv_frame().copy()


def kjv_text(books: tuple[str, ...] | None = None) -> str:
    """The KJV as one string, one verse per line (optionally only some books, in canonical order)."""
    df = _kjv_frame()
    if books is not None:
        unknown = sorted(set(books) - set(KJV_BOOKS))
        if unknown:
            raise ConfigError(f"unknown KJV book(s) {unknown}; expected names like {KJV_BOOKS[:3]}")
        df = df[df["book"].isin(books)]
    return "\n".join(df["text"].tolist()) + "\n"


def stdlib_source_text(max_chars: int | None = None, modules: tuple[str, ...] | None = None) -> str:
    """Python's standard-library source as one string (sorted file order, so reproducible per Python version).

    ``modules`` restricts to top-level ``.py`` files by stem (e.g. ``("argparse", "textwrap")``).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if modules is not None:
        files = [root / f"{m}.py" for m in modules]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ConfigError(f"standard-library module file(s) not found: {missing}")
    else:
        files = sorted(p for p in root.glob("*.py"))
    parts: list[str] = []
    total = 0
    for f in files:
        try:
            t = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(t)
        total += len(t)
        if max_chars is not None and total >= max_chars:
            break
    out = "\n".join(parts)
    return out[:max_chars] if max_chars is not None else out


FORTUNES_DIR = Path("/usr/share/games/fortunes")


@functools.lru_cache(maxsize=4)
def _fortune_file(path: Path) -> tuple[str, ...]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return tuple(e.strip() for e in text.split("\n%\n") if e.strip() and e.strip() != "%")


def fortunes(categories: tuple[str, ...] | None = None, root: str | Path | None = None) -> pd.DataFrame:
    """The Debian ``fortunes`` corpus (``apt-get install fortunes``): one row per quotation, with its category
    (the file it comes from: ``computers``, ``food``, ``literature``, ``politics``, ``science`` ...).

    ``categories``: which files (default: every plain-text file present). Real, human-written English text
    that is not the Bible: a second corpus for language-model training and topic classification.
    """
    base = Path(root) if root is not None else FORTUNES_DIR
    if not base.is_dir():
        raise ConfigError(f"the fortunes corpus is not installed ({base} missing); `apt-get install fortunes`")
    present = sorted(p.name for p in base.iterdir()
                     if p.is_file() and not p.suffix and (base / f"{p.name}.dat").exists())
    cats = present if categories is None else list(categories)
    missing = [c for c in cats if c not in present]
    if missing:
        raise ConfigError(f"unknown fortunes categories {missing}; installed: {', '.join(present)}")
    rows = [(e, c) for c in cats for e in _fortune_file(base / c)]
    return pd.DataFrame(rows, columns=["text", "category"])
