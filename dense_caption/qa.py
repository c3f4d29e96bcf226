"""Long-video QA from the dense caption (text only): one pair per type, a multiple-choice question, a detailed description.

Every answer comes through a JSON schema whose time fields are bounded by the
video's duration; the model may decline a type. A pair is kept only if it
validates (nothing empty, the MC answer is one of four distinct options, times
inside the video) and passes the text filters (no refusals, no near-duplicate
question). Types are asked concurrently; a type whose answers stay bad after
the retries is dropped and counted, and a video left with fewer than
`qa.min_pairs` pairs is rejected.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from dense_caption.client import ChatBackend, ChatRequest, LLMFailure, Usage, complete, gather_settled
from dense_caption.config import LLMConfig
from dense_caption.templates import Prompts, mmss
from filters.text import is_refusal, near_duplicates
from pipeline.errors import Reason

LETTERS = ("A", "B", "C", "D")
DESCRIPTION_QUESTION = "Describe this video in detail."
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
_TIME = re.compile(r"\b(?:(\d{1,2}):)?(\d{1,2}):(\d{2})\b")


def _text(cfg_chars: int, pattern: str | None) -> dict[str, Any]:
    # xgrammar takes a pattern or length bounds on a string, not both: the pattern then bounds the length
    return {"type": "string", "pattern": pattern} if pattern else {"type": "string", "maxLength": cfg_chars}


def qa_schema(kind: str, duration_s: float, max_chars: int, pattern: str | None) -> dict[str, Any]:
    """The answer format per task. Integer bounds on the evidence span keep even a random model's output finite."""
    last = max(0, int(duration_s))
    seconds = {"type": "integer", "minimum": 0, "maximum": last}
    text = _text(max_chars, pattern)
    if kind == "description":
        props: dict[str, Any] = {"description": _text(max_chars * 4, pattern)}
    else:
        props = {"status": {"enum": ["ok", "decline"]}, "question": text, "answer": text, "start_s": seconds, "end_s": seconds}
        if kind == "multiple_choice":
            props["options"] = {"type": "array", "items": text, "minItems": 4, "maxItems": 4}
            props["answer"] = {"enum": list(LETTERS)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def times_in_text(text: str) -> list[int]:
    """Seconds of every mm:ss or h:mm:ss mention."""
    return [int(h or 0) * 3600 + int(m) * 60 + int(s) for h, m, s in _TIME.findall(text)]


def check_pair(pair: dict[str, Any], kind: str, duration_s: float, refusals: list[str]) -> None:
    """Raise LLMFailure (content) when a pair the model offered cannot be used."""
    if kind == "description":
        if not pair["description"].strip():
            raise LLMFailure(Reason.LLM_EMPTY, "blank description")
        return
    if pair["status"] == "decline":
        return
    question, answer = pair["question"].strip(), pair["answer"].strip()
    if not question or not answer:
        raise LLMFailure(Reason.LLM_EMPTY, "blank question or answer")
    if pair["start_s"] > pair["end_s"]:
        raise LLMFailure(Reason.LLM_INVALID, f"evidence span starts after it ends ({pair['start_s']} > {pair['end_s']})")
    texts = [question, answer]
    if kind == "multiple_choice":
        options = [o.strip() for o in pair["options"]]
        if any(not o for o in options) or len({o.lower() for o in options}) < 4:
            raise LLMFailure(Reason.LLM_INVALID, "options must be four distinct non-empty texts")
        texts += options
    else:
        if is_refusal(answer, refusals):
            raise LLMFailure(Reason.LLM_INVALID, f"refusal: {answer[:80]!r}")
    late = [t for text in texts for t in times_in_text(text) if t > duration_s + 1]
    if late:
        raise LLMFailure(Reason.LLM_INVALID, f"mentions {mmss(late[0])}, after the video's end ({mmss(duration_s)})")


@dataclass
class QAJob:
    cfg: LLMConfig
    prompts: Prompts
    backend: ChatBackend
    usage: Usage

    def _request(self, kind: str, name: str, text: str, duration_s: float, seed_offset: int) -> ChatRequest:
        q = self.cfg.qa
        return ChatRequest(
            messages=[{"role": "system", "content": self.prompts.system}, {"role": "user", "content": text}],
            max_tokens=q.max_tokens * (3 if kind == "description" else 1),
            schema=qa_schema(kind, duration_s, q.max_chars, q.text_pattern),
            name=name,
            temperature=self.cfg.temperature,
            seed=None if self.cfg.seed is None else self.cfg.seed + seed_offset,
        )

    async def _ask(self, kind: str, qa_type: str, text: str, duration_s: float, n: int) -> dict[str, Any]:
        request = self._request(kind, f"qa {qa_type}", text, duration_s, n)
        refusals = self.cfg.qa.refusal_phrases
        answer = await complete(
            self.backend, request, self.cfg.retry, self.usage, lambda v: check_pair(v, kind, duration_s, refusals)
        )
        return {"kind": kind, "type": qa_type, **answer}

    async def run(self, dense_caption: str, duration_s: float) -> dict[str, Any]:
        q, duration = self.cfg.qa, mmss(duration_s)
        jobs = []
        for qa_type in q.types:
            t = self.prompts.qa_types[qa_type]
            text = self.prompts.render(
                "qa_open", duration=duration, dense_caption=dense_caption, count="one",
                type_title=t.title, definition=t.definition, examples=t.examples_text(),
            )  # fmt: skip
            jobs += [self._ask("open", qa_type, text, duration_s, n) for n in range(q.per_type)]
        if q.multiple_choice:
            text = self.prompts.render("qa_multiple_choice", duration=duration, dense_caption=dense_caption)
            jobs.append(self._ask("multiple_choice", "multiple_choice", text, duration_s, 0))
        if q.detailed_description:
            text = self.prompts.render(
                "detailed_description", duration=duration, dense_caption=dense_caption, question=DESCRIPTION_QUESTION
            )
            jobs.append(self._ask("description", "detailed_description", text, duration_s, 0))
        results = await gather_settled(jobs)
        return self._collect(results)

    def _collect(self, results: list[Any]) -> dict[str, Any]:
        failed: Counter[str] = Counter()
        transport = [r for r in results if isinstance(r, LLMFailure) and r.transport]
        if transport:  # the server failed us, not the model: the whole video is retried later
            raise transport[0]
        pairs, declined = [], []
        for r in results:
            if isinstance(r, LLMFailure):
                failed[r.reason.value] += 1
            elif r["kind"] != "description" and r["status"] == "decline":
                declined.append(r["type"])
            else:
                pairs.append(_pair(r))
        keep, dupes = near_duplicates([p["question"] for p in pairs], self.cfg.qa.duplicate_threshold)
        if dupes:
            failed["near_duplicate_question"] += len(dupes)
        pairs = [pairs[i] for i in keep]
        if len(pairs) < self.cfg.qa.min_pairs:
            detail = f"{len(pairs)} QA pairs left (declined {len(declined)}, dropped {dict(failed)})"
            reasons = [r for r, _ in failed.most_common() if r in Reason._value2member_map_]  # not near-duplicates
            raise LLMFailure(Reason(reasons[0]) if reasons else Reason.LLM_NO_QA, detail)
        return {"pairs": pairs, "declined": declined, "dropped": dict(failed)}


def _pair(r: dict[str, Any]) -> dict[str, Any]:
    if r["kind"] == "description":
        return {"type": r["type"], "format": "description", "question": DESCRIPTION_QUESTION, "answer": r["description"].strip()}
    pair = {
        "type": r["type"],
        "format": "multiple_choice" if r["kind"] == "multiple_choice" else "open",
        "question": r["question"].strip(),
        "answer": r["answer"].strip(),
        "start_s": r["start_s"],
        "end_s": r["end_s"],
    }
    if r["kind"] == "multiple_choice":
        pair["options"] = [o.strip() for o in r["options"]]
    return pair


def conversation(key: str, n: int, pair: dict[str, Any]) -> dict[str, Any]:
    """One LLaVA record per pair: `<image>` opens the first human turn."""
    question = pair["question"]
    answer = pair["answer"]
    if pair["format"] == "multiple_choice":
        options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, pair["options"]))
        question = f"{question}\n{options}\n{MC_SUFFIX}"
    return {
        "id": f"{key}-{pair['type']}-{n}",
        "qa_type": pair["type"],
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
    }
