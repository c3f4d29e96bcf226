"""The Qwen chat prompt of one training conversation, with the video placeholder expanded and the loss mask.

Tokens are the paper's (LLaVA-NeXT `preprocess_qwen` with its chat template): each message is the string
    <|im_start|>{role}\\n{content}<|im_end|>\\n
tokenized whole, so the header's newline merges with a leading newline of the content ("\\n\\n" is one Qwen
token), after a system message "You are a helpful assistant.". As in the paper, a conversation that opens with
an answer loses that first message. `<image>` (LLaVA data writes it for a video too) splits the text like the
special token the paper adds and becomes `video_tokens` copies of the video token (`model.video_token`, `<video>`
in LLaVA-OneVision), where the paper's model inserts the video features (`prepare_inputs_labels_for_multimodal`).

Loss masks:
- `paper` (`preprocess_qwen`): every token of each assistant message, its `<|im_start|>assistant\\n` header and
  trailing newline included, plus every `<|im_start|>`, `<|im_end|>` and "\\n" token anywhere (its
  `unmask_tokens_idx`; a merged "\\n\\n" is not one of them), system and user turns included.
- `assistant_only`: each answer and the `<|im_end|>` that closes it.
Video positions are never supervised.
Image placement: `front` moves a turn's single `<image>` that follows some text to the front, followed by a
newline (LLaVA-NeXT's `preprocess_multimodal`, which does so in answers too); `in_place` leaves it where it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100
SYSTEM = "You are a helpful assistant."
# The media placeholder in a LLaVA conversation's text: LLaVA data writes "<image>" for a video too.
MEDIA_PLACEHOLDER = "<image>"
# `preprocess_multimodal` deletes this marker of one noisy source (VideoInstruct-100k) from every turn.
NOISE_MARKER = "QA_GT_caption_based_noisy"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
MASKS = ("paper", "assistant_only")
PLACEMENTS = ("front", "in_place")


class RefusedConversation(ValueError):
    """A conversation this encoder cannot turn into the paper's training item; `reason` names why (snake_case).

    - `empty`: no turns, or none left once a leading answer is dropped (the paper fails on it or trains on the
      system prompt alone).
    - `no_placeholder`: no `<image>` in the kept turns: the paper's model then never sees the video, while the
      loader here feeds its frames and the model needs one video token per frame feature.
    - `several_placeholders`: more than one `<image>`: the paper inserts the video at each (another sample's
      video when its batch holds more than one); the model here fills the video tokens from one copy.
    - `video_token_in_text`: the text itself tokenizes to the video token (a literal `<video>`), which the model
      would take for a video position.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"conversation refused ({reason}){': ' + detail if detail else ''}")
        self.reason = reason


def place_placeholder(value: str, placement: str) -> str:
    """One turn's text as `preprocess_multimodal` leaves it: with `front`, a single `<image>` not already
    leading the turn moves to its front, then a newline; the noise marker goes in either placement."""
    if placement == "front" and value.count(MEDIA_PLACEHOLDER) == 1 and not value.startswith(MEDIA_PLACEHOLDER):
        value = (MEDIA_PLACEHOLDER + "\n" + value.replace(MEDIA_PLACEHOLDER, "").strip()).strip()
    return value.replace(NOISE_MARKER, "")


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
    the placeholder's own `<image>` token. Refuses (`RefusedConversation`) what it cannot encode as the paper
    does; an unknown role is a plain ValueError.
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
        self.nl = self._text("\n")
        self.header = {role: self._text(role + "\n") for role in ("system", "user", "assistant")}
        # The tokens the paper supervises wherever they are: its `unmask_tokens_idx` (Qwen's "\n" is one token).
        self.always = {self.im_start, self.im_end} | ({self.nl[0]} if len(self.nl) == 1 else set())

    def _text(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def text_tokens(self, turns: list[dict[str, str]]) -> int:
        """Tokens of the conversation without the video: what the token budget adds to k x tokens-per-frame."""
        return len(self.encode(turns, video_tokens=0))

    def _messages(self, turns: list[dict[str, str]]) -> list[tuple[str, str]]:
        """(role, text) of the turns the paper keeps, placed; refuses what cannot be encoded as the paper does."""
        out = []
        for turn in turns:
            role = ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise ValueError(f"unknown conversation role {turn.get('from')!r}")
            out.append((role, place_placeholder(str(turn.get("value", "")), self.placement)))
        if out and out[0][0] == "assistant":
            out = out[1:]  # `preprocess_qwen` drops the first message when it is not from the human
        if not out:
            raise RefusedConversation("empty")
        placeholders = sum(text.count(MEDIA_PLACEHOLDER) for _, text in out)
        if placeholders != 1:
            raise RefusedConversation("no_placeholder" if not placeholders else "several_placeholders",
                                      f"{placeholders} {MEDIA_PLACEHOLDER}")
        return out

    def encode(self, turns: list[dict[str, str]], video_tokens: int) -> Encoded:
        """The paper's ids and labels; in `assistant_only`, a first answer token that Qwen merged with the
        header's newline ("\\n\\n" for an answer opening with a newline) is supervised: it alone carries the
        answer's opening text."""
        ids: list[int] = []
        labels: list[int] = []
        video = [self.video_token_id] * video_tokens
        for role, text in [("system", self.system)] + self._messages(turns):
            body: list[int] = []
            for n, part in enumerate((role + "\n" + text).split(MEDIA_PLACEHOLDER)):
                body += (video if n else []) + self._text(part)
            message = [self.im_start] + body + [self.im_end] + self.nl
            answer = role == "assistant"
            if self.mask == "paper":
                keep = [answer or t in self.always for t in message]
            else:
                start = 1 + _common_prefix(body, self.header[role])
                keep = [answer and start <= i <= len(body) + 1 for i in range(len(message))]  # through <|im_end|>
            ids += message
            labels += [t if k else IGNORE for t, k in zip(message, keep)]
        if ids.count(self.video_token_id) != video_tokens:
            raise RefusedConversation("video_token_in_text", f"the text holds {self.tok.decode([self.video_token_id])}")
        labels = [IGNORE if t == self.video_token_id else label for t, label in zip(ids, labels)]
        return Encoded(ids, labels, video_tokens)

    def prompt(self, turns: list[dict[str, str]], video_tokens: int) -> list[int]:
        """The tokens a model answers from: the conversation so far, then the assistant header (evaluation)."""
        return self.encode(turns, video_tokens).input_ids + [self.im_start] + self.header["assistant"]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
