"""Reading the chosen letter out of a generated answer, and accuracy by group."""

from __future__ import annotations

import pytest

from evaluation.answers import accuracy, extract_letter
from evaluation.questions import duration_class, parse_options

OPTIONS = ["the car drives away", "a clock ticks", "nothing moves", "the camera pans left"]


@pytest.mark.parametrize("text,letter", [
    ("B", "B"), (" C.", "C"), ("(D)", "D"), ("A. the car drives away", "A"), ("[b]", None),
    ("The answer is C", "C"), ("Answer: (B) a clock ticks", "B"), ("I think the best option is D.", "D"),
    ("nothing moves", "C"), ("The video shows that the camera pans left.", "D"),
    ("", None), ("no idea", None), ("A or B", None), ("\ufffd\ufffd objWhadst", None),
])  # fmt: skip
def test_the_chosen_letter_is_read_robustly(text, letter):
    assert extract_letter(text, OPTIONS) == letter


def test_options_are_read_back_from_the_pipelines_prompt():
    from dense_caption.qa import conversation

    pair = {"type": "action", "format": "multiple_choice", "question": "What happens?", "options": OPTIONS,
            "answer": "B"}  # fmt: skip
    prompt = conversation("k", 0, pair)["conversations"][0]["value"]
    assert parse_options(prompt) == OPTIONS


def test_accuracy_by_duration_task_and_qa_type():
    rows = [{"duration": d, "task_type": t, "qa_type": "mc", "chosen": c, "correct": c == "A"}
            for d, t, c in [("short", "x", "A"), ("short", "y", None), ("long", "x", "A"), ("long", "x", "B")]]
    out = accuracy(rows)
    assert out["overall"] == {"questions": 4, "correct": 2, "accuracy": 0.5, "unparseable": 1}
    assert out["by_duration"]["short"]["accuracy"] == 0.5 and out["by_duration"]["long"]["correct"] == 1
    assert out["by_task_type"]["x"] == {"questions": 3, "correct": 2, "accuracy": 0.6667, "unparseable": 0}
    assert [duration_class(s) for s in (10, 600, 4000, None)] == ["short", "medium", "long", "unknown"]
