"""A run's own multiple-choice questions: prompt, options, answer, duration class and the frames a k-frame stage
takes, read the same from format-2 shards and from layout-1 shards (one member per frame)."""

from __future__ import annotations

from evaluation.questions import run_questions
from tests.evaluation.mc_run import QUESTIONS, noise_jpeg, write_mc_run


def _asked(run) -> list[tuple]:
    return [(q.qid, q.prompt, q.options, q.answer, q.duration, q.qa_type, q.video, q.frames(2, 64), q.frames(4, 64))
            for q in run_questions(run, "all")]


def test_run_questions_read_both_layouts_alike(tmp_path):
    keys = write_mc_run(tmp_path / "new", videos=6, frames=4)
    assert write_mc_run(tmp_path / "old", videos=6, frames=4, layout1=True) == keys
    asked = _asked(tmp_path / "new")
    assert asked == _asked(tmp_path / "old") and len(asked) == 6
    by_video = {a[6]: a for a in asked}
    qid, prompt, options, answer, duration, qa_type, _, two, four = by_video["demo004"]
    assert qid == "demo004-attribute-0" and qa_type == "attribute" and answer in "ABCD"
    assert prompt.startswith("<image>\nIn clip 4: ") and options == QUESTIONS[4 % len(QUESTIONS)][1]
    assert {a[4] for a in asked} == {"short"}  # 6 s, 106 s and 206 s videos: all under 4 minutes
    assert four == [noise_jpeg(400 + f) for f in range(4)]  # every stored frame, in time order
    assert two == [noise_jpeg(400), noise_jpeg(403)]  # linspace over the stored frames (no per-stage record)
    eval_only = run_questions(tmp_path / "old")
    assert sorted(q.video for q in eval_only) == sorted(keys["eval"])
