"""The questions of a benchmark, each with what it needs to be asked as in training: the prompt and its frames.

Two sources: a pipeline run's own multiple-choice QA (`format: multiple_choice`, a letter answer), by default
from its held-out eval split, with the frames its shards store; or a Video-MME-shaped file (parquet, JSON or
JSONL; one record per question) whose videos are decoded here with the paper's `linspace(0, N-1, k)`.
A record missing a field is an error naming the record and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dense_caption.qa import LETTERS, conversation
from pipeline.core.config_load import ConfigError
from pipeline.core.storage import is_remote
from shards.layout import RunDir, Sample
from shards.reader import iter_tar_samples, read_shard_list
from shards.remote import open_stream, remote_shard_list, shard_url
from shards.split import EVAL, of_split
from train.frames import pick_frames

OPTION = re.compile(r"^\(?([A-D])[.):]\s*(.*)$")
# Video-MME's classes: short < 2 min, medium 4-15 min, long 30-60 min; a run's videos are binned at 4 and 30 min.
DURATION_CLASSES = ((240.0, "short"), (1800.0, "medium"), (float("inf"), "long"))


@dataclass
class Question:
    qid: str
    prompt: str  # the human turn, `<image>` included, exactly as a training conversation writes it
    options: list[str]
    answer: str  # a letter
    duration: str
    task_type: str
    qa_type: str
    frames: Callable[[int, int], list[bytes]] = field(repr=False)  # (k, image size) -> k JPEGs in time order
    video: str = ""


def duration_class(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return next(name for limit, name in DURATION_CLASSES if seconds < limit)


def parse_options(prompt: str) -> list[str]:
    """The option texts of a multiple-choice prompt (`A. ...` lines), in letter order."""
    found = {m.group(1): m.group(2).strip() for m in map(OPTION.match, prompt.splitlines()) if m}
    return [found[letter] for letter in LETTERS if letter in found]


def _run_shards(run_dir: str | Path) -> tuple[list[dict[str, Any]], Callable[[str], Any]]:
    """A run's shards.json records and how to open one of its tars (a path, or a stream from an object store)."""
    if is_remote(run_dir):
        root = str(run_dir)
        return remote_shard_list(root) or [], lambda name: open_stream(shard_url(root, name))
    run = RunDir(run_dir)
    return read_shard_list(run), lambda name: run.shards / name


def run_questions(run_dir: str | Path, split: str = EVAL) -> list[Question]:
    """The multiple-choice questions of a run's `split` (its `eval` shards; `train` or `all` for the rest), from
    a run folder on disk or on an object store (`s3://bucket/run1`)."""
    listed, open_shard = _run_shards(run_dir)
    if not listed:
        raise ConfigError(f"BENCH: {run_dir} has no shards.json (not a pipeline output dir)")
    chosen = listed if split == "all" else of_split(listed, split)
    if not chosen and split == EVAL:
        raise ConfigError(f"BENCH: {run_dir} has no eval split: rerun the pipeline with shards.eval_fraction > 0")
    questions: list[Question] = []
    for shard in chosen:
        for key, members in iter_tar_samples(open_shard(shard["name"])):
            sample = Sample(members, key)
            duration = duration_class(sample.meta.video.duration_s or None)  # 0: not known
            for number, record in enumerate(sample.conversations):
                turns = record.conversations
                if len(turns) != 2:
                    continue
                prompt, answer = turns[0].value, turns[1].value.strip()
                options = parse_options(prompt)
                if answer not in LETTERS or len(options) != len(LETTERS):
                    continue  # a caption or an open-ended answer: not scored here
                qa_type = record.qa_type or "unknown"
                questions.append(Question(record.id or f"{key}#{number}", prompt, options, answer, duration,
                                          qa_type, qa_type, _stored_frames(sample), key))  # fmt: skip
    return questions


def _stored_frames(sample: Sample) -> Callable[[int, int], list[bytes]]:
    """The k frames a k-frame training stage takes from this stored sample (`train/frames.py`)."""
    return lambda k, size: sample.frames(pick_frames(sample.meta, sample.num_frames, k).positions)


def _field(record: dict[str, Any], n: int, *names: str) -> Any:
    for name in names:
        if record.get(name) not in (None, ""):
            return record[name]
    raise ConfigError(f"BENCH: question {n}: missing field {names[0]}" + (f" (or {', '.join(names[1:])})" if names[1:] else ""))


def load_records(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return data if isinstance(data, list) else data.get("questions") or data.get("data") or []


def file_questions(path: str | Path, video_root: str | Path | None) -> list[Question]:
    """Questions of a Video-MME-shaped file: video (`videoID`, `video_id` or `video`: a path, `.mp4` added when it
    has no suffix, relative to `video_root`), `duration`, `task_type`, `question`, four `options`, `answer`."""
    path = Path(path)
    root = Path(video_root) if video_root else path.parent
    questions = []
    for n, record in enumerate(load_records(path)):
        video = str(_field(record, n, "videoID", "video_id", "video"))
        options = [OPTION.sub(r"\2", str(o).strip()) for o in _field(record, n, "options")]
        if len(options) != len(LETTERS):
            raise ConfigError(f"BENCH: question {n}: field options has {len(options)} options, not {len(LETTERS)}")
        answer = str(_field(record, n, "answer")).strip().upper()
        if answer not in LETTERS:
            raise ConfigError(f"BENCH: question {n}: field answer is {answer!r}, not one of {', '.join(LETTERS)}")
        video_path = root / (video if Path(video).suffix else video + ".mp4")
        qid = str(record.get("question_id") or f"{Path(video).stem}-{n}")
        prompt = mc_prompt(str(_field(record, n, "question")), options)
        questions.append(Question(qid, prompt, options, answer, str(_field(record, n, "duration")),
                                  str(record.get("task_type") or "unknown"), str(record.get("qa_type") or "multiple_choice"),
                                  decoded_frames(video_path), str(video_path)))  # fmt: skip
    return questions


def mc_prompt(question: str, options: list[str]) -> str:
    """The human turn of a multiple-choice question as the pipeline writes it for training (`<image>` first)."""
    pair = {"question": question, "options": options, "answer": "", "format": "multiple_choice", "type": "mc"}
    return conversation("question", 0, pair)["conversations"][0]["value"]


def decoded_frames(video: Path) -> Callable[[int, int], list[bytes]]:
    """Decode `video` once per (k, size): `linspace(0, N-1, k)` exact frames, squared to the model's size."""
    cache: dict[tuple[int, int], list[bytes]] = {}

    def frames(k: int, size: int) -> list[bytes]:
        if (k, size) not in cache:
            from pipeline.video.config_video import DecodeConfig, FrameSetConfig, ResizeConfig, SamplingConfig
            from pipeline.video.extract import extract_frames
            from pipeline.video.probe import preflight

            sampling = SamplingConfig(sets=[FrameSetConfig(name="eval", num_frames=k, resize=ResizeConfig(size=size))])
            result = extract_frames(preflight(video), sampling, DecodeConfig(isolate=False))
            cache.clear()
            cache[(k, size)] = result.sets["eval"].jpegs
        return cache[(k, size)]

    return frames


def load_questions(bench: str, video_root: str | None = None, split: str = EVAL) -> list[Question]:
    """A run dir (its `split`) or a Video-MME-shaped file."""
    if is_remote(bench):
        return run_questions(bench, split)  # a run folder on an object store
    path = Path(bench)
    if path.is_dir():
        return run_questions(path, split)
    if not path.is_file():
        raise ConfigError(f"BENCH: {bench} is neither a pipeline output dir nor a question file")
    return file_questions(path, video_root)

