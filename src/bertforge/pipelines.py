"""Inference pipelines: ``pipeline(task, model=DIR)(inputs)`` = preprocess → forward → postprocess.

Inputs are batched internally and results come back in input order.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertforge.assets import resolve_model_dir
from bertforge.checkpoint import ModelT
from bertforge.classify import encode_texts, predict_logits
from bertforge.data.tagging import OUTSIDE, chunk_entities
from bertforge.embeddings import embed_texts
from bertforge.errors import BertforgeError
from bertforge.heads import (
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertforge.inference import forward_batches, mean_over_windows, softmax
from bertforge.model import BertModel
from bertforge.ner import NO_WORD, encode_windows, predict_tags
from bertforge.qa import find_spans, unanswered
from bertforge.quantize import inference_device, quantize_encoder
from bertforge.runtime import pick_precision
from bertforge.settings import (
    FILL_MASK_TOP_K,
    PREDICT_BATCH_SIZE,
    FinetuneConfig,
    NerConfig,
    QaConfig,
    inference_settings,
)
from bertforge.tokenizer import BertTokenizer

TASKS = (
    "sentiment-analysis", "text-classification", "ner", "token-classification", "question-answering", "fill-mask",
    "feature-extraction",
)  # fmt: skip
AGGREGATIONS = ("none", "simple", "first", "average", "max")
HOW_TO_GET_A_MODEL = {
    "sentiment-analysis": "fine-tune one first, e.g. `bertforge finetune classification --model all-MiniLM-L6-v2 "
    "--train rotten_tomatoes --out runs/sentiment`, then pass model='runs/sentiment/model'",
    "fill-mask": "pretrain one first (`bertforge pretrain`, or `make quickstart`), then pass its model/ folder",
    "feature-extraction": "pass any BERT checkpoint folder, or the packaged 'all-MiniLM-L6-v2'",
}
HOW_TO_GET_A_MODEL["text-classification"] = HOW_TO_GET_A_MODEL["sentiment-analysis"]
HOW_TO_GET_A_MODEL["ner"] = HOW_TO_GET_A_MODEL["token-classification"] = (
    "pass a folder with a BertForTokenClassification checkpoint (its config.json lists the tags)"
)
HOW_TO_GET_A_MODEL["question-answering"] = (
    "fine-tune one first, e.g. `bertforge finetune qa --model all-MiniLM-L6-v2 --train squad_v1 --train-limit 4000 "
    "--out runs/qa`, then pass model='runs/qa/model'"
)


def pipeline(
    task: str,
    model: str | Path | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    quantize: str = "none",
    max_length: int | None = None,
    long_text: str | None = None,
    aggregation: str = "simple",
) -> (
    TextClassificationPipeline
    | TokenClassificationPipeline
    | QuestionAnsweringPipeline
    | FillMaskPipeline
    | FeatureExtractionPipeline
):
    """Build the pipeline for ``task`` from a checkpoint folder (or a packaged model's name).

    Text classification, NER and question answering cut their inputs (and QA chooses answers) with the settings
    the model's fine-tuning run saved, as ``evaluate`` and ``predict`` do (:func:`bertforge.settings.
    inference_settings`); a model from elsewhere gets the recipes' defaults. ``max_length`` and, for text
    classification, ``long_text`` ("truncate" or "window") replace them. ``quantize="int8"`` runs the encoder's
    linear layers in int8 on the CPU (:mod:`bertforge.quantize`).
    """
    if task not in TASKS:
        raise BertforgeError(f"unknown task {task!r}; bertforge pipelines: {', '.join(TASKS)}")
    if model is None:
        raise BertforgeError(f"pipeline({task!r}) needs model=FOLDER: {HOW_TO_GET_A_MODEL[task]}")
    folder = resolve_model_dir(model)
    tokenizer = BertTokenizer.from_pretrained(folder)
    target = inference_device(quantize, device)

    def load(model_class: type[ModelT]) -> ModelT:
        return quantize_encoder(model_class.from_pretrained(folder), quantize)

    if task == "fill-mask":
        return FillMaskPipeline(load(BertForMaskedLM), tokenizer, target, precision)
    if task == "feature-extraction":
        return FeatureExtractionPipeline(load(BertModel), tokenizer, target, precision)
    if task in ("ner", "token-classification"):
        settings = inference_settings(NerConfig, folder, max_length=max_length or 0)
        return TokenClassificationPipeline(load(BertForTokenClassification), tokenizer, target, precision, settings,
                                           aggregation=aggregation)  # fmt: skip
    if task == "question-answering":
        settings = inference_settings(QaConfig, folder, max_length=max_length or 0)
        return QuestionAnsweringPipeline(load(BertForQuestionAnswering), tokenizer, target, precision, settings)
    classifier = load(BertForSequenceClassification)
    if not classifier.config.id2label:
        raise BertforgeError(f"{folder}: has no labels in config.json; {HOW_TO_GET_A_MODEL[task]}")
    settings = inference_settings(FinetuneConfig, folder, max_length=max_length or 0, long_text=long_text)
    return TextClassificationPipeline(classifier, tokenizer, target, precision, settings)


TextInput = str | tuple[str, str] | dict[str, str]


class TextClassificationPipeline:
    """Label texts (or text pairs) with a fine-tuned classifier: ``{"label": ..., "score": ...}`` per input."""

    def __init__(
        self,
        model: BertForSequenceClassification,
        tokenizer: BertTokenizer,
        device: torch.device,
        precision: str,
        settings: FinetuneConfig,
    ) -> None:
        """``settings``: ``max_length``, ``long_text`` and ``window_stride`` say how texts are cut."""
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.precision = pick_precision(precision, device)
        self.settings = settings
        self.labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]

    def __call__(
        self, inputs: TextInput | Sequence[TextInput], top_k: int | None = 1, batch_size: int = PREDICT_BATCH_SIZE
    ) -> Any:
        """Classify a text, a (text, text_pair) tuple, a {"text", "text_pair"} dict, or a list of them.

        ``top_k=1`` gives one ``{"label", "score"}`` dict per input; a larger ``top_k`` (or None for all) gives
        a best-first list of them. Results follow input order; internally inputs are batched by length.
        """
        single = isinstance(inputs, str | tuple | dict)
        items = [inputs] if single else list(inputs)
        texts, pairs = zip(*(_split_input(item) for item in items), strict=True) if items else ((), ())
        encoded = encode_texts(
            self.tokenizer,
            list(texts),
            list(pairs),
            max_length=self.settings.max_length,
            long_text=self.settings.long_text,
            stride=self.settings.window_stride,
        )
        logits = predict_logits(
            self.model, encoded, len(items), pad_id=self.tokenizer.pad_token_id, batch_size=batch_size,
            device=self.device, precision=self.precision,
        )  # fmt: skip
        results = [self._postprocess(row, top_k) for row in logits]
        return results[0] if single else results

    def _postprocess(self, logits: np.ndarray, top_k: int | None) -> Any:
        if len(self.labels) == 1:  # regression: the predicted value
            return {"label": self.labels[0], "score": float(logits[0])}
        probabilities = softmax(logits)
        order = np.argsort(-probabilities)[: top_k or len(self.labels)]
        ranked = [{"label": self.labels[i], "score": float(probabilities[i])} for i in order]
        return ranked[0] if top_k == 1 else ranked


ZERO_WIDTH_JOINER = "\u200d"
VIRAMA_CLASS = 9  # the canonical combining class of viramas


def continues_grapheme(char: str) -> bool:
    """Whether ``char`` belongs to the grapheme cluster before it (Unicode UAX #29, as far as ``unicodedata`` tells):
    combining marks (variation selectors are among them), emoji skin-tone modifiers, tag characters, joiners."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")
        or 0x1F3FB <= code <= 0x1F3FF  # emoji modifiers
        or 0xE0020 <= code <= 0xE007F  # tags, as in the flags of Scotland or Wales
        or code in (0x200C, 0x200D)  # zero-width non-joiner and joiner
    )


def is_grapheme_boundary(text: str, position: int) -> bool:
    """Whether ``position`` in ``text`` lies between two grapheme clusters (both ends of the text do).

    A zero-width joiner joins the next character to its cluster, as in emoji sequences such as 👨‍👩‍👧; a virama
    joins the next letter, as in the Devanagari conjunct स्त; and a flag is a pair of regional indicators (🇫🇷).
    """
    if position <= 0 or position >= len(text):
        return True
    if continues_grapheme(text[position]) or text[position - 1] == ZERO_WIDTH_JOINER:
        return False
    if unicodedata.combining(text[position - 1]) == VIRAMA_CLASS and unicodedata.category(text[position]) == "Lo":
        return False
    flag_letters = 0  # regional indicators just before `position`: an odd count leaves a pair open
    while flag_letters < position and _is_regional_indicator(text[position - flag_letters - 1]):
        flag_letters += 1
    return not (flag_letters % 2 and _is_regional_indicator(text[position]))


def _is_regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def grapheme_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``text[start:end]`` widened to whole grapheme clusters: start moves back, end forward, to a boundary."""
    while not is_grapheme_boundary(text, start):
        start -= 1
    while not is_grapheme_boundary(text, end):
        end += 1
    return start, end


class TokenClassificationPipeline:
    """Find entities (or any token tags) in text, with exact character offsets into the original string.

    ``aggregation="none"`` lists every word piece tagged other than O. The other modes work on whole words, so
    an entity never splits a word: a word's tag comes from its first piece ("first"), the mean of its pieces'
    probabilities ("average" and "simple"), or its most confident piece ("max"); consecutive words then form
    entities, invalid tag sequences (an I- without a B-) read leniently as in seqeval. Spans never begin or end
    inside a grapheme cluster (a letter and its combining accents, an emoji sequence). Chinese text is tagged
    character by character, since every CJK character is a word to the tokenizer. Texts longer than
    ``max_length`` are cut into overlapping windows; a token seen by several windows gets their mean probability.
    """

    def __init__(
        self,
        model: BertForTokenClassification,
        tokenizer: BertTokenizer,
        device: torch.device,
        precision: str,
        settings: NerConfig,
        *,
        aggregation: str = "simple",
    ) -> None:
        """``settings``: ``max_length`` and ``window_stride`` say how long texts are windowed."""
        if aggregation not in AGGREGATIONS:
            raise BertforgeError(f"aggregation {aggregation!r} is not one of {AGGREGATIONS}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.precision = pick_precision(precision, device)
        self.settings = settings
        self.aggregation = aggregation
        self.labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]

    def __call__(self, inputs: str | Sequence[str], batch_size: int = PREDICT_BATCH_SIZE) -> list:
        """A list of entity dicts for a text, or one such list per text for a list of texts."""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        windows = encode_windows(self.tokenizer, texts, self.settings.max_length, self.settings.window_stride)
        probabilities = forward_batches(
            self.model, windows.inputs, lambda out, batch: out.logits.float().softmax(-1),  # (B, T, C)
            pad_id=self.tokenizer.pad_token_id, per_token=True, batch_size=batch_size, device=self.device,
            precision=self.precision,
        )  # fmt: skip
        # Per text: every real token, keyed by (word, start, end) and numbered, so windows that share it average.
        pieces: list[dict[tuple[int, int, int], int]] = [{} for _ in texts]
        slots = []
        for window, text_index in enumerate(windows.inputs.source):
            found, words = pieces[text_index], windows.word_ids[window]
            slot = np.full(len(words), NO_WORD)  # (T,)
            for position in np.flatnonzero(words != NO_WORD):
                start, end = windows.offsets[window][position]
                slot[position] = found.setdefault((int(words[position]), int(start), int(end)), len(found))
            slots.append(slot)
        means, _ = mean_over_windows(windows.inputs.source, slots, probabilities, [len(found) for found in pieces])
        results = [self._entities(text, found, mean) for text, found, mean in zip(texts, pieces, means, strict=True)]
        return results[0] if isinstance(inputs, str) else results

    def tag_words(
        self, sentences: Sequence[Sequence[str]], batch_size: int = PREDICT_BATCH_SIZE
    ) -> list[dict[str, Any]]:
        """Tag sentences given as words (a CoNLL file's tokens) as ``evaluate`` does: one BIO tag per word, read
        from its first piece. Per sentence ``{"tokens", "tags", "entities"}``; an entity's ``start_token`` and
        ``end_token`` (exclusive) count words, its score is the mean of its words' tag probabilities."""
        tags, probabilities = predict_tags(
            self.model, self.tokenizer, sentences, max_length=self.settings.max_length,
            stride=self.settings.window_stride, batch_size=batch_size, device=self.device, precision=self.precision,
        )  # fmt: skip
        results = []
        for words, found, probability in zip(sentences, tags, probabilities, strict=True):
            entities = [{"entity_group": kind, "score": float(probability[first:last].max(-1).mean()),
                         "word": " ".join(words[first:last]), "start_token": first, "end_token": last}
                        for kind, first, last in chunk_entities(found)]  # fmt: skip
            results.append({"tokens": list(words), "tags": found, "entities": entities})
        return results

    def _entities(
        self, text: str, pieces: dict[tuple[int, int, int], int], probabilities: np.ndarray
    ) -> list[dict[str, Any]]:
        """Entities of one text from its (pieces, C) probabilities; ``pieces`` numbers its (word, start, end)."""
        # Each piece's span widened to whole grapheme clusters: the tokenizer drops combining marks and variation
        # selectors when it strips accents (the offsets of "Jose\u0301" end before the accent), and splits them
        # off as words of their own after a CJK character.
        ordered = sorted((*grapheme_span(text, start, end), word, slot) for (word, start, end), slot in pieces.items())
        if self.aggregation == "none":
            entities = []
            for index, (start, end, _, slot) in enumerate(ordered):
                probs = probabilities[slot]
                label = self.labels[int(probs.argmax())]
                if label != OUTSIDE:
                    entities.append({"entity": label, "score": float(probs.max()), "index": index,
                                     "word": text[start:end], "start": start, "end": end})  # fmt: skip
            return entities
        spans: list[tuple[int, int, list[np.ndarray]]] = []  # (start, end, its pieces' probabilities) per word
        previous_word = None
        for start, end, word, slot in ordered:
            probs = probabilities[slot]
            if spans and (word == previous_word or start < spans[-1][1]):  # the same word, or a mark split off
                first, stop, members = spans[-1]
                spans[-1] = (first, max(stop, end), [*members, probs])
            else:
                spans.append((start, end, [probs]))
            previous_word = word
        words: list[tuple[int, int, np.ndarray]] = []  # (start, end, probabilities) per word, in text order
        for start, end, members in spans:
            stacked = np.stack(members)  # (pieces, C)
            if self.aggregation == "first":
                probs = stacked[0]
            elif self.aggregation == "max":
                probs = stacked[int(stacked.max(axis=1).argmax())]
            else:
                probs = stacked.mean(axis=0)
            words.append((start, end, probs))
        tags = [self.labels[int(probs.argmax())] for _, _, probs in words]
        entities = []
        for kind, first, last in chunk_entities(tags):
            start, end = words[first][0], words[last - 1][1]
            score = float(np.mean([words[i][2].max() for i in range(first, last)]))
            entities.append({"entity_group": kind, "score": score, "word": text[start:end], "start": start, "end": end})
        return entities


class QuestionAnsweringPipeline:
    """Find the answer to a question in a context: the answer text and its exact ``start``/``end`` characters.

    Contexts of any length work: one longer than ``max_length`` is read in overlapping windows (``doc_stride``
    tokens shared), and the best span of all windows wins. ``score`` is the probability of the answer's start
    times that of its end, each a softmax over the context tokens of its window.
    """

    def __init__(
        self,
        model: BertForQuestionAnswering,
        tokenizer: BertTokenizer,
        device: torch.device,
        precision: str,
        settings: QaConfig,
    ) -> None:
        """``settings``: the windows (``max_length``, ``doc_stride``, ``max_query_length``) and the answers
        (``n_best``, ``max_answer_length``, ``null_threshold``) when a call does not say otherwise."""
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.precision = pick_precision(precision, device)
        self.settings = settings

    def __call__(
        self,
        inputs: dict[str, str] | Sequence[dict[str, str]] | None = None,
        *,
        question: str | Sequence[str] | None = None,
        context: str | Sequence[str] | None = None,
        top_k: int = 1,
        doc_stride: int | None = None,
        max_question_len: int | None = None,
        max_answer_len: int | None = None,
        handle_impossible_answer: bool = False,
        batch_size: int = PREDICT_BATCH_SIZE,
    ) -> Any:
        """``(question=..., context=...)``, a ``{"question", "context"}`` dict, or lists of either.

        Returns ``{"answer", "score", "start", "end"}`` (a list of ``top_k`` of them when ``top_k > 1``) per
        question, in input order. With ``handle_impossible_answer`` the answer may be "" (start = end = 0) when
        the model's no-answer score beats every span by more than the settings' ``null_threshold``; it is ""
        whenever no span fits at all.
        """
        questions, contexts, single = _question_context_pairs(inputs, question, context)
        settings = dataclasses.replace(
            self.settings, doc_stride=self.settings.doc_stride if doc_stride is None else doc_stride,
            max_query_length=max_question_len or self.settings.max_query_length,
            max_answer_length=max_answer_len or self.settings.max_answer_length,
        )  # fmt: skip
        spans, null_scores = find_spans(self.model, self.tokenizer, questions, contexts, settings, top_k=top_k,
                                        batch_size=batch_size, device=self.device,
                                        precision=self.precision)  # fmt: skip
        results = []
        for found, null_score in zip(spans, null_scores, strict=True):
            answers = [{"score": s.probability, "start": s.start, "end": s.end, "answer": s.text} for s in found]
            best = found[0] if found else None
            if best is None or (handle_impossible_answer and unanswered(best, null_score, settings.null_threshold)):
                empty = {"score": 1.0 - (best.probability if best else 0.0), "start": 0, "end": 0, "answer": ""}
                answers = [empty, *answers][:top_k]
            results.append(answers[0] if top_k == 1 else answers)
        return results[0] if single else results


def _question_context_pairs(
    inputs: dict[str, str] | Sequence[dict[str, str]] | None,
    question: str | Sequence[str] | None,
    context: str | Sequence[str] | None,
) -> tuple[list[str], list[str], bool]:
    """Questions, contexts, and whether a single pair was given, from any of the pipeline's call forms."""
    if inputs is not None:
        records = [inputs] if isinstance(inputs, dict) else list(inputs)
        if not all(isinstance(r, dict) and isinstance(r.get("question"), str) and isinstance(r.get("context"), str)
                   for r in records):  # fmt: skip
            raise BertforgeError('give {"question": ..., "context": ...} dicts, or question=... and context=...')
        return [r["question"] for r in records], [r["context"] for r in records], isinstance(inputs, dict)
    if isinstance(question, str) and isinstance(context, str):
        return [question], [context], True
    if isinstance(question, str) and context is not None:  # one question asked of several contexts
        return [question] * len(context), list(context), False
    if question is None or context is None or isinstance(context, str) or len(question) != len(context):
        raise BertforgeError("give question= and context= as two strings, or as two lists of the same length")
    return list(question), list(context), False


def _split_input(item: TextInput) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, tuple) and len(item) == 2:
        return item[0], item[1]
    if isinstance(item, dict) and "text" in item:
        return item["text"], item.get("text_pair")
    raise BertforgeError(f"cannot classify {item!r}: pass a string, a (text, text_pair) tuple or a dict with 'text'")


class FillMaskPipeline:
    """Predict the tokens hidden behind ``[MASK]``: the top-k candidates with their probabilities."""

    def __init__(self, model: BertForMaskedLM, tokenizer: BertTokenizer, device: torch.device, precision: str):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.precision = pick_precision(precision, device)

    def __call__(
        self, inputs: str | Sequence[str], top_k: int = FILL_MASK_TOP_K, batch_size: int = PREDICT_BATCH_SIZE
    ) -> list:
        """For one text with one [MASK]: a list of ``{"token_str", "token", "score", "sequence"}``, best first.

        Several [MASK]s give one such list per mask; a list of texts gives one result per text.
        """
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        mask_id = self.tokenizer.mask_token_id
        encoded = encode_texts(self.tokenizer, texts, max_length=self.tokenizer.model_max_length)
        for text, ids in zip(texts, encoded.input_ids, strict=True):
            if mask_id not in ids:
                raise BertforgeError(f"no [MASK] token in {text!r}; write [MASK] where a word should be predicted")
        k = min(top_k, self.model.config.vocab_size)

        def best_candidates(output: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            """(B, T, 2k): at each [MASK], the k best tokens' probabilities and ids (exact as float32); else 0."""
            positions = batch["input_ids"] == mask_id  # (B, T)
            scores, ids = output.mlm_logits.float().softmax(-1).topk(k, dim=-1)  # (M, k) over the masks, in order
            candidates = torch.zeros(*positions.shape, 2 * k, device=scores.device)
            candidates[positions] = torch.cat([scores, ids.float()], dim=-1)
            return candidates

        per_token = forward_batches(
            self.model, encoded, best_candidates, pad_id=self.tokenizer.pad_token_id, per_token=True,
            batch_size=batch_size, device=self.device, precision=self.precision,
            extra_inputs=lambda batch: {"mlm_positions": batch["input_ids"] == mask_id},
        )  # fmt: skip
        results = []
        for text, ids, candidates in zip(texts, encoded.input_ids, per_token, strict=True):
            masks = []
            for occurrence, position in enumerate(np.flatnonzero(np.asarray(ids) == mask_id)):
                ranked = []
                for score, token_id in zip(candidates[position, :k], candidates[position, k:].astype(int), strict=True):
                    token = self.tokenizer.convert_ids_to_tokens(int(token_id))
                    word = token.removeprefix("##")
                    ranked.append({"token_str": word, "token": int(token_id), "score": float(score),
                                   "sequence": _fill(text, occurrence, word)})  # fmt: skip
                masks.append(ranked)
            results.append(masks[0] if len(masks) == 1 else masks)
        return results[0] if isinstance(inputs, str) else results


def _fill(text: str, occurrence: int, word: str) -> str:
    """``text`` with its ``occurrence``-th "[MASK]" replaced by ``word``, the rest of the text untouched."""
    parts = text.split("[MASK]")
    return "[MASK]".join(parts[: occurrence + 1]) + word + "[MASK]".join(parts[occurrence + 1 :])


class FeatureExtractionPipeline:
    """Sentence vectors (mean pooling, unit length): one (H,) array per text."""

    def __init__(self, model: BertModel, tokenizer: BertTokenizer, device: torch.device, precision: str):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.precision = pick_precision(precision, device)
        self.device = device

    def __call__(self, inputs: str | Sequence[str], pooling: str = "mean", normalize: bool = True) -> np.ndarray:
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        vectors = embed_texts(self.model, self.tokenizer, texts, pooling=pooling, normalize=normalize,
                              precision=self.precision)  # fmt: skip
        return vectors[0] if isinstance(inputs, str) else vectors
