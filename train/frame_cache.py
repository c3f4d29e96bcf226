"""Decoded frames kept by a loader worker, so items that follow each other on one video decode its frames once."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class FrameCache:
    """A loader worker's decoded frames by (video, frame positions), least recently used out past `max_bytes`;
    the newest entry stays whatever its size, so a video's conversations in a row decode its frames once."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], Any] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def _size(value: Any) -> int:
        return 0 if value is None else value.numel() * value.element_size()

    def get(self, key: tuple[str, tuple[int, ...]]) -> tuple[bool, Any]:
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return True, self._entries[key]
        self.misses += 1
        return False, None

    def put(self, key: tuple[str, tuple[int, ...]], value: Any) -> None:
        self._entries[key] = value
        self._bytes += self._size(value)
        while len(self._entries) > 1 and self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= self._size(old)
