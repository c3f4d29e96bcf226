"""What one video frame costs in LLM tokens: the one definition the token budget, the loader and the model share.

The paper pools each frame's patch grid (27x27 from SigLIP at 384 px) bilinearly to 12x12 and adds one newline
token per row: 12 x 13 = 156 tokens a frame.
"""

VIDEO_POOL = 12


def frame_tokens(pool: int = VIDEO_POOL) -> int:
    """`pool` x `pool` pooled patches plus one newline token per row."""
    return pool * (pool + 1)


TOKENS_PER_FRAME = frame_tokens()
