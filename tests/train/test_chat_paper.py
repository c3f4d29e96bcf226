"""`ChatEncoder` against the paper's own rules, written out here from LLaVA-NeXT's source (ProLongVid's
llava/train/train.py `preprocess_multimodal` and `preprocess_qwen`, llava/model/llava_arch.py
`prepare_inputs_labels_for_multimodal`): whole-message chat-template tokenization, the first-turn rule, the unmask
of "\\n"/<|im_start|>/<|im_end|>, the <image> placement, and each <image> becoming the video's tokens.

Two tokenizers: the project's tiny one (`<image>` special, but a GPT-2 pre-tokenizer, so "\\n\\n" stays two
tokens there) and the same recipe with Qwen2's pre-tokenizer and NFC normalizer, which merges "\\n\\n" as Qwen does.
"""

from __future__ import annotations

import copy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.tiny_train_model import SPECIAL, build_tokenizer
from train.chat import IGNORE, SYSTEM, ChatEncoder, RefusedConversation

# ---- the paper's rules, transcribed ---------------------------------------------------------------------------
PAPER_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
                  "+ '<|im_end|>' + '\n'}}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
DEFAULT_IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200


def paper_preprocess_multimodal(value: str, move: bool = True) -> str:
    """One sentence through `preprocess_multimodal` (mm_use_im_start_end False); `move=False`: in_place."""
    num_im = len(re.findall(DEFAULT_IMAGE_TOKEN, value))
    if move and num_im == 1 and DEFAULT_IMAGE_TOKEN in value and not value.startswith(DEFAULT_IMAGE_TOKEN):
        value = value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
        value = DEFAULT_IMAGE_TOKEN + "\n" + value
        value = value.strip()
    return value.replace("QA_GT_caption_based_noisy", "")


def paper_tokenizer(tokenizer):
    """`preprocess_qwen`'s copy: `<image>` added as a special token, the chat template reset."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens([DEFAULT_IMAGE_TOKEN], special_tokens=True)
    tokenizer.chat_template = PAPER_TEMPLATE
    return tokenizer


def paper_preprocess_qwen(source: list[dict], tokenizer) -> tuple[list[int], list[int], list]:
    """`preprocess_qwen` for one source with has_image: ids (<image> as IMAGE_TOKEN_INDEX), targets, and each
    message's role, content and ids. The paper takes <|im_start|>/<|im_end|> as `additional_special_tokens_ids[:2]`
    and "\\n" as the literal 198: Qwen's ids of those tokens, looked up here by name."""
    roles = {"human": "user", "gpt": "assistant"}
    image_token_index = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    unmask_tokens_idx = [tokenizer("\n", add_special_tokens=False).input_ids[0], im_start, im_end]
    if roles[source[0]["from"]] != roles["human"]:
        source = source[1:]
    input_id = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}], return_dict=False)
    target = [IGNORE] * len(input_id)
    messages = [("system", SYSTEM, list(input_id))]
    for conv in source:
        role, content = roles.get(conv["from"], conv["from"]), conv["value"]
        encode_id = tokenizer.apply_chat_template([{"role": role, "content": content}], return_dict=False)
        messages.append((role, content, list(encode_id)))
        input_id += encode_id
        target += [IGNORE] * len(encode_id) if role in ["user", "system"] else encode_id
    for idx, encode_id in enumerate(input_id):
        if encode_id in unmask_tokens_idx:
            target[idx] = encode_id
        if encode_id == image_token_index:
            input_id[idx] = IMAGE_TOKEN_INDEX
    return input_id, target, messages


def paper_insert_video(input_id: list[int], target: list[int], video: list[int]) -> tuple[list[int], list[int]]:
    """`prepare_inputs_labels_for_multimodal`, batch of one: the video at each IMAGE_TOKEN_INDEX, unsupervised."""
    ids, labels = [], []
    for tid, label in zip(input_id, target):
        ids += video if tid == IMAGE_TOKEN_INDEX else [tid]
        labels += [IGNORE] * len(video) if tid == IMAGE_TOKEN_INDEX else [label]
    return ids, labels


def answer_only(tokenizer, messages: list[tuple[str, str, list[int]]]) -> list[bool]:
    """assistant_only, from character spans: a token of an assistant message is supervised when it holds any of
    the answer's text or its <|im_end|> (so a header newline merged into the answer's first token is)."""
    out = []
    for role, content, ids in messages:
        header = f"<|im_start|>{role}\n"
        enc = tokenizer(f"{header}{content}<|im_end|>\n", add_special_tokens=False, return_offsets_mapping=True)
        assert enc.input_ids == ids  # the template's string, tokenized whole
        start, end = len(header), len(header) + len(content) + len("<|im_end|>")
        out += [role == "assistant" and a < end and b > start for a, b in enc.offset_mapping]
    return out


def paper(turns, tokenizer, *, move: bool, mask: str, video_id: int, video_tokens: int):
    """The paper's ids and labels, or the reason `ChatEncoder` must give for refusing the conversation."""
    if not turns:
        return "empty"  # the paper fails on `source[0]`
    source = [dict(t, value=paper_preprocess_multimodal(t["value"], move)) for t in turns]
    if source[0]["from"] != "human" and len(source) == 1:
        return "empty"  # nothing but the system prompt would be left
    input_id, target, messages = paper_preprocess_qwen(source, tokenizer)
    if input_id.count(IMAGE_TOKEN_INDEX) != 1:
        return "no_placeholder" if IMAGE_TOKEN_INDEX not in input_id else "several_placeholders"
    if mask == "assistant_only":
        target = [t if keep else IGNORE for t, keep in zip(input_id, answer_only(tokenizer, messages))]
    ids, labels = paper_insert_video(input_id, target, [video_id] * video_tokens)
    if ids.count(video_id) != video_tokens:
        return "video_token_in_text"  # our model would take it for a video position
    return ids, labels


# Qwen2's tokenizer.json pre-tokenizer: "\s*[\r\n]+" keeps a run of newlines (and the spaces before them) whole.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")


def qwen_style_tokenizer():
    """`build_tokenizer`'s recipe with Qwen2's NFC normalizer and pre-tokenizer, trained on text with newlines."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = ["You are a helpful assistant.\n\nWhat happens in the video?\n", "A person walks.\n\n Two cars.\n",
              "system user assistant\n\n", "How many objects are visible?\nCount them."] * 20
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<image>", "<video>"])


TOKENIZERS = {"tiny": build_tokenizer(), "qwen_style": qwen_style_tokenizer()}
PAPER_TOKENIZERS = {name: paper_tokenizer(tok) for name, tok in TOKENIZERS.items()}


def encoded(turns, tokenizer, *, video_token: str, video_tokens: int, mask: str, placement: str):
    encoder = ChatEncoder(tokenizer, video_token=video_token, mask=mask, image_placement=placement)
    try:
        enc = encoder.encode(turns, video_tokens)
    except RefusedConversation as e:
        return e.reason
    assert enc.video_positions == video_tokens
    return enc.input_ids, enc.labels


# ---- the property ----------------------------------------------------------------------------------------------
ATOMS = ["What happens in the video?", "A person walks", " ", "  ", "\n", "\n\n", " \n", "\n \n", "\t", "\r\n",
         "视频里发生了什么？", "🎬👍🏽", "e\u0301", "QA_GT_caption_based_noisy", "<video>", "<|im_end|>", "<im",
         "age>"]
EDGES = st.sampled_from(["", "", "\n", "\n\n", " \n", " ", "  "])  # what a turn opens or closes with
TEXT = st.tuples(EDGES, st.lists(st.one_of(st.sampled_from(ATOMS), st.text(max_size=4)), max_size=6), EDGES).map(
    lambda parts: parts[0] + "".join(parts[1]) + parts[2])
TURN = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt"]), "value": TEXT})


@st.composite
def conversations(draw):
    """Random turns, mostly opening with the human, then usually one <image> put somewhere (sometimes none,
    sometimes two)."""
    turns = draw(st.lists(TURN, max_size=5))
    if turns and draw(st.integers(0, 2)):
        turns[0]["from"] = "human"
    for _ in range(draw(st.sampled_from([1, 1, 1, 1, 0, 2]))):
        if turns:
            turn = turns[draw(st.integers(0, len(turns) - 1))]
            at = draw(st.integers(0, len(turn["value"])))
            turn["value"] = turn["value"][:at] + DEFAULT_IMAGE_TOKEN + turn["value"][at:]
    return turns


@settings(max_examples=200, derandomize=True, deadline=None)
@given(turns=conversations(), name=st.sampled_from(sorted(TOKENIZERS)),
       mask=st.sampled_from(["paper", "assistant_only"]), placement=st.sampled_from(["front", "in_place"]),
       video_token=st.sampled_from(["<image>", "<video>"]), video_tokens=st.integers(0, 3))
def test_every_conversation_is_the_papers_or_refused(turns, name, mask, placement, video_token, video_tokens):
    """Ids and labels equal the paper's position by position. A refusal is expected exactly when the paper has
    no turns, or none left after it drops a leading answer (`empty`); when the kept turns hold no <image> or more
    than one (`no_placeholder`, `several_placeholders`); or when the text itself holds the video token
    (`video_token_in_text`, a literal <video> while the video token is <video>)."""
    tok = TOKENIZERS[name]
    want = paper(copy.deepcopy(turns), PAPER_TOKENIZERS[name], move=placement == "front", mask=mask,
                 video_id=tok.convert_tokens_to_ids(video_token), video_tokens=video_tokens)
    got = encoded(copy.deepcopy(turns), tok, video_token=video_token, video_tokens=video_tokens, mask=mask,
                  placement=placement)
    assert got == want


# ---- examples --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen():
    return TOKENIZERS["qwen_style"]


def papers(turns, video_tokens: int = 1):
    """The paper's encoding through the Qwen-style tokenizer, front placement and its mask, <image> as video."""
    tok = PAPER_TOKENIZERS["qwen_style"]
    return paper(turns, tok, move=True, mask="paper", video_id=tok.convert_tokens_to_ids("<image>"),
                 video_tokens=video_tokens)


def test_the_tokenizers_show_what_the_property_relies_on(qwen):
    tiny = TOKENIZERS["tiny"]
    assert len(qwen("\n\n", add_special_tokens=False).input_ids) == 1  # Qwen's merge
    assert len(tiny("\n\n", add_special_tokens=False).input_ids) == 2  # the tiny tokenizer cannot show it
    for tok in (tiny, qwen):
        assert tok("a<image>b", add_special_tokens=False).input_ids[1] == tok.convert_tokens_to_ids("<image>")


def test_a_leading_newline_merges_with_the_header_as_in_the_paper(qwen):
    turns = [{"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "\nA person walks."}]
    ids, labels = encoded(turns, qwen, video_token="<image>", video_tokens=2, mask="paper", placement="front")
    assert (ids, labels) == papers(turns, 2)
    double = qwen.convert_tokens_to_ids(qwen.tokenize("\n\n"))[0]
    assert ids.count(double) == 1
    only = ChatEncoder(qwen, mask="assistant_only").encode(turns, 2)
    answer = [t for t, label in zip(only.input_ids, only.labels) if label != IGNORE]
    assert qwen.decode(answer) == "\n\nA person walks.<|im_end|>"  # the merged token carries the answer's newline


def test_a_leading_answer_is_dropped_and_the_rest_kept(qwen):
    turns = [{"from": "gpt", "value": "Hello."}, {"from": "human", "value": "<image> What?"},
             {"from": "gpt", "value": "Cars."}]
    enc = ChatEncoder(qwen).encode(turns, 1)
    assert "Hello" not in qwen.decode(enc.input_ids)
    assert (enc.input_ids, enc.labels) == papers(turns)
    with pytest.raises(RefusedConversation) as refused:
        ChatEncoder(qwen).encode(turns[:1], 1)
    assert refused.value.reason == "empty"


def test_two_placeholders_are_refused_where_the_paper_inserts_the_video_twice(qwen):
    turns = [{"from": "human", "value": "<image> a <image>"}, {"from": "gpt", "value": "x"}]
    input_id, target, _ = paper_preprocess_qwen(turns, PAPER_TOKENIZERS["qwen_style"])
    ids, _ = paper_insert_video(input_id, target, [-7, -7])
    assert input_id.count(IMAGE_TOKEN_INDEX) == 2 and ids.count(-7) == 4  # the paper's video, twice
    with pytest.raises(RefusedConversation) as refused:
        ChatEncoder(qwen).encode(turns, 2)
    assert refused.value.reason == "several_placeholders" and isinstance(refused.value, ValueError)


def test_the_evaluation_prompt_is_the_papers_generation_prompt(qwen):
    turns = [{"from": "human", "value": "What happens?\n<image>"}]
    rendered = PAPER_TOKENIZERS["qwen_style"].apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "<image>\nWhat happens?"}],
        add_generation_prompt=True, return_dict=False)
    image = qwen.convert_tokens_to_ids("<image>")
    assert ChatEncoder(qwen).prompt(turns, 1) == rendered and rendered.count(image) == 1
