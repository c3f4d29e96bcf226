"""Tiny, local, random-initialised parts for tests and the CPU debug preset: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]


def build_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on a few sentences, with Qwen's chat tokens and `<image>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "You are a helpful assistant.", "What happens in the video?", "A person walks across the room.",
        "How many objects are visible?", "The camera pans to the left while the car drives away.",
        "system user assistant", "colour bars, a test pattern, moving gradients, numbers and a clock",
    ] * 20
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<image>", "<video>"])
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def build_model(tokenizer: object, pool: int = 4, seed: int = 0):
    """The tiny random VideoLlava matching `build_tokenizer` (video token `<video>`, image token `<image>`)."""
    import torch

    from train.model import VideoLlava, tiny_config

    torch.manual_seed(seed)
    config = tiny_config(len(tokenizer), tokenizer.convert_tokens_to_ids("<video>"),
                         tokenizer.convert_tokens_to_ids("<image>"), pool=pool)
    return VideoLlava(config).eval()
