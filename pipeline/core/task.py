"""The unit of work that flows through the stage graph: one source video.

A `VideoTask` travels between Ray stages as one flat row (`to_row` /
`from_row`) with Arrow-friendly columns: strings for the key, source, error,
JSON metadata and the harness's measurements, and one `list<binary>` column of
JPEG bytes per frame set. Raw pixel arrays never cross a stage boundary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.records import Rejection, VideoMetrics

FRAMES_PREFIX = "frames_"


def signed_source(url: str) -> dict[str, str]:
    """A task's `source` (and `fetch_url` when the URL carries a secret) for a source as given."""
    from pipeline.core.redact import public_url

    public = public_url(url)
    return {"source": public, "fetch_url": url if public != url else ""}


@dataclass
class VideoTask:
    key: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able: manifest fields, probe, decode, tokens ...
    frames: dict[str, list[bytes]] = field(default_factory=dict, repr=False)  # frame set name -> JPEGs in time order
    error: Rejection | None = None  # once rejected: the same record a source's reject is
    source_row: int = -1  # the input row it came from (its first record) and how many rows it stands for
    source_rows: int = 1
    metrics: VideoMetrics = field(default_factory=VideoMetrics, repr=False)
    # A signed URL as given (presigned, SAS, user:password): only the fetch stage reads it, then it is dropped.
    # `source` is its public form (`pipeline.core.redact.public_url`), the one every table and sample names.
    fetch_url: str = field(default="", repr=False)

    @property
    def rejected(self) -> bool:
        return self.error is not None

    def reject(self, stage: str, reason: str, detail: str = "") -> "VideoTask":
        """Mark the video rejected; later stages pass it through untouched and it ends in the rejects table."""
        self.error = Rejection(self.source, stage, str(reason), detail[:2000], self.key, self.source_row, self.source_rows)
        self.frames = {name: [] for name in self.frames}
        return self

    def to_row(self, set_names: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {
            "key": self.key,
            "source": self.source,
            "error": json.dumps(self.error.to_dict()) if self.error else "",
            "meta": json.dumps(self.meta),
            "source_row": self.source_row,
            "source_rows": self.source_rows,
            "metrics": json.dumps(self.metrics.to_dict()),
            "fetch_url": self.fetch_url,
        }
        for name in set_names:
            row[FRAMES_PREFIX + name] = list(self.frames.get(name, []))
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "VideoTask":
        frames = {
            k[len(FRAMES_PREFIX) :]: [bytes(b) for b in (v if v is not None else [])]
            for k, v in row.items()
            if k.startswith(FRAMES_PREFIX)
        }
        error = row.get("error") or ""
        return cls(
            key=str(row["key"]),
            source=str(row["source"]),
            meta=json.loads(row.get("meta") or "{}"),
            frames=frames,
            error=Rejection.from_dict(json.loads(error)) if error else None,
            source_row=int(row.get("source_row", -1)),
            source_rows=int(row.get("source_rows", 1)),
            metrics=VideoMetrics.from_dict(json.loads(row.get("metrics") or "{}")),
            fetch_url=str(row.get("fetch_url") or ""),
        )
