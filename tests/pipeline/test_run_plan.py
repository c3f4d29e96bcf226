"""The run plan: resolved once when a run starts, frozen, passed down; the config stays what the user wrote, and a
run calls no deprecated Ray API."""

from __future__ import annotations

import ast
import dataclasses
import json
import warnings
from pathlib import Path

import pytest

from dense_caption.service import LLMEndpoints
from fixtures.videos import SynthVideo, make_video
from pipeline.run_config import load_run_config
from pipeline.run_plan import resolve_plan
from tests.conftest import pipeline_config

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("pipeline", "dense_caption", "filters", "shards", "train", "evaluation")
RESOLVERS = {"pipeline/run_plan.py"}  # the one place a config section is copied with changes
BASE = ["input.path=.", "output.dir=out"]


def test_no_config_is_patched_after_load():
    """A `model_copy(update=...)` skips validation and hides a decision in the middle of a run: only the resolver
    derives values from the config."""
    found = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in RESOLVERS:
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "model_copy" and any(k.arg == "update" for k in node.keywords)):
                    found.append(f"{rel}:{node.lineno}")
    assert found == [], f"config patched outside {sorted(RESOLVERS)}: {found}"


def test_the_plan_holds_every_decision_and_leaves_the_config_as_written():
    cfg = load_run_config(None, BASE + ["filters.clip.enabled=true", "llm.enabled=true", "llm.model=m",
                                        "llm.qa.enabled=false"])  # fmt: skip
    plan = resolve_plan(cfg)
    assert plan.input_kind == "folder" and plan.llm_stages == ("caption",)
    assert [[s.name for s in g.stages] for g in plan.groups] == [
        ["probe", "length_filter", "decode", "visual_filter"], ["clip_scores"], ["caption"],
        ["caption_agreement", "token_budget"]]  # fmt: skip
    assert [g.llm for g in plan.groups] == [False, False, True, False]
    assert dict(plan.frame_sets) == {"visual_filter": "caption", "clip_scores": "shard", "caption": "caption",
                                     "caption_agreement": "shard", "token_budget": "shard", "shards": "shard"}
    assert (plan.probe.keyframe_scan_s, plan.decode.threads) == (0.0, 1)
    assert (cfg.probe.keyframe_scan_s, cfg.decode.threads) == (20.0, 0)  # the user's config is not touched
    assert plan.pin_llm  # the default server is on loopback: its workers stay on the driver's node
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.input_kind = "llava"  # type: ignore[misc]
    record = json.loads(json.dumps(plan.record()))  # run.json's `plan`
    assert record["frame_sets"] == dict(plan.frame_sets) and record["probe"]["keyframe_scan_s"] == 0.0
    assert record["input_kind"] == "folder" and record["pools"][2] == {
        "stages": ["caption"], **cfg.resources.llm.model_dump(mode="json")}
    assert record["decode"]["threads"] == 1 and record["llm"] == {"stages": ["caption"], "backend": "http",
                                                                  "pinned_to_driver": True}
    assert resolve_plan(load_run_config(None, BASE)).llm_stages == ()  # LLM off: no LLM stage, no service


def test_a_served_plan_points_only_the_llm_stages_at_the_endpoints():
    cfg = load_run_config(None, BASE + ["llm.enabled=true", "llm.model=m", "llm.backend=ray_engine",
                                        "llm.engine.model=/models/m"])  # fmt: skip
    plan = resolve_plan(cfg)
    served = plan.served(LLMEndpoints("http://127.0.0.1:8000/v1", ("http://10.0.0.2:9000/v1",), None))
    assert served.llm.engine.urls == ["http://10.0.0.2:9000/v1"] and cfg.llm.engine.urls == []
    assert [s.name for s in served.groups[-1].stages] == ["caption", "qa", "token_budget"]
    assert all(s.cfg is served.llm for s in served.groups[-1].stages[:2])
    assert served.groups[0] is plan.groups[0] and served.groups[-1].stages[2] is plan.groups[-1].stages[2]
    assert not served.pin_llm  # the engine's replicas are reached from any node
    remote = resolve_plan(load_run_config(None, BASE + ["llm.enabled=true", "llm.model=m",
                                                        "llm.http.url=http://gpu-node-3:8000/v1"]))
    assert not remote.pin_llm


def test_a_run_calls_no_deprecated_ray_api_and_keeps_its_measurements_beside_the_data(tmp_path, ray_local):
    """A small run with a pinned caption pool (a loopback LLM server): no warning points at the project's code
    (Ray's `ray_remote_args` deprecation did), and run.json shows the plan and the stage times."""
    from pipeline.run import run_pipeline
    from tests.dense_caption.fake_llm import FakeLLM

    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(SynthVideo("clip_6s", duration_s=6, width=160, height=90, fps=10, audio=False), videos)
    sets = ("sampling.sets=[{name: shard, mode: uniform, num_frames: 8, resize: {size: 64}},"
            " {name: caption, mode: time_fps, fps: 1.0, resize: {policy: short_side, size: 64}}]")
    with FakeLLM(deterministic=True) as fake:
        cfg = pipeline_config(videos, tmp_path / "out", sets, "llm.enabled=true", "llm.model=fake",
                              f"llm.http.url={fake.url}", "llm.http.mode=external", "llm.captions.text_pattern=null",
                              "llm.qa.text_pattern=null")  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = run_pipeline(cfg)
    ours = [f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}" for w in caught
            if Path(w.filename).resolve().is_relative_to(ROOT) and Path(w.filename).resolve().relative_to(ROOT).parts[0]
            in PRODUCT or "ray_remote_args" in str(w.message)]  # fmt: skip
    assert ours == []
    assert summary.accepted == 1, summary
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert doc["plan"]["llm"]["pinned_to_driver"] and doc["plan"]["llm"]["http_url"] == fake.url
    assert {"probe", "decode", "caption", "qa", "write"} <= set(doc["this_run"]["stages"])
    assert doc["this_run"]["stages"]["caption"]["videos"] == 1 and doc["this_run"]["llm"]["requests"] > 0
