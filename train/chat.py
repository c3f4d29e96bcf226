"""The Qwen chat prompt of one training conversation, with the video placeholder expanded and the loss mask.

Layout (LLaVA-NeXT's qwen template, as the paper trained):
    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<image>\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n  ...
`<image>` (first human turn) becomes `video_tokens` copies of the image token.
Labels are -100 everywhere except each assistant answer and the `<|im_end|>`
that closes it (so the model learns to stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100
SYSTEM = "You are a helpful assistant."
VIDEO_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    video_positions: int  # how many image tokens were inserted

    def __len__(self) -> int:
        return len(self.input_ids)


class ChatEncoder:
    """Turns LLaVA conversations into (input_ids, labels) with a given tokenizer and video token count."""

    def __init__(self, tokenizer: Any, image_token: str = VIDEO_PLACEHOLDER, system: str = SYSTEM):
        self.tok = tokenizer
        self.system = system
        self.image_id = tokenizer.convert_tokens_to_ids(image_token)
        self.im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        unknown = getattr(tokenizer, "unk_token_id", None)
        for name, tid in (("image", self.image_id), ("<|im_start|>", self.im_start), ("<|im_end|>", self.im_end)):
            if tid is None or (unknown is not None and tid == unknown):
                raise ValueError(f"tokenizer has no {name} token: add it as a special token")

    def _text(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def text_tokens(self, turns: list[dict[str, str]]) -> int:
        """Tokens of the conversation without the video: what the token budget adds to k x tokens-per-frame."""
        return len(self.encode(turns, video_tokens=0))

    def encode(self, turns: list[dict[str, str]], video_tokens: int) -> Encoded:
        ids: list[int] = []
        labels: list[int] = []

        def add(tokens: list[int], supervised: bool) -> None:
            ids.extend(tokens)
            labels.extend(tokens if supervised else [IGNORE] * len(tokens))

        nl = self._text("\n")
        add([self.im_start] + self._text("system") + nl + self._text(self.system) + [self.im_end] + nl, False)
        placed = 0
        for turn in turns:
            role = ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise ValueError(f"unknown conversation role {turn.get('from')!r}")
            value = str(turn.get("value", ""))
            add([self.im_start] + self._text(role) + nl, False)
            if role == "user" and VIDEO_PLACEHOLDER in value:
                before, _, after = value.partition(VIDEO_PLACEHOLDER)
                add(self._text(before) + [self.image_id] * video_tokens + self._text(after.replace(VIDEO_PLACEHOLDER, "")), False)
                placed += video_tokens
            elif role == "assistant":
                add(self._text(value) + [self.im_end], True)
                add(nl, False)
                continue
            else:
                add(self._text(value), False)
            add([self.im_end] + nl, False)
        return Encoded(ids, labels, placed)
