"""Frame-identity codes: a frame number drawn into the pixels in large blocks, and read back from any copy.

A 6x6 grid of black or white cells fills the frame. Four corner cells are
fixed (top row white, bottom row black), so the reader can tell which way the
frame is turned; the other 32 cells carry a 20-bit frame number and a 12-bit
check that makes a misread show up as `None` rather than as another number.
Cells are a sixth of the frame each way, so the code survives JPEG at any
stored quality, any aspect change (square 384x384) and downscaling to a
caption set's size. Used by the frame-identity fixtures and tests.
"""

from __future__ import annotations

import numpy as np

GRID = 6
INDEX_BITS = 20
CHECK_BITS = 12
MAX_INDEX = (1 << INDEX_BITS) - 1
_CORNERS = {(0, 0): 1, (0, GRID - 1): 1, (GRID - 1, 0): 0, (GRID - 1, GRID - 1): 0}
_DATA_CELLS = [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in _CORNERS]
WHITE, BLACK = 235, 16  # video-range luma


def _check(index: int) -> int:
    return ((index * 2654435761) >> 11) & ((1 << CHECK_BITS) - 1)


def code_bits(index: int) -> np.ndarray:
    """The 6x6 cell grid (1 = white) that encodes `index`."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"frame index {index} outside 0..{MAX_INDEX}")
    word = index | (_check(index) << INDEX_BITS)
    grid = np.zeros((GRID, GRID), dtype=np.uint8)
    for (r, c), v in _CORNERS.items():
        grid[r, c] = v
    for bit, (r, c) in enumerate(_DATA_CELLS):
        grid[r, c] = (word >> bit) & 1
    return grid


def draw(index: int, width: int, height: int) -> np.ndarray:
    """A height x width uint8 luma frame showing `index` (cells stretched to fill the frame)."""
    grid = code_bits(index)
    rows = np.minimum(np.arange(height) * GRID // height, GRID - 1)
    cols = np.minimum(np.arange(width) * GRID // width, GRID - 1)
    return np.where(grid[rows][:, cols] == 1, WHITE, BLACK).astype(np.uint8)


def _cell_means(luma: np.ndarray) -> np.ndarray:
    h, w = luma.shape
    out = np.zeros((GRID, GRID))
    for r in range(GRID):
        for c in range(GRID):
            y0, y1 = (r * h) // GRID, ((r + 1) * h) // GRID
            x0, x1 = (c * w) // GRID, ((c + 1) * w) // GRID
            my, mx = max(1, (y1 - y0) // 4), max(1, (x1 - x0) // 4)  # the cell's centre half: edges blur
            out[r, c] = luma[y0 + my : max(y0 + my + 1, y1 - my), x0 + mx : max(x0 + mx + 1, x1 - mx)].mean()
    return out


def _as_luma(frame: np.ndarray) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float64).mean(axis=2)
    return arr.astype(np.float64)


def read(frame: np.ndarray) -> tuple[int, int] | None:
    """(frame index, clockwise turn in degrees the frame shows) or None when no valid code is found.

    A turn of 0 means the frame is upright as drawn; 90 means it shows the
    drawing turned a quarter clockwise, and so on.
    """
    cells = _cell_means(_as_luma(frame)) >= (WHITE + BLACK) / 2
    for turn in (0, 90, 180, 270):
        grid = np.rot90(cells, k=turn // 90)  # undo a clockwise turn of `turn` degrees
        if any(bool(grid[r, c]) != bool(v) for (r, c), v in _CORNERS.items()):
            continue
        word = sum(int(grid[r, c]) << bit for bit, (r, c) in enumerate(_DATA_CELLS))
        index = word & MAX_INDEX
        if word >> INDEX_BITS == _check(index):
            return index, turn
    return None


def read_index(frame: np.ndarray) -> int | None:
    """The index an upright frame shows, or None (no code, or a turned frame)."""
    found = read(frame)
    return found[0] if found is not None and found[1] == 0 else None
