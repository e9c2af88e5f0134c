"""The dead letters' payload scrubber as first written (``PiiHasher.scrub_payload`` before
it was made faster): one regex search per token, strings scanned for their end, a stack
entry per bracket, the phone pattern substituted over the whole bytes. The fast version must
give the same bytes for any input (``tests/test_privacy.py``)."""

from __future__ import annotations

import re
from typing import Any

from operators.privacy import (  # helpers the speed-up did not change
    _PHONE_QUICK,
    _PHONE_TEXT,
    PiiHasher,
    _few_digits,
    _json_string,
    _maybe_pii,
    _quoted,
    pii_kind,
)

_TOKEN = re.compile(rb'[{}\[\]:,"]|-?\d[\d.eE+-]*')
_STRING_END = re.compile(rb'["\\]')


def scrub_payload(hasher: PiiHasher, raw: bytes) -> bytes:
    if not _maybe_pii(raw):
        return raw
    out = bytearray()
    copied = 0  # raw[:copied] is in out
    #: per open container: [is object, PII kind of the container, expecting a key,
    #: PII kind of the current key]
    stack: list[list[Any]] = []
    pos, n = 0, len(raw)
    while pos < n:
        m = _TOKEN.search(raw, pos)
        if m is None:
            break
        start, c = m.start(), raw[m.start()]
        top = stack[-1] if stack else None
        if c == 0x22:  # a string: find its end, skipping escapes
            end = start + 1
            while True:
                e = _STRING_END.search(raw, end)
                if e is None:
                    end = n
                    break
                if raw[e.start()] == 0x5C:  # backslash: skip the escaped byte
                    end = e.start() + 2
                    continue
                end = e.end()
                break
            tok = raw[start:end]
            if top is not None and top[0] and top[2]:  # an object key
                text = _json_string(tok)
                top[3] = pii_kind(text) if text is not None else None
                new = _scrub_string(hasher, tok, text)
            else:
                kind = _value_kind(top)
                text = _json_string(tok)
                if kind is not None and text is not None:
                    new = _quoted(hasher.token(kind, text))
                else:
                    new = _scrub_string(hasher, tok, text)
            if new is not tok:
                out += raw[copied:start]
                out += new
                copied = end
            pos = end
            continue
        pos = m.end()
        if c in b"{[":
            stack.append([c == 0x7B, _value_kind(top), c == 0x7B, None])
        elif c in b"}]":
            if stack:
                stack.pop()
        elif c == 0x3A:  # ':'
            if top is not None:
                top[2] = False
        elif c == 0x2C:  # ','
            if top is not None and top[0]:
                top[2], top[3] = True, None
        else:  # a number
            kind = _value_kind(top)
            if kind is not None:
                out += raw[copied:start]
                out += _quoted(hasher.token(kind, m.group().decode()))
                copied = pos
    out += raw[copied:]
    # Whatever the JSON scan could not see (broken JSON, bare text) gets the patterns.
    return scrub_bytes(hasher, bytes(out))


def _scrub_string(hasher: PiiHasher, tok: bytes, text: str | None) -> bytes:
    """A JSON string token with emails/phones replaced; ``tok`` itself if none."""
    if text is None:  # not a valid JSON string: patterns on the bytes
        return tok
    if b"@" not in tok and b"\\" not in tok and _few_digits(tok):
        return tok  # nothing an email or a phone number needs (escapes: decoded below)
    clean = scrub_text(hasher, text)
    return tok if clean == text else _quoted(clean)


def _value_kind(top: list[Any] | None) -> str | None:
    if top is None:
        return None
    return top[3] or top[1] if top[0] else top[1]


def scrub_text(hasher: PiiHasher, text: str) -> str:
    raw = text.encode("utf-8", "surrogatepass")
    out = scrub_bytes(hasher, raw)
    return text if out == raw else out.decode("utf-8", "replace")


def scrub_bytes(hasher: PiiHasher, raw: bytes) -> bytes:
    if b"@" in raw:
        raw = hasher._scrub_emails(raw)
    if _few_digits(raw):
        return raw
    first = _PHONE_QUICK.search(raw)
    if first is None:
        return raw
    cut = max(0, first.start() - 3)
    tail = _PHONE_TEXT.sub(lambda m: hasher.token("phone", m.group().decode()).encode(), raw[cut:])
    return raw[:cut] + tail
