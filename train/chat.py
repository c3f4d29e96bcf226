"""The Qwen chat prompt of one training conversation, with the video placeholder expanded and the loss mask.

Layout (LLaVA-NeXT's qwen template, as the paper trained):
    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<image>\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n  ...
`<image>` (in a human turn; LLaVA data writes it for a video too) becomes `video_tokens` copies of the video
token (`model.video_token`, `<video>` in LLaVA-OneVision).

Loss masks:
- `paper` (LLaVA-NeXT's `preprocess_qwen`): every token of each assistant
  message, its `<|im_start|>assistant\\n` header and trailing newline included,
  plus every `<|im_start|>`, `<|im_end|>` and standalone newline token anywhere,
  system and user turns included.
- `assistant_only`: each answer and the `<|im_end|>` that closes it.
Image placement: `front` moves a human turn's single `<image>` that follows
some text to the front, followed by a newline (LLaVA-NeXT's
`preprocess_multimodal`); `in_place` leaves it where it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100
SYSTEM = "You are a helpful assistant."
# The media placeholder in a LLaVA conversation's text: LLaVA data writes "<image>" for a video too.
MEDIA_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
MASKS = ("paper", "assistant_only")
PLACEMENTS = ("front", "in_place")


def place_placeholder(value: str, placement: str) -> str:
    """`front`: one `<image>` not already leading the turn moves to its front, then a newline (the paper's rule)."""
    if placement == "front" and value.count(MEDIA_PLACEHOLDER) == 1 and not value.startswith(MEDIA_PLACEHOLDER):
        return (MEDIA_PLACEHOLDER + "\n" + value.replace(MEDIA_PLACEHOLDER, "").strip()).strip()
    return value


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    video_positions: int  # how many video tokens were inserted

    def __len__(self) -> int:
        return len(self.input_ids)


class ChatEncoder:
    """Turns LLaVA conversations into (input_ids, labels) with a given tokenizer and video token count.

    `video_token`: the token the placeholder expands to (the trainer passes `model.video_token`); the default is
    the placeholder's own `<image>` token.
    """

    def __init__(self, tokenizer: Any, video_token: str = MEDIA_PLACEHOLDER, system: str = SYSTEM,
                 mask: str = "paper", image_placement: str = "front"):  # fmt: skip
        if mask not in MASKS or image_placement not in PLACEMENTS:
            raise ValueError(f"mask must be one of {MASKS}, image_placement one of {PLACEMENTS}")
        self.tok = tokenizer
        self.system = system
        self.mask, self.placement = mask, image_placement
        self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)
        self.im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        unknown = getattr(tokenizer, "unk_token_id", None)
        for name, tid in ((video_token, self.video_token_id), ("<|im_start|>", self.im_start), ("<|im_end|>", self.im_end)):
            if tid is None or (unknown is not None and tid == unknown):
                raise ValueError(f"tokenizer has no {name} token: add it as a special token")
        newline = self._text("\n")
        # The tokens the paper supervises wherever they are: its `unmask_tokens_idx` (Qwen's "\n" is one token).
        self.always = {self.im_start, self.im_end} | ({newline[0]} if len(newline) == 1 else set())

    def _text(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def text_tokens(self, turns: list[dict[str, str]]) -> int:
        """Tokens of the conversation without the video: what the token budget adds to k x tokens-per-frame."""
        return len(self.encode(turns, video_tokens=0))

    def encode(self, turns: list[dict[str, str]], video_tokens: int) -> Encoded:
        ids: list[int] = []
        labels: list[int] = []
        paper = self.mask == "paper"

        def add(tokens: list[int], supervised: bool) -> None:
            ids.extend(tokens)
            labels.extend(t if supervised or (paper and t in self.always) else IGNORE for t in tokens)

        nl = self._text("\n")
        add([self.im_start] + self._text("system") + nl + self._text(self.system) + [self.im_end] + nl, False)
        placed = 0
        for turn in turns:
            role = ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise ValueError(f"unknown conversation role {turn.get('from')!r}")
            value = str(turn.get("value", ""))
            if role == "assistant":
                add([self.im_start] + self._text(role) + nl, paper)
                add(self._text(value) + [self.im_end], True)
                add(nl, paper)
                continue
            add([self.im_start] + self._text(role) + nl, False)
            if MEDIA_PLACEHOLDER in value:
                before, _, after = place_placeholder(value, self.placement).partition(MEDIA_PLACEHOLDER)
                video = [self.video_token_id] * video_tokens
                add(self._text(before) + video + self._text(after.replace(MEDIA_PLACEHOLDER, "")), False)
                placed += video_tokens
            else:
                add(self._text(value), False)
            add([self.im_end] + nl, False)
        return Encoded(ids, labels, placed)

    def prompt(self, turns: list[dict[str, str]], video_tokens: int) -> list[int]:
        """The tokens a model answers from: the conversation so far, then the assistant header (evaluation)."""
        return self.encode(turns, video_tokens).input_ids + [self.im_start] + self._text("assistant") + self._text("\n")
