"""The one text normaliser, shared by transcripts (training targets) and WER scoring.

Rule: lowercase; digits spelled out as English words ("42" -> "forty two"); ``#`` ->
"pound", ``*`` -> "star", ``&`` -> "and", ``%`` -> "percent"; hyphens and slashes become
spaces; every other character that is not a-z, apostrophe or space is dropped;
apostrophes not inside a word are dropped; whitespace collapsed.
"""

from __future__ import annotations

import re

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def number_to_words(n: int) -> str:
    """Spell a non-negative integer: 1905 -> 'one thousand nine hundred five'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            words = number_to_words(head) + " " + name
            return words if rest == 0 else words + " " + number_to_words(rest)
    raise AssertionError("unreachable")


_SYMBOLS = {"#": " pound ", "*": " star ", "&": " and ", "%": " percent ", "-": " ", "/": " "}
_DIGITS = re.compile(r"\d+")
_DROP = re.compile(r"[^a-z' ]+")
_LOOSE_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")
_SPACES = re.compile(r"\s+")


def _spell_digits(match: re.Match) -> str:
    digits = match.group(0)
    # Long digit strings (phone numbers, codes) are read digit by digit.
    if len(digits) > 4 or (len(digits) > 1 and digits[0] == "0"):
        return " " + " ".join(_ONES[int(d)] for d in digits) + " "
    return " " + number_to_words(int(digits)) + " "


def normalize_text(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    for symbol, spoken in _SYMBOLS.items():
        text = text.replace(symbol, spoken)
    text = _DIGITS.sub(_spell_digits, text)
    text = _DROP.sub(" ", text)
    text = _LOOSE_APOSTROPHE.sub("", text)
    return _SPACES.sub(" ", text).strip()
