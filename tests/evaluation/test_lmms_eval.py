"""`lmms-eval --model prolongvid` (evaluation/lmms.py) asks a checkpoint what `prolongvid eval` asks it: on a tiny
Video-MME-shaped task written here (`--include_path`, offline), every question gets the same generated text
and the two accuracies agree. lmms-eval lives in its own venv (`scripts/install_lmms_eval.sh`, which `make
test` runs; PROLONGVID_LMMS_PYTHON names its python)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [("h264_10s", "How long is the video?", ["under ten seconds", "a minute", "an hour", "a day"], "A"),
             ("h264_10s", "What moves on screen?", ["a clock", "a test pattern", "a car", "nothing"], "B"),
             ("clock_10s", "What does the clock show?", ["noon", "midnight", "seconds counting up", "a date"], "C"),
             ("clock_10s", "Which colour dominates?", ["red", "green", "blue", "grey"], "D"),
             ("clock_10s", "Is there sound?", ["yes", "no", "only music", "only speech"], "B")]  # fmt: skip

TASK = """task: prolongvid_mcq
dataset_path: json
dataset_kwargs:
  data_files:
    test: {questions}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 16
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""
UTILS = """import os
from evaluation.answers import extract_letter
from evaluation.questions import OPTION, mc_prompt

VIDEOS = {videos!r}


def doc_to_visual(doc):
    return [os.path.join(VIDEOS, doc["videoID"] + ".mp4")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return mc_prompt(doc["question"], [OPTION.sub(r"\\2", o) for o in doc["options"]])


def process_results(doc, results):
    options = [OPTION.sub(r"\\2", o) for o in doc["options"]]
    return {{"accuracy": float(extract_letter(results[0], options) == doc["answer"])}}
"""


def records_prompt(record: dict) -> str:
    from evaluation.questions import OPTION, mc_prompt

    return mc_prompt(record["question"], [OPTION.sub(r"\2", o) for o in record["options"]])


@pytest.fixture(scope="module")
def lmms_python() -> str:
    python = os.environ.get("PROLONGVID_LMMS_PYTHON") or str(ROOT / ".venv-lmms" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip("no lmms-eval venv: run scripts/install_lmms_eval.sh (make test does)")
    return python


@pytest.mark.timeout(900)
def test_lmms_eval_asks_what_prolongvid_eval_asks(tmp_path, lmms_python, video):
    from fixtures.tiny_train_model import build_model, build_tokenizer

    ckpt = tmp_path / "ckpt"
    tokenizer = build_tokenizer()
    build_model(tokenizer, pool=4, seed=0).save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in {q[0] for q in QUESTIONS}:
        shutil.copy(video(name), videos / f"{name}.mp4")
    records = [{"videoID": v, "question_id": f"q{n}", "duration": "short", "task_type": "demo", "question": q,
                "options": [f"{letter}. {o}" for letter, o in zip("ABCD", opts)], "answer": a}
               for n, (v, q, opts, a) in enumerate(QUESTIONS)]  # fmt: skip
    bench = tmp_path / "videomme.json"
    bench.write_text(json.dumps(records))

    ours = tmp_path / "ours"
    assert main(["eval", str(ckpt), str(bench), "--video-root", str(videos), "--frames", "3", "--out", str(ours),
                 "--no-progress", "--batch-size", "2"]) == 0  # fmt: skip
    answers = {r["id"]: r for r in map(json.loads, (ours / "answers.jsonl").read_text().splitlines())}

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "prolongvid_mcq.yaml").write_text(TASK.format(questions=bench))
    (tasks / "utils.py").write_text(UTILS.format(videos=str(videos)))
    out = tmp_path / "lmms"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(tasks), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}  # fmt: skip
    done = subprocess.run([lmms_python, "-m", "lmms_eval", "--model", "prolongvid", "--model_args",
                           f"pretrained={ckpt},frames=3", "--tasks", "prolongvid_mcq", "--include_path", str(tasks),
                           "--batch_size", "2", "--device", "cpu", "--output_path", str(out), "--log_samples"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=840)  # fmt: skip
    # lmms-eval exits 0 after an error too: its output files are the proof it ran
    samples = [json.loads(line) for p in out.rglob("*samples_prolongvid_mcq.jsonl") for line in p.read_text().splitlines()]
    assert len(samples) == len(QUESTIONS), (done.stdout + done.stderr)[-4000:]
    for sample in samples:
        ours_row = answers[f"q{sample['doc_id']}"]
        assert sample["input"] == records_prompt(records[sample["doc_id"]])  # the training prompt, `<image>` first
        assert sample["filtered_resps"] == ours_row["output"].strip(), sample  # same frames, same generation
    results = json.loads(next(out.rglob("*_results.json")).read_text())["results"]["prolongvid_mcq"]
    accuracy = next(v for k, v in results.items() if k.startswith("accuracy") and "stderr" not in k)
    ours_accuracy = json.loads((ours / "eval.json").read_text())["overall"]["accuracy"]
    assert accuracy == pytest.approx(ours_accuracy, abs=1e-4)
