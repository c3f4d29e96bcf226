"""Secrets out of every file a run writes: `--api-key X` in argument lists, values of secret-named keys."""

from __future__ import annotations

import re
from typing import Any

# A name part (between - or _) that says secret: `api-key`, `HF_TOKEN`, `auth_token`, `db_password` (not `max_tokens`).
_SECRET = re.compile(r"(^|[-_])(api[-_]?key|token|secret|passw(or)?d|credentials?|auth|authorization)([-_]|$)",
                     re.IGNORECASE)


def _secret_name(name: str) -> bool:
    return bool(_SECRET.search(name)) and not name.lower().endswith("_env")  # `api_key_env` names a variable


REDACTED = "***"


def redacted(value: Any) -> Any:
    """A config's data with secret-looking values replaced: `--api-key X` in an argument list, and values of
    keys (env, engine flags) whose name says key, token, secret, password, credential or auth."""
    if isinstance(value, dict):
        return {k: REDACTED if _secret_name(str(k)) and isinstance(v, str) and v else redacted(v)
                for k, v in value.items()}
    if isinstance(value, list):
        out, hide_next = [], False
        for item in value:
            text = str(item)
            if hide_next:
                out.append(REDACTED)
                hide_next = False
            elif text.startswith("-") and _SECRET.search(text):
                flag, eq, _ = text.partition("=")
                out.append(f"{flag}={REDACTED}" if eq else item)
                hide_next = not eq
            else:
                out.append(redacted(item))
        return out
    return value
