"""Read-book sentences for transcripts: Jane Austen's six novels from Debian, without R.

Debian's ``r-cran-janeaustenr`` stores the novels as R lazy-load data: ``Rdata.rdx`` is a
gzip'd serialized index ``{variables: {name: (offset, length)}}`` into ``Rdata.rdb``,
whose entries are a 4-byte big-endian length followed by a zlib stream of one
serialized R object (a character vector of text lines). The ``rdata`` package parses
the serialized objects.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
import subprocess
import warnings
import zlib
from pathlib import Path

from emformer_variants.errors import UserError
from emformer_variants.text_norm import normalize_text

AUSTEN_PACKAGE = "r-cran-janeaustenr"
MIN_WORDS, MAX_WORDS = 5, 25
# Bump when the extraction changes: corpora record it and rebuild.
SENTENCES_VERSION = f"austen-{MIN_WORDS}-{MAX_WORDS}-v2"
CLAUSES_VERSION = f"austen-clauses-{MIN_WORDS}-{MAX_WORDS}-v1"

# Abbreviations after which a period does not end a sentence (Gutenberg spellings).
_ABBREVIATIONS = {"mr", "mrs", "dr", "st", "messrs", "esq", "col", "capt", "gen", "rev"}
# Spoken forms, so that the transcript says what a TTS engine reads.
_EXPANSIONS = (
    (re.compile(r"\bMrs\b\.?"), "Missus"),
    (re.compile(r"\bMr\b\.?"), "Mister"),
    (re.compile(r"\bDr\.", re.I), "Doctor"),
    (re.compile(r"\bSt\.", re.I), "Saint"),
    (re.compile(r"\bMessrs\.", re.I), "Messieurs"),
)
_BOUNDARY = re.compile(r"[.!?]+[\"')_\]]*\s+")
_LAST_WORD = re.compile(r"([A-Za-z]+)\W*$")
# Characters that signal a line the normaliser would mangle or a TTS would misread.
_REJECT = re.compile(r"[0-9&\[\]{}<>|@$%#*=+~^\\]")
# Where a sentence too long to be read whole may be cut into clauses.
_CLAUSE_BREAK = re.compile(r"[,;:]|--")


def add_cache_dir_argument(parser) -> None:
    """``--cache-dir`` for the corpus-building CLIs (downloads + text caches)."""
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="downloads and text caches (default $EMFORMER_VARIANTS_CACHE or "
                             "cache/ in the project, as paths.cache_dir)")


def fetch_deb(package: str, cache_dir: Path) -> Path:
    """``apt-get download`` + ``dpkg -x`` a Debian package once; returns the extracted root.

    Extraction goes to a temporary folder renamed into place, so a crash leaves no half
    tree behind.
    """
    root = Path(cache_dir) / "debs" / package
    if root.is_dir():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise UserError(
            f"{package}: apt-get/dpkg not found; on Debian/Ubuntu run "
            f"`apt-get download {package}` (or copy the .deb into {root.parent})"
        )
    debs_dir = root.parent
    debs_dir.mkdir(parents=True, exist_ok=True)
    debs = sorted(debs_dir.glob(f"{package}_*.deb"))
    if not debs:
        proc = subprocess.run(["apt-get", "download", package], cwd=debs_dir, capture_output=True, text=True)
        debs = sorted(debs_dir.glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not debs:
            msg = (proc.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise UserError(
                f"{package}: `apt-get download {package}` failed ({msg}); run "
                f"`apt-get update && apt-get download {package}` in {debs_dir}"
            )
    tmp = debs_dir / f".{package}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(["dpkg", "-x", str(debs[-1]), str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{debs[-1]}: `dpkg -x` failed ({proc.stderr.strip()}); delete it and retry")
    try:
        os.replace(tmp, root)
    except OSError:  # another process extracted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def read_rdata_lazyload(rdx: Path) -> dict[str, object]:
    """All objects of an R lazy-load database (``X.rdx`` + ``X.rdb``) as Python values."""
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns "Unknown file type: assumed RDS"
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx.read_bytes())))
        blob = rdx.with_suffix(".rdb").read_bytes()
        out = {}
        for name, (offset, length) in index["variables"].items():
            entry = blob[offset : offset + length]
            (size,) = struct.unpack(">I", entry[:4])
            raw = zlib.decompress(entry[4:])
            if len(raw) != size:
                raise UserError(f"{rdx.with_suffix('.rdb')}: entry {name} is corrupt; delete the cache")
            out[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return out


def split_sentences(lines: list[str]) -> list[str]:
    """Paragraphs (blank-line separated) -> sentences, not breaking after "Mr." etc."""
    sentences = []
    paragraph: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            paragraph.append(line.strip())
            continue
        text = " ".join(paragraph)
        paragraph = []
        start = 0
        for m in _BOUNDARY.finditer(text):
            word = _LAST_WORD.search(text[start : m.start() + 1])
            if (
                m.group(0).startswith(".")
                and word
                and (
                    word.group(1).lower() in _ABBREVIATIONS
                    or (len(word.group(1)) == 1 and word.group(1).isupper() and word.group(1) != "I")
                )
            ):
                continue  # "Mr. Darcy", initials
            sentences.append(text[start : m.end()].strip())
            start = m.end()
        if text[start:].strip():
            sentences.append(text[start:].strip())
    return sentences


def _expanded(sentence: str) -> str | None:
    """The sentence with abbreviations spelled as read, or None for a line a TTS would misread."""
    if _REJECT.search(sentence):
        return None
    for pattern, spoken in _EXPANSIONS:
        sentence = pattern.sub(spoken, sentence)
    return sentence


def clean_sentence(sentence: str) -> str | None:
    """Normalised sentence of MIN_WORDS..MAX_WORDS words, or None if it should be skipped."""
    sentence = _expanded(sentence)
    if sentence is None:
        return None
    text = normalize_text(sentence)
    return text if MIN_WORDS <= len(text.split()) <= MAX_WORDS else None


def split_clauses(sentence: str) -> list[str]:
    """Clauses of a sentence longer than MAX_WORDS words, as normalised texts of MIN_WORDS..MAX_WORDS.

    Cuts at commas, semicolons, colons and dashes, then joins neighbouring pieces greedily
    while they stay within MAX_WORDS; a piece longer than that on its own is dropped, and so
    is a final run shorter than MIN_WORDS. Sentences that ``clean_sentence`` keeps give [].
    """
    sentence = _expanded(sentence)
    if sentence is None or len(normalize_text(sentence).split()) <= MAX_WORDS:
        return []
    out: list[str] = []
    run: list[str] = []
    for piece in _CLAUSE_BREAK.split(sentence):
        words = (normalize_text(piece) if piece.strip() else "").split()
        if len(run) + len(words) > MAX_WORDS:
            if len(run) >= MIN_WORDS:
                out.append(" ".join(run))
            run = []
        run = [] if len(words) > MAX_WORDS else run + words
    if len(run) >= MIN_WORDS:
        out.append(" ".join(run))
    return out


def _austen_raw_sentences(cache_dir: Path):
    """Every raw sentence of the six novels: novels by name, then order of appearance."""
    root = fetch_deb(AUSTEN_PACKAGE, cache_dir)
    rdx = next(root.glob("usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"), None)
    if rdx is None:
        raise UserError(f"{root}: no janeaustenr/data/Rdata.rdx inside {AUSTEN_PACKAGE}; delete it and retry")
    novels = read_rdata_lazyload(rdx)
    for name in sorted(novels):
        yield from split_sentences([str(x) for x in novels[name]])


def _cached_lines(path: Path, build) -> list[str]:
    """``path``'s lines, or ``build()``'s, written there atomically first."""
    if path.is_file():
        return path.read_text(encoding="utf-8").splitlines()
    out = build()
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return out


def _distinct(texts) -> list[str]:
    seen: set[str] = set()
    return [t for t in texts if t and not (t in seen or seen.add(t))]


def load_austen_sentences(cache_dir: Path) -> list[str]:
    """~20k distinct normalised sentences of 5-25 words from Austen's six novels.

    Order is deterministic (novels by name, then order of appearance; first occurrence
    kept). The list is cached as ``<cache_dir>/<SENTENCES_VERSION>.txt``.
    """
    cache_dir = Path(cache_dir)

    def build():
        return _distinct(clean_sentence(s) for s in _austen_raw_sentences(cache_dir))

    return _cached_lines(cache_dir / f"{SENTENCES_VERSION}.txt", build)


def load_austen_clauses(cache_dir: Path) -> list[str]:
    """~25k distinct clauses (``split_clauses``) of Austen's sentences too long to read whole.

    Extra training text only: none equals a sentence of ``load_austen_sentences``, so the
    held-out dev and test pools stay unseen. Deterministic order; cached as
    ``<cache_dir>/<CLAUSES_VERSION>.txt``.
    """
    cache_dir = Path(cache_dir)

    def build():
        sentences = set(load_austen_sentences(cache_dir))
        clauses = (c for s in _austen_raw_sentences(cache_dir) for c in split_clauses(s))
        return [c for c in _distinct(clauses) if c not in sentences]

    return _cached_lines(cache_dir / f"{CLAUSES_VERSION}.txt", build)
