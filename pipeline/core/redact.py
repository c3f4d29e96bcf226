"""Secrets out of every file a run writes: `--api-key X` in argument lists, values of secret-named keys, URLs'
passwords and signatures."""

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
    if isinstance(value, str) and "://" in value:
        return scrub_urls(value)  # a signed manifest URL, a URL with a password
    return value


# Query parameters that sign a URL (S3 / GCS presigned, Azure SAS, CloudFront): they change with every signing and
# grant access, so they are dropped from every URL a run writes or keys by; the fetch still uses the whole URL.
_SIGNING = re.compile(r"^(x-amz-.*|x-goog-.*|sig|se|st|sp|sv|sr|spr|ss|srt|si|skoid|sktid|skt|ske|sks|skv|"
                      r"signature|expires|key-pair-id|policy)$", re.IGNORECASE)
_SIGNED_PARAM = re.compile(r"(?i)([?&](?:x-amz-[a-z-]+|x-goog-[a-z-]+|sig|signature|policy|key-pair-id|token|access_token)=)"
                           r"(?!\*\*\*)[^&\s'\"<>)]*")
_URL = re.compile(r"\b(?:https?|s3|gs|az|abfs)://[^\s'\"<>]+")


def public_url(url: str) -> str:
    """`url` as a run may write it: no password in it, no signing parameters, secret-named parameters as ***.

    Two presignings of one object give the same public URL, so its key stays stable across runs."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{REDACTED}@{host}" if ":" in user else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        kept = [(k, REDACTED if _SECRET.search(k) or k.lower() in ("key", "apikey", "code") else v)
                for k, v in pairs if not _SIGNING.match(k)]
        query = urlencode(kept, safe="*/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub_urls(text: str) -> str:
    """Every URL in a free text (an error's detail, a log line) as `public_url` writes it."""
    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        end = len(url.rstrip(".,:;)]"))  # a sentence's punctuation after the URL
        return public_url(url[:end]) + url[end:]

    if "://" in text:
        text = _URL.sub(one, text)
    return _SIGNED_PARAM.sub(lambda m: m.group(1) + REDACTED, text)  # a bare path and query (a client's error)
