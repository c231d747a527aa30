"""Extractive QA: SQuAD reading and errors, windows and answer tokens, post-processing, the pipeline's exact
offsets on long, accented and Chinese contexts, and the fine-tuning recipe end to end."""

import json

import numpy as np
import pytest
import torch

from bertforge import BertConfig, BertforgeError
from bertforge.data.squad import read_squad
from bertforge.finetune_qa import finetune_qa
from bertforge.heads import BertForQuestionAnswering
from bertforge.pipelines import pipeline
from bertforge.qa import NOT_CONTEXT, answer_positions, encode_questions
from bertforge.settings import QaConfig
from bertforge.squad_metrics import squad_scores
from bertforge.tokenizer import BertTokenizer, train_tokenizer

ENGLISH = "Müller  visited São Paulo, then   Zürich!! Unbelievable... naïve café-owners  (really) came"
CHINESE = "张三在北京大学工作，李四去了上海。"


def squad_json(paragraphs, version="1.1"):
    return {"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}


def test_reader_keeps_every_question_and_detects_unanswerable(tmp_path):
    path = tmp_path / "squad.json"
    context = "Paris is the capital of France."
    path.write_text(json.dumps(squad_json([{"context": context, "qas": [
        {"id": "a", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "b", "question": "Country?", "answers": [{"text": "France", "answer_start": 24},
                                                         {"text": "France.", "answer_start": 24}]},
        {"id": "c", "question": "Moon?", "answers": [], "is_impossible": True},
    ]}], "v2.0")))  # fmt: skip
    data = read_squad(path)
    assert [e.id for e in data.examples] == ["a", "b", "c"] and data.with_unanswerable
    assert [a.text for a in data.examples[1].answers] == ["France", "France."] and data.examples[2].answers == []
    assert [e.id for e in read_squad(path, limit=2).examples] == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"data": [\n{"paragraphs": [}\n]}', r"squad.json:2: malformed JSON at column 17"),
        ('{"version": "1.1"}', "has no 'data' list"),
        (json.dumps(squad_json([{"context": "abc"}])), r"data\[0\].paragraphs\[0\]: needs a 'context' string"),
        (json.dumps(squad_json([{"context": "Paris is big.", "qas": [{"id": "q1", "question": "Where?", "answers": [
            {"text": "Paris", "answer_start": 3}]}]}]), indent=1),
         r"squad.json:11: data\[0\].paragraphs\[0\].qas\[0\]: answer 0 of question 'q1' \('Paris'\) does not start "
         r"at character 3 of the context \(the text occurs at 0\); set answer_start"),
        (json.dumps(squad_json([{"context": "x", "qas": [{"id": "q2", "question": "Why?", "answers": []}]}])),
         "question 'q2' has no answers; give answers, or mark it"),
    ],
)  # fmt: skip
def test_bad_squad_files_give_located_errors(tmp_path, content, message):
    path = tmp_path / "squad.json"
    path.write_text(content)
    with pytest.raises(BertforgeError, match=message):
        read_squad(path)


def test_answer_tokens_cover_the_answer_in_every_window_that_holds_it(minilm_dir, squad_train):
    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    examples = read_squad(squad_train, limit=300).examples
    windows = encode_questions(tokenizer, [e.question for e in examples], [e.context for e in examples],
                               max_length=128, doc_stride=48)  # fmt: skip
    starts, ends = answer_positions(windows, examples)
    assert len(windows) > len(examples)  # long contexts were windowed
    for window, (start, end) in enumerate(zip(starts, ends, strict=True)):
        example, offsets = examples[windows.inputs.source[window]], windows.offsets[window]
        answer = example.answers[0]
        context = offsets[:, 0] != NOT_CONTEXT
        holds = offsets[context, 0].min() <= answer.start and answer.end <= offsets[context, 1].max()
        assert (start > 0) == holds
        if holds:  # the smallest token span that covers the answer
            assert offsets[start, 0] <= answer.start < offsets[start, 1] or answer.start < offsets[start, 0]
            assert offsets[start, 0] <= answer.start and offsets[end, 1] >= answer.end
            assert offsets[start + 1, 0] > answer.start or not context[start + 1]
            assert offsets[end - 1, 1] < answer.end or end == start
    assert (starts > 0).sum() >= len(examples)  # every answer is in some window


def marker_reader(tmp_path, corpus_text, start_marker, end_marker):
    """A reader whose answer is known: from ``start_marker`` to ``end_marker`` wherever they are.

    Position and segment embeddings and every layer's residual branches are zeroed, so a token's final vector
    depends only on the token; the start score reads one dimension that only ``start_marker`` lights up, the
    end score another that only ``end_marker`` does.
    """
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text * 3, encoding="utf-8")
    tokenizer = train_tokenizer([corpus], 400, min_frequency=1, show_progress=False)
    assert tokenizer.tokenize(f"{start_marker} {end_marker}") == [start_marker, end_marker]
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig.preset("tiny", vocab_size=len(tokenizer)))
    with torch.no_grad():
        model.bert.embeddings.position.weight.zero_()
        model.bert.embeddings.token_type.weight.zero_()
        for layer in model.bert.layers:
            for linear in (layer.attention.out, layer.feed_forward.down):
                linear.weight.zero_()
                linear.bias.zero_()
        words = model.bert.embeddings.word.weight
        words[:, :2] = 0.0
        words[tokenizer.convert_tokens_to_ids(start_marker), 0] = 5.0
        words[tokenizer.convert_tokens_to_ids(end_marker), 1] = 5.0
        model.qa_outputs.weight.zero_()
        model.qa_outputs.bias.zero_()
        model.qa_outputs.weight[0, 0] = model.qa_outputs.weight[1, 1] = 3.0
    folder = tmp_path / "reader"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_pipeline_answers_are_exact_character_spans_of_accented_text(tmp_path):
    context = f"{ENGLISH}  the zebra   rides,  the giraffe!! {ENGLISH}"
    folder = marker_reader(tmp_path, context + " who rides", "zebra", "giraffe")
    answer = pipeline("question-answering", model=folder)(question="  Who rides?", context=context)
    assert answer["answer"] == "zebra   rides,  the giraffe"
    assert context[answer["start"] : answer["end"]] == answer["answer"]
    assert 0 < answer["score"] <= 1
    top = pipeline("question-answering", model=folder)(question="Who rides?", context=context, top_k=3)
    assert len(top) == 3 and top[0] == answer and all(context[a["start"] : a["end"]] == a["answer"] for a in top)
    assert [a["score"] for a in top] == sorted((a["score"] for a in top), reverse=True)


def test_pipeline_reads_chinese_character_by_character(tmp_path):
    folder = marker_reader(tmp_path, CHINESE + "谁在哪里工作", "北", "学")
    answer = pipeline("question-answering", model=folder)(question="张三在哪里工作？", context=CHINESE)
    assert answer["answer"] == "北京大学" and CHINESE[answer["start"] : answer["end"]] == "北京大学"


def test_long_context_gives_the_same_answer_as_when_it_fits(tmp_path):
    context = " ".join([ENGLISH] * 6 + ["a zebra rides the giraffe."] + [ENGLISH] * 3)
    folder = marker_reader(tmp_path, context + " who rides", "zebra", "giraffe")
    fits = pipeline("question-answering", model=folder, max_length=512)(question="Who rides?", context=context)
    windowed_reader = pipeline("question-answering", model=folder, max_length=48)
    windowed = windowed_reader(question="Who rides?", context=context, doc_stride=16)
    assert len(encode_questions(windowed_reader.tokenizer, ["Who rides?"], [context], max_length=48,
                                doc_stride=16)) > 5  # fmt: skip
    assert (windowed["answer"], windowed["start"], windowed["end"]) == (fits["answer"], fits["start"], fits["end"])
    assert fits["answer"] == "zebra rides the giraffe"


def test_pipeline_input_forms_keep_order(tmp_path):
    contexts = ["one zebra and a giraffe", "a giraffe, no zebra here", "zebra giraffe"]
    folder = marker_reader(tmp_path, " ".join(contexts) + " what", "zebra", "giraffe")
    reader = pipeline("question-answering", model=folder)
    listed = reader(question=["what?"] * 3, context=contexts)
    dicts = reader([{"question": "what?", "context": c} for c in contexts])
    one_question = reader(question="what?", context=contexts)
    assert listed == dicts == one_question
    assert (listed[0]["answer"], listed[2]["answer"]) == ("zebra and a giraffe", "zebra giraffe")
    with pytest.raises(BertforgeError, match="two lists of the same length"):
        reader(question=["a", "b"], context=["c"])
    with pytest.raises(BertforgeError, match="needs model=FOLDER: fine-tune one first"):
        pipeline("question-answering")


def synthetic_squad(path, questions, seed):
    """Contexts of random words hiding "the code is WORD ."; the question asks for the code."""
    rng = np.random.default_rng(seed)
    filler = "red blue green apple river stone cloud night paper horse music light table".split()
    codes = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    paragraphs = []
    for i in range(questions):
        before = " ".join(rng.choice(filler, rng.integers(2, 12)))
        after = " ".join(rng.choice(filler, rng.integers(2, 12)))
        code = str(rng.choice(codes))
        context = f"{before} . the code is {code} . {after} ."
        start = len(before) + len(" . the code is ")
        question = {"id": f"q{i}", "question": "what is the code ?", "answers": [{"text": code, "answer_start": start}]}
        paragraphs.append({"context": context, "qas": [question]})
    path.write_text(json.dumps(squad_json(paragraphs)))
    return path


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A randomly initialised tiny BERT with a vocabulary for the synthetic task."""
    folder = tmp_path_factory.mktemp("base")
    corpus = folder / "corpus.txt"
    corpus.write_text(json.dumps(json.loads(synthetic_squad(folder / "s.json", 50, 9).read_text())))
    tokenizer = train_tokenizer([corpus], 120, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    BertForQuestionAnswering(BertConfig.preset("tiny", vocab_size=len(tokenizer))).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder / "model"


def test_recipe_learns_the_synthetic_task(tmp_path, tiny_base):
    train, dev = synthetic_squad(tmp_path / "train.json", 400, 0), synthetic_squad(tmp_path / "dev.json", 100, 1)
    settings = QaConfig(model=str(tiny_base), train=str(train), dev=str(dev), out=str(tmp_path / "run"),
                        max_length=48, doc_stride=8, epochs=4, batch_size=16, learning_rate=3e-3,
                        precision="fp32", progress=False)  # fmt: skip
    folder = finetune_qa(settings)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["dev"]["exact_match"] >= 40, report  # measured 63-76 (vocabulary training varies); chance < 10
    assert (tmp_path / "run" / "curves.png").is_file() and (tmp_path / "run" / "dev_predictions.json").is_file()
    context = "blue river . the code is kilo . red night ."
    answer = pipeline("question-answering", model=folder)(question="what is the code ?", context=context)
    assert answer["answer"] == "kilo"


def test_cli_resume_after_a_crash_gives_the_same_model_then_evaluate_and_predict(tmp_path, tiny_base, capsys):
    from bertforge.cli import main

    train, dev = synthetic_squad(tmp_path / "train.json", 96, 2), synthetic_squad(tmp_path / "dev.json", 20, 3)
    common = ["finetune", "qa", "--model", str(tiny_base), "--train", str(train), "--dev", str(dev), "--max-length",
              "48", "--doc-stride", "8", "--epochs", "2", "--batch-size", "16", "--learning-rate", "1e-3",
              "--precision", "fp32", "--progress", "false"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a")]) == 0

    import bertforge.finetune_qa

    evaluate, calls = bertforge.finetune_qa.evaluate_qa, []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return evaluate(*args, **kwargs)

    bertforge.finetune_qa.evaluate_qa = crash_in_second_epoch
    try:
        with pytest.raises(RuntimeError, match="killed"):
            main([*common, "--out", str(tmp_path / "b")])
    finally:
        bertforge.finetune_qa.evaluate_qa = evaluate
    assert main([*common, "--out", str(tmp_path / "b"), "--resume"]) == 0
    straight = BertForQuestionAnswering.from_pretrained(tmp_path / "a" / "model").state_dict()
    resumed = BertForQuestionAnswering.from_pretrained(tmp_path / "b" / "model").state_dict()
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, msg=name)
    assert (tmp_path / "b" / "metrics.jsonl").read_text().count("valid") == 2

    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "a" / "model"), "--data", str(dev), "--max-length", "48"]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())["dev"]
    assert f"exact match {report['exact_match']:.2f}, F1 {report['f1']:.2f} on 20 questions" in capsys.readouterr().out
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"question": "what is the code ?", "context": "red . the code is golf . blue ."}\n')
    assert main(["predict", "--model", str(tmp_path / "a" / "model"), "--input", str(questions)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == {"answer", "score", "start", "end"}
    questions.write_text('{"question": "what?"}\n')
    assert main(["predict", "--model", str(tmp_path / "a" / "model"), "--input", str(questions)]) == 2
    assert "questions.jsonl:1: expected a JSON object with 'question' and 'context'" in capsys.readouterr().err


def test_predict_answers_as_evaluate_does_with_the_runs_settings(tmp_path, capsys):
    from bertforge.cli import main

    filler = "red blue green apple river stone cloud night paper horse music light table " * 4
    cases = [
        (f"{filler} so the zebra and the giraffe ride .", "zebra and the giraffe"),  # 4 tokens, in window 2+
        ("zebra giraffe", "zebra giraffe"),
        ("a zebra , one giraffe", "zebra , one giraffe"),
    ]
    folder = marker_reader(tmp_path, " ".join(c for c, _ in cases) + " who rides", "zebra", "giraffe")
    # The run read 24-token windows and kept answers of at most 3 tokens: two of the three gold answers are longer.
    run = {"max_length": 24, "doc_stride": 4, "max_answer_length": 3, "learning_rate": 1e-3}
    (tmp_path / "qa_config.json").write_text(json.dumps(run))
    paragraphs = [{"context": context, "qas": [{"id": f"q{i}", "question": "who rides ?",
                                                "answers": [{"text": gold, "answer_start": context.index(gold)}]}]}
                  for i, (context, gold) in enumerate(cases)]  # fmt: skip
    squad = tmp_path / "dev.json"
    squad.write_text(json.dumps(squad_json(paragraphs)))

    assert main(["evaluate", "--model", str(folder), "--data", str(squad)]) == 0
    evaluated = capsys.readouterr().out
    assert main(["predict", "--model", str(folder), "--input", str(squad)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in records] == ["q0", "q1", "q2"]  # SQuAD JSON in, its question ids out
    scores = squad_scores({r["id"]: r["answer"] for r in records}, {f"q{i}": [g] for i, (_, g) in enumerate(cases)})
    assert f"exact match {scores['exact_match']:.2f}, F1 {scores['f1']:.2f} on 3 questions" in evaluated
    assert scores["exact_match"] == pytest.approx(100 / 3)  # only "zebra giraffe" fits in 3 tokens
    assert all(len(BertTokenizer.from_pretrained(folder).tokenize(r["answer"])) <= 3 for r in records)
    # The pipeline reads the run's settings too; told otherwise, it finds the longer answers.
    reader = pipeline("question-answering", model=folder)
    items = [{"question": "who rides ?", "context": context} for context, _ in cases]
    assert [a["answer"] for a in reader(items)] == [r["answer"] for r in records]
    assert [a["answer"] for a in reader(items, max_answer_len=15)] == [gold for _, gold in cases]

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": i, **item}) + "\n" for i, item in enumerate(items)))
    assert main(["predict", "--model", str(folder), "--input", str(questions), "--top-k", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in records] == [0, 1, 2] and all(len(r["answers"]) == 2 for r in records)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.json", '{"data": [{"paragraphs": [{"context": "c"}]}]}', "q.json: data[0].paragraphs[0]: needs a"),
        ("q.conll", "zebra\n", "q.conll: a BertForQuestionAnswering reads jsonl, squad, not conll"),
        ("q.jsonl", '{"question": "who?", "context": "c"}\n[1]\n', "q.jsonl:2: expected a JSON object with"),
    ],
)
def test_bad_predict_input_for_a_reader_is_one_located_line(tmp_path, capsys, name, content, message):
    from bertforge.cli import main

    folder = marker_reader(tmp_path, "zebra giraffe who", "zebra", "giraffe")
    (tmp_path / name).write_text(content)
    assert main(["predict", "--model", str(folder), "--input", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bertforge: error: ") and message in err[0], err
