"""English text beyond Austen, from Debian packages (read without their programs).

Each loader returns distinct normalised texts of ``MIN_WORDS``..``MAX_WORDS`` words (the
project's ``text_norm`` form, what the recogniser is scored on), in a deterministic order,
cached as ``<cache_dir>/<name>-<version>.txt``:

- ``gcide``: quotations in the Collaborative International Dictionary of English (Debian
  ``dict-gcide``; Webster's 1913 + WordNet, GPL): block quotations and quoted usage inside
  definitions, from centuries of English prose and verse.
- ``wordnet``: WordNet 3.0 glosses and their example phrases (Debian ``wordnet-base``,
  WordNet licence): plain modern definitions and everyday usage ("how big is that part
  compared to the whole").
- ``fortunes``: the ``fortunes`` collection (Debian, BSD-style): quotations, jokes and sayings.
- ``devil``: Ambrose Bierce's *The Devil's Dictionary* (1911, public domain; Debian ``dict-devil``).
- ``harvard``: the 720 Harvard sentences (IEEE 1969 recommended practice for speech quality
  measurements; as shipped in R's stringr, Debian ``r-cran-stringr``). Everyday phonetically
  balanced sentences: held out for the ``test_everyday`` split, never trained on.

Texts a TTS engine would misread (digits, symbols) are dropped rather than guessed at.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from emformer_variants.data.text import (
    _cached_lines,
    _distinct,
    clean_sentence,
    fetch_deb,
    read_rdata_lazyload,
    split_clauses,
    split_sentences,
)
from emformer_variants.errors import UserError

# Bump a version when its extraction changes: corpora record it and rebuild.
VERSIONS = {"gcide": "v1", "wordnet": "v1", "fortunes": "v1", "devil": "v1", "harvard": "v1"}

_GCIDE_QUOTE_INDENT = 9  # block quotations sit deeper than definitions (3 or 6 spaces)
_ATTRIBUTION = re.compile(r"\s--\s?[A-Z(].*$")  # "--Shak." / "-- S. Paige, c. 1951"
_INLINE_QUOTE = re.compile(r'"([^"]{20,400})"')
_MARKUP = re.compile(r"\{([^{}]*)\}|\[[^\]]*\]|\\[^\\]*\\")  # {links}, [notes], \pron\
_FORTUNE_SKIP = {"ascii-art", "art", "translate-me", "perl", "linux", "linuxcookie",
                 "debian", "computers", "knghtbrd", "startrek", "zippy", "ethnic"}


def _sentences_and_clauses(paragraph_lines: Iterable[str]) -> Iterable[str]:
    """Clean sentences of a paragraph, and the clauses of its over-long ones."""
    for s in split_sentences(list(paragraph_lines)):
        clean = clean_sentence(s)
        if clean:
            yield clean
        else:
            yield from split_clauses(s)


def _unmarkup(text: str) -> str:
    return _MARKUP.sub(lambda m: m.group(1) or " ", text)


def _gcide(cache_dir: Path) -> Iterable[str]:
    root = fetch_deb("dict-gcide", cache_dir)
    path = root / "usr/share/dictd/gcide.dict.dz"
    if not path.is_file():
        raise UserError(f"{root}: no usr/share/dictd/gcide.dict.dz in dict-gcide; delete it and retry")
    block: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            indent = len(line) - len(line.lstrip(" "))
            if line.strip() and indent >= _GCIDE_QUOTE_INDENT:
                block.append(line.strip())
                if "--" in line:  # the attribution closes a block quotation
                    yield from _sentences_and_clauses([_unmarkup(_ATTRIBUTION.sub("", " ".join(block)))])
                    block = []
                continue
            block = []
            for quote in _INLINE_QUOTE.findall(line):
                yield from _sentences_and_clauses([_unmarkup(quote)])


def _wordnet(cache_dir: Path) -> Iterable[str]:
    root = fetch_deb("wordnet-base", cache_dir)
    files = [root / f"usr/share/wordnet/data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(p.is_file() for p in files):
        raise UserError(f"{root}: wordnet-base lacks usr/share/wordnet/data.*; delete it and retry")
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(" ") or " | " not in line:
                continue  # licence header
            gloss = line.split(" | ", 1)[1]
            examples = re.findall(r'"([^"]+)"', gloss)
            definition = re.sub(r'"[^"]*"', " ", gloss).strip(" ;")
            for text in (definition, *examples):
                text = text.strip(" ;")
                yield from _sentences_and_clauses([text[0].upper() + text[1:] + "." if text else ""])


def _fortunes(cache_dir: Path) -> Iterable[str]:
    root = fetch_deb("fortunes", cache_dir)
    folder = root / "usr/share/games/fortunes"
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.suffix
                   and p.name not in _FORTUNE_SKIP)
    if not files:
        raise UserError(f"{root}: no fortune files under {folder}; delete it and retry")
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for fortune in text.split("\n%\n"):
            lines = [ln for ln in fortune.splitlines() if ln.strip() and not ln.strip().startswith("--")]
            if any(re.search(r"^\s*\w[\w .]*:\s", ln) for ln in lines):
                continue  # dialogue scripts ("A: ...", "Q: ...") read badly
            yield from _sentences_and_clauses([" ".join(ln.strip() for ln in lines)])


def _devil(cache_dir: Path) -> Iterable[str]:
    root = fetch_deb("dict-devil", cache_dir)
    path = root / "usr/share/dictd/devil.dict.dz"
    if not path.is_file():
        raise UserError(f"{root}: no usr/share/dictd/devil.dict.dz in dict-devil; delete it and retry")
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        paragraphs = f.read().split("\n\n")
    for para in paragraphs[1:]:
        # Drop the headword ("ABNORMAL, adj.") so the definition reads as prose.
        body = re.sub(r"^[A-Z][A-Z' -]+,\s*[a-z.]+\s+", "", para.strip())
        yield from _sentences_and_clauses([body])


def _harvard(cache_dir: Path) -> Iterable[str]:
    root = fetch_deb("r-cran-stringr", cache_dir)
    rdx = next(root.glob("usr/lib/R/site-library/stringr/data/Rdata.rdx"), None)
    if rdx is None:
        raise UserError(f"{root}: no stringr/data/Rdata.rdx in r-cran-stringr; delete it and retry")
    for s in read_rdata_lazyload(rdx)["sentences"]:
        clean = clean_sentence(str(s))
        if clean:
            yield clean


_LOADERS: dict[str, Callable[[Path], Iterable[str]]] = {
    "gcide": _gcide, "wordnet": _wordnet, "fortunes": _fortunes, "devil": _devil, "harvard": _harvard,
}


def load_english(name: str, cache_dir: Path) -> list[str]:
    """Distinct normalised texts of source ``name`` (see the module docstring), cached."""
    if name not in _LOADERS:
        raise UserError(f"text source {name!r}: unknown; use one of {sorted(_LOADERS)}")
    cache_dir = Path(cache_dir)
    return _cached_lines(cache_dir / f"{name}-{VERSIONS[name]}.txt",
                         lambda: _distinct(_LOADERS[name](cache_dir)))
