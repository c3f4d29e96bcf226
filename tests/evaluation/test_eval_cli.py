"""`prolongvid eval` on a Video-MME-shaped file and on a run's split: its files, its table, its refusals."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.cli import main

FIELDS = {"duration": "short", "domain": "demo", "task_type": "Counting Problem", "question": "How long is it?",
          "options": ["A. under ten seconds", "B. a minute", "C. an hour", "D. a day"], "answer": "A"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny model as a checkpoint on disk, untrained (what `model.tiny` starts from)."""
    from fixtures.tiny_train_model import build_model, build_tokenizer

    out = tmp_path_factory.mktemp("ckpt") / "init"
    tokenizer = build_tokenizer()
    build_model(tokenizer, pool=4, seed=0).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.timeout(600)
def test_eval_on_a_video_mme_shaped_file(tmp_path, tiny_checkpoint, video, capsys):
    (tmp_path / "videos").mkdir()
    for name in ("h264_10s", "clock_10s"):
        shutil.copy(video(name), tmp_path / "videos" / f"{name}.mp4")
    records = [{**FIELDS, "videoID": name, "question_id": f"{name}-{n}", "answer": "ABCD"[n]}
               for name in ("h264_10s", "clock_10s") for n in range(2)]
    records[3] = {**records[3], "duration": "long", "task_type": "Action Reasoning"}
    bench = tmp_path / "videomme.json"
    bench.write_text(json.dumps(records))
    out = tmp_path / "eval"
    code = main(["eval", str(tiny_checkpoint), str(bench), "--video-root", str(tmp_path / "videos"), "--frames", "3",
                 "--out", str(out), "--no-progress", "--batch-size", "2"])  # fmt: skip
    assert code == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["frames"] == 3 and result["tokens_per_frame"] == 20  # the tiny model's 4x4 + 4 newlines
    assert result["overall"]["questions"] == 4 and set(result["by_duration"]) == {"short", "long"}
    assert set(result["by_task_type"]) == {"Counting Problem", "Action Reasoning"}
    lines = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == [r["question_id"] for r in records] and {"output", "chosen", "correct"} <= set(lines[0])
    assert (out / "accuracy.png").stat().st_size > 1000
    assert "overall" in capsys.readouterr().out
    code = main(["eval", str(tiny_checkpoint), str(bench), "--video-root", str(tmp_path / "videos"), "--frames", "3",
                 "--out", str(tmp_path / "eval1"), "--no-progress", "--limit", "1"])  # fmt: skip
    assert code == 0 and json.loads((tmp_path / "eval1" / "eval.json").read_text())["overall"]["questions"] == 1


def test_a_question_file_missing_a_field_is_refused_naming_it(tmp_path, tiny_checkpoint, capsys):
    bench = tmp_path / "q.json"
    bench.write_text(json.dumps([{k: v for k, v in FIELDS.items() if k != "options"} | {"videoID": "x"}]))
    assert main(["eval", str(tiny_checkpoint), str(bench)]) == 2
    assert "question 0: missing field options" in capsys.readouterr().err
    bench.write_text(json.dumps([FIELDS | {"videoID": "x", "answer": "E"}]))
    assert main(["eval", str(tiny_checkpoint), str(bench)]) == 2
    assert "field answer" in capsys.readouterr().err


def test_a_run_without_an_eval_split_is_refused(tmp_path, tiny_checkpoint, capsys):
    from tests.train.synth import write_run

    run = write_run(tmp_path / "run", samples=2, per_shard=2)
    assert main(["eval", str(tiny_checkpoint), str(run)]) == 2
    assert "no eval split" in capsys.readouterr().err
