"""Long-video QA from the dense caption (text only): one pair per type, a multiple-choice question, a detailed description.

Every answer comes through a JSON schema whose time fields are bounded by the
video's duration; the model may decline a type. A pair is kept only if it
validates (nothing empty, the MC answer is one of four distinct options, times
inside the video) and passes the text filters (no refusals, no near-duplicate
question). The parts go in one structured request (`qa.parts_per_request`, see
qa_batch.py); a part whose answers stay bad after the retries is dropped and
counted, and a video left with fewer than `qa.min_pairs` pairs is rejected.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from dense_caption.client import ChatBackend, ChatRequest, LLMFailure, Usage, complete, gather_settled
from dense_caption.config import LLMConfig
from dense_caption.qa_batch import Part, batch_prompt, batch_schema, chunks
from dense_caption.templates import Prompts, mmss
from filters.text import is_refusal, near_duplicates
from pipeline.core.errors import Reason

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
            max_tokens=_budget(q.max_tokens, kind),
            schema=qa_schema(kind, duration_s, q.max_chars, q.text_pattern),
            name=name,
            temperature=self.cfg.temperature,
            seed=None if self.cfg.seed is None else self.cfg.seed + seed_offset,
        )

    def _parts(self) -> list[Part]:
        q = self.cfg.qa
        parts = [Part("open", qa_type, n) for qa_type in q.types for n in range(q.per_type)]
        if q.multiple_choice:
            parts.append(Part("multiple_choice", "multiple_choice"))
        if q.detailed_description:
            parts.append(Part("description", "detailed_description"))
        return parts

    def _alone_text(self, part: Part, dense_caption: str, duration: str) -> str:
        """The prompt that asks for one part only (its first lines are the batch prompt's)."""
        if part.kind == "multiple_choice":
            return self.prompts.render("qa_multiple_choice", duration=duration, dense_caption=dense_caption)
        if part.kind == "description":
            return self.prompts.render(
                "detailed_description", duration=duration, dense_caption=dense_caption, question=DESCRIPTION_QUESTION
            )
        t = self.prompts.qa_types[part.qa_type]
        return self.prompts.render(
            "qa_open", duration=duration, dense_caption=dense_caption, count="one",
            type_title=t.title, definition=t.definition, examples=t.examples_text(),
        )  # fmt: skip

    async def _ask_alone(self, part: Part, dense_caption: str, duration_s: float) -> dict[str, Any]:
        request = self._request(part.kind, f"qa {part.qa_type}", self._alone_text(part, dense_caption, mmss(duration_s)),
                                duration_s, part.n)  # fmt: skip
        refusals = self.cfg.qa.refusal_phrases
        answer = await complete(
            self.backend, request, self.cfg.retry, self.usage, lambda v: check_pair(v, part.kind, duration_s, refusals)
        )
        return {"kind": part.kind, "type": part.qa_type, **answer}

    async def _ask_batch(self, parts: list[Part], dense_caption: str, duration_s: float) -> list[Any]:
        """Every part's result (a pair or its LLMFailure), from one request plus a request per unusable part."""
        q = self.cfg.qa
        text = batch_prompt(self.prompts, parts, mmss(duration_s), dense_caption, DESCRIPTION_QUESTION)
        schemas = {p.key: qa_schema(p.kind, duration_s, q.max_chars, q.text_pattern) for p in parts}
        request = ChatRequest(
            messages=[{"role": "system", "content": self.prompts.system}, {"role": "user", "content": text}],
            max_tokens=sum(_budget(q.max_tokens, p.kind) for p in parts),
            schema=batch_schema(schemas),
            name="qa batch",
            temperature=self.cfg.temperature,
            seed=self.cfg.seed,
        )
        try:
            answer = await complete(self.backend, request, self.cfg.retry, self.usage)
        except LLMFailure as failure:
            if failure.transport:  # the whole video is retried later
                return [failure]
            answer = {}  # unusable as a whole: every part is asked alone
            self.usage.parts_asked_again += len(parts)
        results: dict[Part, Any] = {}
        for part in parts:
            if part.key not in answer:
                continue
            try:
                check_pair(answer[part.key], part.kind, duration_s, q.refusal_phrases)
            except LLMFailure as failure:
                self.usage.by_reason[failure.reason.value] = self.usage.by_reason.get(failure.reason.value, 0) + 1
                self.usage.parts_asked_again += 1
                continue
            results[part] = {"kind": part.kind, "type": part.qa_type, **answer[part.key]}
        again = [p for p in parts if p not in results]
        for part, result in zip(again, await gather_settled([self._ask_alone(p, dense_caption, duration_s) for p in again])):
            results[part] = result
        return [results[p] for p in parts]

    async def run(self, dense_caption: str, duration_s: float) -> dict[str, Any]:
        parts = self._parts()
        size = self.cfg.qa.parts_per_request
        groups = chunks(parts, size) if size > 1 else [[p] for p in parts]
        jobs = [
            self._ask_batch(g, dense_caption, duration_s) if len(g) > 1 else self._ask_alone(g[0], dense_caption, duration_s)
            for g in groups
        ]
        results: list[Any] = []
        for group, settled in zip(groups, await gather_settled(jobs)):
            results.extend(settled if len(group) > 1 and isinstance(settled, list) else [settled])
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


def _budget(max_tokens: int, kind: str) -> int:
    return max_tokens * (3 if kind == "description" else 1)


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
