"""Text filters for generated QA: refusals dressed as answers, and near-duplicate questions within one video.

LLaVA-Video drops answers starting "does not specify / mention / show /
depict"; we drop an answer that contains a configured refusal phrase anywhere
in its first sentence. Near duplicates are questions whose word sets overlap
(Jaccard) at or above a threshold; the first one asked is kept.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9']+")
_STOP = frozenset("a an the of in on at to is are was were does do did what which who how this that video".split())


def is_refusal(answer: str, phrases: list[str]) -> bool:
    first = re.split(r"(?<=[.!?])\s", answer.strip().lower(), maxsplit=1)[0]
    return any(p.lower() in first for p in phrases)


def _words(text: str) -> frozenset[str]:
    words = _WORD.findall(text.lower())
    content = [w for w in words if w not in _STOP]
    return frozenset(content or words)


def near_duplicates(questions: list[str], threshold: float) -> tuple[list[int], list[int]]:
    """(indices kept, indices dropped): a question is dropped if it is too close to an earlier kept one."""
    kept: list[int] = []
    dropped: list[int] = []
    sets = [_words(q) for q in questions]
    for i, words in enumerate(sets):
        close = any(len(words & sets[j]) / max(1, len(words | sets[j])) >= threshold for j in kept)
        (dropped if close else kept).append(i)
    return kept, dropped
