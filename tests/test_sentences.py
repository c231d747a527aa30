"""split_sentences: golden cases for English (abbreviations, quotes, numbers), Chinese, and both mixed."""

import time

import pytest

from bertforge.data.sentences import split_sentences

GOLDEN = {
    "plain English": (
        "The cat sat. The dog ran! Did it? Yes.",
        ["The cat sat.", "The dog ran!", "Did it?", "Yes."],
    ),
    "titles and initials": (
        "Mr. Smith met Dr. J. R. Jones and Prof. Lee at St. Paul's. They talked.",
        ["Mr. Smith met Dr. J. R. Jones and Prof. Lee at St. Paul's.", "They talked."],
    ),
    "latin abbreviations": (
        "Fruit, e.g. Apples, i.e. Red ones, etc. Are sold here. Cats vs. Dogs is a debate.",
        ["Fruit, e.g. Apples, i.e. Red ones, etc. Are sold here.", "Cats vs. Dogs is a debate."],
    ),
    "dotted acronym": (
        "She moved to the U.S. Army base in 1990. It was big.",
        ["She moved to the U.S. Army base in 1990.", "It was big."],
    ),
    "decimals and times": (
        "Pi is 3.14 or so. It was 5 p.m. Sharp, they said. Version 2.0.1 shipped.",
        ["Pi is 3.14 or so.", "It was 5 p.m. Sharp, they said.", "Version 2.0.1 shipped."],
    ),
    "sentence starting with a digit": (
        "It cost $5. 10 people paid.",
        ["It cost $5.", "10 people paid."],
    ),
    "closing quotes and brackets stay": (
        'He said "Stop." Then he left. (This is an aside.) "Go!" she cried. \'Fine.\' Done.',
        ['He said "Stop."', "Then he left.", "(This is an aside.)", '"Go!" she cried.', "'Fine.'", "Done."],
    ),
    "curly quotes": (
        "“Are you coming?” she asked. “No.” He stayed.",
        ["“Are you coming?” she asked.", "“No.”", "He stayed."],
    ),
    "lower case after a terminator is no split": (
        'Hello! he said. "Why?" asked she. Wait... what? No way… Really.',
        ["Hello! he said.", '"Why?" asked she.', "Wait... what?", "No way…", "Really."],
    ),
    "runs of terminators": (
        "Really?! Yes!!! Okay.",
        ["Really?!", "Yes!!!", "Okay."],
    ),
    "no terminator": ("a line without any end", ["a line without any end"]),
    "whitespace trimmed, newlines are spaces": (
        "  First one.\n\tSecond one.  ",
        ["First one.", "Second one."],
    ),
    "Chinese": (
        "今天天气很好。我们去公园吧！你去吗？",
        ["今天天气很好。", "我们去公园吧！", "你去吗？"],
    ),
    "Chinese quotes stay with their sentence": (
        "他说：“你好。”我回答：“再见！”「走吗？」她问。",
        ["他说：“你好。”", "我回答：“再见！”", "「走吗？」", "她问。"],
    ),
    "Chinese semicolon is no split, ellipsis is": (
        "春天来了；花开了。他想了想……算了。好吧…走吧。",
        ["春天来了；花开了。", "他想了想……", "算了。", "好吧…", "走吧。"],
    ),
    "Chinese with ASCII marks and brackets": (
        "真的吗?是的!（我知道。）好。",
        ["真的吗?", "是的!", "（我知道。）", "好。"],
    ),
    "Chinese decimal": ("圆周率约为3.14。很好记。", ["圆周率约为3.14。", "很好记。"]),
    "mixed": (
        "I like tea. 我喜欢茶。And coffee, 也喜欢咖啡。 It is 3.5 yuan.",
        ["I like tea.", "我喜欢茶。", "And coffee, 也喜欢咖啡。", "It is 3.5 yuan."],
    ),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden(name):
    text, expected = GOLDEN[name]
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\u3000"])
def test_blank_text_has_no_sentences(text):
    assert split_sentences(text) == []


def test_pieces_are_never_empty_and_cover_the_text():
    text = "One. . . Two!  ?  Three。。  ”Four“ …… Five."
    pieces = split_sentences(text)
    assert all(piece and piece == piece.strip() for piece in pieces)
    without_spaces = "".join(text.split())
    assert "".join("".join(pieces).split()) == without_spaces  # only whitespace between sentences is dropped


def test_long_text_is_fast():
    """Linear time: a paragraph of 20,000 sentences splits in well under a second."""
    text = " ".join(f"Sentence number {i} ends here, e.g. with Mr. X. at 3.14." for i in range(20_000))
    started = time.perf_counter()
    pieces = split_sentences(text)
    assert len(pieces) == 20_000
    assert time.perf_counter() - started < 1.0
