"""`prolongvid eval` on a run that lives on an object store (a real S3 API server on loopback): the same
questions, frames and answers as from the run's folder on disk, and the same refusal of a run with no eval split."""

from __future__ import annotations

import json

import pytest

from evaluation.questions import run_questions
from pipeline.cli import main
from tests.evaluation.mc_run import write_mc_run
from tests.evaluation.test_eval_cli import tiny_checkpoint  # noqa: F401 (fixture)
from fixtures.s3server import make_bucket, s3_env, s3_server, upload_tree
from tests.train.synth import write_run

pytestmark = pytest.mark.slow


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    with s3_server(tmp_path) as endpoint:
        make_bucket(endpoint, "runs")
        for k, v in s3_env(endpoint).items():
            monkeypatch.setenv(k, v)
        yield "s3://runs"


def _asked(run, split):
    return [(q.qid, q.prompt, q.options, q.answer, q.duration, q.video, q.frames(2, 64), q.frames(4, 64))
            for q in run_questions(run, split)]


@pytest.mark.timeout(600)
def test_eval_reads_a_run_from_the_bucket_as_from_disk(tmp_path, bucket, tiny_checkpoint, capsys):  # noqa: F811
    local = tmp_path / "run"
    write_mc_run(local, videos=6, frames=4)
    upload_tree(local, f"{bucket}/run1")
    remote = f"{bucket}/run1"
    for split in ("eval", "train", "all"):
        assert _asked(remote, split) == _asked(local, split)
    assert len(_asked(remote, "eval")) > 0
    results = {}
    for name, bench in (("local", str(local)), ("remote", remote)):
        out = tmp_path / f"eval-{name}"
        assert main(["eval", str(tiny_checkpoint), bench, "--frames", "2", "--out", str(out), "--no-progress"]) == 0
        results[name] = json.loads((out / "eval.json").read_text()), (out / "answers.jsonl").read_text()
    (local_json, local_answers), (remote_json, remote_answers) = results["local"], results["remote"]
    assert remote_answers == local_answers and remote_json["overall"] == local_json["overall"]
    assert remote_json["bench"] == remote and remote_json["split"] == "eval"
    capsys.readouterr()
    no_eval = tmp_path / "train-only"
    write_run(no_eval, samples=2, per_shard=2)
    upload_tree(no_eval, f"{bucket}/train-only")
    assert main(["eval", str(tiny_checkpoint), f"{bucket}/train-only"]) == 2
    assert "no eval split" in capsys.readouterr().err
    assert main(["eval", str(tiny_checkpoint), f"{bucket}/nothing-here"]) == 2
    assert "no shards.json" in capsys.readouterr().err
