"""QA parts in one structured request: one request per video, an unusable part asked again alone, and the same pairs."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Callable

from dense_caption.client import ChatRequest, ChatResult, Usage
from dense_caption.config import LLMConfig, RetryConfig
from dense_caption.qa import QAJob
from dense_caption.templates import Prompts
from tests.dense_caption.fake_llm import value_for

CAPTION = "Whole video [00:00-01:00]: a man walks a dog along a beach.\n\nSegments:\n[00:00-01:00] he throws a ball."


class SchemaBackend:
    """Answers every request from its schema (valid by construction); `spoil` may edit an answer first."""

    def __init__(self, spoil: Callable[[ChatRequest, Any], Any] | None = None):
        self.spoil = spoil or (lambda request, answer: answer)
        self.requests: list[ChatRequest] = []
        self._counter = itertools.count()

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        answer = self.spoil(request, value_for(request.schema, request.name, self._counter))
        prompt = len(request.messages[-1]["content"]) // 4
        return ChatResult(json.dumps(answer), "stop", prompt_tokens=prompt, completion_tokens=10)

    async def close(self) -> None:
        return None


def run_qa(backend: SchemaBackend, **qa: Any) -> tuple[dict[str, Any], Usage]:
    cfg = LLMConfig(enabled=True, model="m", seed=0, retry=RetryConfig(attempts=2, backoff_s=0.01), qa=qa)
    usage = Usage()
    result = asyncio.run(QAJob(cfg, Prompts(), backend, usage).run(CAPTION, 60.0))
    return result, usage


def test_all_parts_come_from_one_request_in_the_order_asked():
    backend = SchemaBackend()
    result, usage = run_qa(backend)
    assert [r.name for r in backend.requests] == ["qa batch"] and usage.requests == 1
    request = backend.requests[0]
    assert list(request.schema["properties"])[-2:] == ["multiple_choice", "detailed_description"]
    assert len(request.schema["properties"]) == 18 and request.max_tokens == 17 * 512 + 3 * 512
    text = request.messages[-1]["content"]
    assert text.count(CAPTION) == 1 and "temporal" in text and "camera direction" in text
    assert len(result["pairs"]) == 18 and result["pairs"][0]["type"] == "temporal"
    assert [p["format"] for p in result["pairs"][-2:]] == ["multiple_choice", "description"]
    assert usage.by_kind["qa"]["requests"] == 1 and usage.parts_asked_again == 0


def test_an_unusable_part_is_asked_again_alone_and_the_rest_kept():
    def spoil(request: ChatRequest, answer: Any) -> Any:
        if request.name == "qa batch":
            answer["multiple_choice"]["options"] = ["same"] * 4  # four equal options: not a usable question
            answer["count"]["start_s"], answer["count"]["end_s"] = 30, 10  # evidence ends before it starts
        return answer

    backend = SchemaBackend(spoil)
    result, usage = run_qa(backend)
    assert sorted(r.name for r in backend.requests) == ["qa batch", "qa count", "qa multiple_choice"]
    assert usage.parts_asked_again == 2 and usage.by_reason == {"llm_invalid": 2}
    alone = next(r for r in backend.requests if r.name == "qa count")
    assert alone.messages[-1]["content"].endswith(CAPTION)
    assert len(result["pairs"]) == 18
    mc = next(p for p in result["pairs"] if p["format"] == "multiple_choice")
    assert len(set(mc["options"])) == 4 and mc["question"].startswith("qa multiple_choice")


def test_the_fixed_instructions_come_first_so_every_video_shares_them_as_a_cached_prefix():
    backend = SchemaBackend()
    run_qa(backend)
    cfg = LLMConfig(enabled=True, model="m", seed=0)
    other = "Whole video [00:00-02:05]: two children build a sandcastle."
    asyncio.run(QAJob(cfg, Prompts(), backend, Usage()).run(other, 125.0))
    first, second = (r.messages[-1]["content"] for r in backend.requests)
    fixed = first[: first.index("The video lasts")]
    assert len(fixed) > 2000 and second.startswith(fixed)  # only the video's length and description differ
    assert first.endswith(CAPTION) and second.endswith(other) and "02:05" in second[len(fixed) :]
    prompts = Prompts()
    for name in ("qa_open", "qa_multiple_choice", "detailed_description", "qa_batch", "segment_summary", "video_caption"):
        template = prompts.templates[name].template
        assert template.index("$duration") > len(template) // 2, name  # video facts after the instructions


def test_a_batch_unusable_as_a_whole_falls_back_to_one_request_per_part():
    backend = SchemaBackend(lambda request, answer: {"not": "it"} if request.name == "qa batch" else answer)
    result, usage = run_qa(backend, types=["temporal", "count"], detailed_description=False)
    names = [r.name for r in backend.requests]
    assert names.count("qa batch") == 2  # its retry, then part by part
    assert sorted(names[2:]) == ["qa count", "qa multiple_choice", "qa temporal"]
    assert usage.parts_asked_again == 3 and len(result["pairs"]) == 3


def test_parts_per_request_splits_the_parts_and_one_means_a_request_each():
    backend = SchemaBackend()
    result, _ = run_qa(backend, parts_per_request=5, per_type=2, types=["temporal", "spatial", "causal"])
    assert [r.name for r in backend.requests] == ["qa batch", "qa batch"]  # 6 pairs + MC + description = 8 parts
    assert list(backend.requests[0].schema["properties"]) == ["temporal", "temporal_2", "spatial", "spatial_2", "causal"]
    assert len(result["pairs"]) == 8
    backend = SchemaBackend()
    result, usage = run_qa(backend, parts_per_request=1, types=["temporal", "spatial"])
    assert sorted(r.name for r in backend.requests) == ["qa detailed_description", "qa multiple_choice", "qa spatial",
                                                        "qa temporal"]  # fmt: skip
    assert len(result["pairs"]) == 4 and usage.requests == 4
