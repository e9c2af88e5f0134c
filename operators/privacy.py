"""Keyed hashing of personal identifiers, and scrubbing of payloads kept for dead letters.

Raw emails and phone numbers never leave the edge: :class:`PiiHasher` turns them into a
keyed HMAC-SHA256 (truncated to 128 bits, hex) after normalisation, so the same person
gives the same token in every channel while the token reveals nothing without the key.

>>> h = PiiHasher(b"k" * 32)
>>> h.email(" Ana@Example.COM ") == h.email("ana@example.com")
True
>>> h.phone("+44 (0)20 7946-0958") == h.phone("+4402079460958")
True
>>> len(h.email("ana@example.com"))
32
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator

import orjson

#: Field names (lower case, letters and digits only) whose values are personal data whatever
#: their JSON type; a name that contains one of :data:`_PII_NAME_PARTS` counts too.
_EMAIL_NAMES = frozenset({"email", "mail", "emailaddress", "mailaddress", "courriel"})
_PHONE_NAMES = frozenset(
    {"phone", "tel", "telephone", "mobile", "msisdn", "cell", "cellphone", "fax", "gsm"}
)
_PII_NAME_PARTS = (("email", "email"), ("phone", "phone"), ("mobile", "phone"), ("msisdn", "phone"))
_NAME_CHARS = re.compile(r"[^a-z0-9]")
_EMAIL_RE = re.compile(rb"[^\s\"'<>@,;:\\]{1,64}@[^\s\"'<>@,;:\\]{1,255}")
_EMAIL_CHARS = frozenset(range(33, 127)) - frozenset(b"\"'<>@,;:\\[]{}()")
_PHONE_DIGITS = re.compile(r"[^0-9+]")
#: A phone number in free text: 9 to 15 digits, optionally a leading "+", single separators
#: (space, dot, dash, slash, brackets) between them; not part of a longer word or number,
#: nor of a "date time" such as 2024-05-01 10:00. Bounded repetition: linear, no blow-up.
_PHONE_TEXT = re.compile(
    rb"(?<![\w+/.-])\+?\(?\d(?:[ .()/-]{0,2}\d){8,14}(?![\w:])(?![.-]\d)", re.ASCII
)

_DIGITS = b"0123456789"
#: every name of _EMAIL_NAMES, _PHONE_NAMES and _PII_NAME_PARTS holds one of these
_WORDS = (b"mail", b"courriel", b"phone", b"mobile", b"msisdn", b"tel", b"fax", b"cell", b"gsm")
_DIGIT_RUN = re.compile(rb"\d[\d .()/-]{7}")
#: where the first phone number could begin: 9 digits, at most 2 separators between two
#: (a charset first: the regex engine scans for it fast, unlike _PHONE_TEXT's lookbehind)
_PHONE_QUICK = re.compile(rb"\d(?:[ .()/-]{0,2}\d){8}")
#: a run of the characters _PHONE_TEXT's lookbehind refuses before a number
_RUN = re.compile(rb"[\w+/.-]*", re.ASCII)


def _few_digits(raw: bytes) -> bool:
    """Fewer than 9 digits in all: no phone number can be there (C speed, any size)."""
    return len(raw) - len(raw.translate(None, _DIGITS)) < 9


def _maybe_pii(raw: bytes) -> bool:
    """Could these bytes hold anything to scrub? (Most dead letters hold none.) The same
    answer as one regex of the alternatives, several times faster on large payloads."""
    if b"@" in raw or b"\\u" in raw:
        return True
    low = raw.lower()
    if any(w in low for w in _WORDS):
        return True
    return not _few_digits(raw) and _DIGIT_RUN.search(raw) is not None


#: Bytes searched for phone numbers a block at a time in long inputs (see :func:`_phones`)
_BLOCK = 4096
_DIGIT_MASK = bytes(0x31 if 0x30 <= b <= 0x39 else 0x2E for b in range(256))


def _phones(raw: bytes) -> Iterator[re.Match[bytes]]:
    """The phone numbers in ``raw`` (:data:`_PHONE_TEXT`'s matches, in order, as its ``sub``
    over the whole bytes finds them); linear.

    Every phone number's first digit starts a :data:`_PHONE_QUICK` match (its first 9
    digits), and the number itself starts at most 2 bytes earlier ("+("): the regex engine
    finds the candidates at C speed, and the full pattern is tried only there (its
    lookbehind, tried at every byte, is slow on large inputs). In a long input, a block
    whose bytes and the next 64 hold fewer than 9 digits cannot hold a candidate's first
    digit (a candidate spans at most 25 bytes): such blocks are not searched at all, so a
    270 KB value without digits costs a few translations, not a regex pass.
    """
    n = len(raw)
    pos = 0
    tried = -1  # the full pattern was tried at every position up to here
    #: "1" where raw has a digit (long inputs only): a block's digits are counted at C speed
    mask = raw.translate(_DIGIT_MASK) if n > 2 * _BLOCK else None
    for lo in range(0, n, _BLOCK):
        hi = lo + _BLOCK
        if mask is not None and mask.count(b"1", lo, hi + 64) < 9:
            continue  # no candidate starts here
        start = max(pos, lo)  # (a number may begin before the block: "+(" then its digits)
        while (q := _PHONE_QUICK.search(raw, start, hi + 64)) is not None and q.start() < hi:
            first = q.start()
            found = None
            for at in range(max(pos, tried + 1, first - 2), first + 1):
                found = _PHONE_TEXT.match(raw, at)
                if found is not None:
                    break
            tried = first
            if found is None:
                # None starts inside this run of word characters (the lookbehind): skip it.
                pos = start = _RUN.match(raw, first).end()  # type: ignore[union-attr]
                continue
            yield found
            pos = start = found.end()


_NOT_JSON = object()


def _parsed(raw: bytes) -> object:
    """``raw`` parsed, if it is JSON without escapes (:data:`_NOT_JSON` if not): a string's
    text is then its bytes."""
    if b"\\" in raw:
        return _NOT_JSON
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def _no_personal_names(doc: object) -> bool:
    """Does no field name of a parsed document (:func:`_parsed`) say personal data
    (:func:`pii_kind`)? Then the JSON-aware scrub of its bytes is the patterns over the
    whole bytes (:meth:`PiiHasher.scrub_bytes`): with no personal field, only emails and
    phone numbers are replaced, wherever they are; a string's text is its bytes when it has
    no escape; and neither pattern crosses a quote, so a string scrubbed on its own and the
    same bytes scrubbed in place come out the same. A C parse and a walk of the keys, much
    cheaper than the token scan (tested against the reference scrubber).

    >>> _no_personal_names(_parsed(b'{"event_time": "2026-12-02T09:35:22Z", "n": "a@b.co"}'))
    True
    >>> _no_personal_names(_parsed(b'{"Mobile": 1}')), _parsed(b'["a\\\\u0040b"]') is _NOT_JSON
    (False, True)
    """
    todo = [doc]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            for k in v:
                if _key_kind(orjson.dumps(k)) is not None:
                    return False
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return True


#: The next JSON token in a scan: a string's opening quote, a run of "{" or of "[", a run of
#: closing brackets, ":" or ",", a number.
_TOKEN = re.compile(rb'"|\{+|\[+|[}\]]+|[:,]|-?\d[\d.eE+-]*')
#: the rest of a string from its first backslash: escaped bytes skipped, to its closing quote
_ESCAPED_REST = re.compile(rb'(?:\\.[^"\\]*)*"?', re.DOTALL)


def _string_end(raw: bytes, pos: int, n: int) -> int:
    """Where the JSON string whose text starts at ``pos`` ends (past its closing quote; ``n``
    if it is left open). At memchr speed for the usual string without escapes."""
    q = raw.find(b'"', pos)
    b = raw.find(b"\\", pos, q if q >= 0 else n)
    if b < 0:
        return q + 1 if q >= 0 else n
    return _ESCAPED_REST.match(raw, b).end()  # type: ignore[union-attr]


def pii_kind(name: str) -> str | None:
    """``"email"`` or ``"phone"`` when a field of this name holds personal data.

    >>> pii_kind("Customer_E-Mail"), pii_kind("mobileNumber"), pii_kind("Tel"), pii_kind("hotel")
    ('email', 'phone', 'phone', None)
    """
    n = _NAME_CHARS.sub("", name.lower())
    if n in _EMAIL_NAMES:
        return "email"
    if n in _PHONE_NAMES:
        return "phone"
    for part, kind in _PII_NAME_PARTS:
        if part in n:
            return kind
    return None


def looks_personal(text: str) -> bool:
    """Does a short free-text value (a category) hold an email address or a phone number?

    >>> looks_personal("garden tools"), looks_personal("ana@example.com")
    (False, True)
    >>> looks_personal("call +44 7700 900123"), looks_personal("size 2024-05")
    (True, False)
    """
    raw = text.encode("utf-8", "surrogatepass")
    if b"@" in raw and _EMAIL_RE.search(raw):
        return True
    return not _few_digits(raw) and _PHONE_TEXT.search(raw) is not None


#: A phone number in international notation ("+" and 8 to 15 digits, single separators).
_PHONE_INTL = re.compile(rb"\+\(?\d(?:[ .()/-]{0,2}\d){7,14}", re.ASCII)


def holds_contact(value: str) -> bool:
    """Does an identifier (a SKU, a location, order, session or loyalty id) hold an email
    address or an international phone number? Identifiers are kept in clear, so such a
    value must not reach Redis. Bare digit strings pass: EAN codes, loyalty numbers and
    card tokens look the same as a national phone number (a phone belongs in
    ``customer.phone``, which is hashed).

    >>> holds_contact("SKU-123"), holds_contact("4006381333931"), holds_contact("a.b@x.org")
    (False, False, True)
    >>> holds_contact("+34 612 345 678"), holds_contact("loyalty+44(0)7700900123")
    (True, True)
    >>> holds_contact("size+2"), holds_contact("@home")
    (False, False)
    """
    if "@" not in value and "+" not in value:
        return False
    raw = value.encode("utf-8", "surrogatepass")
    if b"@" in raw and _EMAIL_RE.search(raw):
        return True
    return b"+" in raw and _PHONE_INTL.search(raw) is not None


def hmac_sha256_states(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256's (RFC 2104) inner and outer hash states for ``key``, its two padded
    blocks hashed once: a MAC is then ``outer.copy()`` updated with the digest of
    ``inner.copy()`` updated with the message, two copies of a hash state instead of the
    key's padding and hashing (and OpenSSL's digest lookup) on every call.

    >>> import hmac
    >>> inner, outer = hmac_sha256_states(b"k" * 100)
    >>> i = inner.copy(); i.update(b"msg"); o = outer.copy(); o.update(i.digest())
    >>> o.digest() == hmac.digest(b"k" * 100, b"msg", "sha256")
    True
    """
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in block)),
        hashlib.sha256(bytes(b ^ 0x5C for b in block)),
    )


class PiiHasher:
    """Keyed HMAC of personal identifiers. The key comes from the environment, never code."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the PII key must be at least 16 bytes long")
        # HMAC-SHA256 (RFC 2104) with the key's two padded blocks hashed once, here: each
        # token then costs two copies of a hash state instead of OpenSSL's one-shot HMAC,
        # which looks the digest up on every call (0.7 against 1.7 µs on this machine).
        # The tokens are the same: the doctest below and tests/test_privacy.py check it.
        self._inner, self._outer = hmac_sha256_states(key)

    def _mac(self, kind: bytes, value: str) -> str:
        """HMAC-SHA256 of ``kind``, a NUL and ``value``, first 128 bits in hex.

        >>> import hmac
        >>> key = b"k" * 100
        >>> PiiHasher(key)._mac(b"email", "a@b.co") == hmac.digest(
        ...     key, b"email\\x00a@b.co", "sha256")[:16].hex()
        True
        """
        inner = self._inner.copy()
        inner.update(kind + b"\x00" + value.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:16].hex()

    def email(self, raw: str) -> str:
        """HMAC of a trimmed, lower-cased email address."""
        return self._mac(b"email", raw.strip().lower())

    def phone(self, raw: str) -> str:
        """HMAC of a phone number reduced to digits (and a leading ``+``)."""
        return self._mac(b"phone", _PHONE_DIGITS.sub("", raw))

    def token(self, kind: str, raw: str) -> str:
        """The replacement of a personal value in kept payloads: ``hmac:<token>``."""
        return "hmac:" + (self.email(raw) if kind == "email" else self.phone(raw))

    def scrub_text(self, text: str) -> str:
        """``text`` with every email address and phone number replaced by its token.

        >>> h = PiiHasher(b"k" * 32)
        >>> out = h.scrub_text("call +44 7700 900123 or mail ana@example.com, order 12345")
        >>> "7700" in out, "ana@" in out, out.endswith("order 12345")
        (False, False, True)
        """
        raw = text.encode("utf-8", "surrogatepass")
        out = self.scrub_bytes(raw)
        return text if out == raw else out.decode("utf-8", "replace")

    def scrub_bytes(self, raw: bytes) -> bytes:
        """Email-like runs and phone-like numbers in any bytes, parsed or not; linear.

        >>> h = PiiHasher(b"k" * 32)
        >>> b"ana@example.com" in h.scrub_bytes(b'{"email":"ana@example.com",')
        False
        >>> b"7946" in h.scrub_bytes(b'{"phone": "0207 946 0958", oops')
        False
        """
        if b"@" in raw:
            raw = self._scrub_emails(raw)
        if _few_digits(raw):  # a phone number has 9 digits at least
            return raw
        out = bytearray()
        copied = 0
        for found in _phones(raw):
            out += raw[copied : found.start()]
            out += self.token("phone", found.group().decode()).encode()
            copied = found.end()
        if not copied:
            return raw
        out += raw[copied:]
        return bytes(out)

    def scrub_payload(self, raw: bytes) -> bytes:
        """The bytes of a rejected payload with personal data replaced, for dead letters.

        JSON-aware where the bytes are JSON, best effort where they are not, and linear in
        the input whatever its nesting (no recursion, no parse tree): the value of a field
        whose name says email or phone (:func:`pii_kind`) is replaced whatever its type
        (string, number, or everything inside a list or object); emails and phone numbers
        are replaced wherever they appear, in keys, values, escaped or not. Bytes without
        personal data come back unchanged.

        >>> h = PiiHasher(b"k" * 32)
        >>> out = h.scrub_payload(b'{"Phone": 447700900123, "x": ["a@b.co", {"e-mail": [1]}]}')
        >>> b"447700900123" in out, b"a@b.co" in out, out.count(b"hmac:")
        (False, False, 3)
        >>> h.scrub_payload(b'{"sku": "A1", "qty": 2}')
        b'{"sku": "A1", "qty": 2}'

        Speed: compact JSON without escapes (a payload that is its own ``orjson``
        encoding: what most producers write) is parsed in C, its personal fields replaced
        on the parsed values and the patterns run over the re-encoded bytes
        (:meth:`_personal_replaced`): about half the token scan's time for a 1.2 KB event
        with an email and a phone field (29-72 against 59-119 µs here, three alternating
        runs on a noisy machine). Other JSON without a personal
        field name gets the patterns only (:func:`_no_personal_names`). The rest goes through the
        token scan: a run of brackets is one step, a string's end is found with
        ``bytes.find``, a string is decoded only when it could hold something to replace,
        and the kinds of plain field names are cached; 10,000 nested brackets cost about as
        much as one token. ``tests/test_privacy.py`` holds every path's output to the
        plainer first version's, byte for byte.
        """
        doc = _parsed(raw)
        if doc is not _NOT_JSON:
            try:  # compact JSON, as most producers write it?
                compact = orjson.dumps(doc) == raw
            except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
                compact = False
            if compact:
                try:
                    return self.scrub_bytes(orjson.dumps(self._personal_replaced(doc, None)))
                except RecursionError:  # deeper than Python's stack: the scan below
                    pass
            elif _no_personal_names(doc):
                return self.scrub_bytes(raw)
        if not _maybe_pii(raw):
            return raw
        out = bytearray()
        copied = 0  # raw[:copied] is in out
        #: per open container: (is object, PII kind of the container, expecting a key,
        #: PII kind of the current key); immutable, so a run of brackets shares one
        stack: list[tuple[bool, str | None, bool, str | None]] = []
        top: tuple[bool, str | None, bool, str | None] | None = None
        pos, n = 0, len(raw)
        search = _TOKEN.search
        while (m := search(raw, pos)) is not None:
            start = m.start()
            pos = m.end()
            c = raw[start]
            if c == 0x22:  # a string (unterminated: to the end)
                pos = _string_end(raw, pos, n)
                tok = raw[start:pos]
                if top is not None and top[0] and top[2]:  # an object key
                    top = stack[-1] = (True, top[1], True, _key_kind(tok))
                    new = self._scrub_string(tok)
                else:
                    kind = _value_kind(top)
                    text = _json_string(tok) if kind is not None else None
                    if text is not None:
                        new = _quoted(self.token(kind, text))  # type: ignore[arg-type]
                    else:
                        new = self._scrub_string(tok)
                if new is not tok:
                    out += raw[copied:start]
                    out += new
                    copied = pos
            elif c == 0x7B or c == 0x5B:  # a run of "{" or of "[": one entry, shared
                obj = c == 0x7B
                entry = (obj, _value_kind(top), obj, None)
                stack.extend([entry] * (m.end() - start))
                top = entry
            elif c == 0x7D or c == 0x5D:  # a run of closing brackets
                del stack[start - m.end() :]
                top = stack[-1] if stack else None
            elif c == 0x3A:  # ':'
                if top is not None:
                    top = stack[-1] = (top[0], top[1], False, top[3])
            elif c == 0x2C:  # ','
                if top is not None and top[0]:
                    top = stack[-1] = (True, top[1], True, None)
            else:  # a number
                kind = _value_kind(top)
                if kind is not None:
                    out += raw[copied:start]
                    out += _quoted(self.token(kind, m.group().decode()))
                    copied = pos
        out += raw[copied:]
        # Whatever the JSON scan could not see (broken JSON, bare text) gets the patterns.
        return self.scrub_bytes(bytes(out))

    def _personal_replaced(self, v: object, kind: str | None) -> object:
        """A parsed document (JSON without escapes) with the values of personal fields
        replaced by their tokens, as the token scan replaces them; ``kind``: the PII kind
        the value inherits from its field name or its container. For a document that is its
        own ``orjson`` encoding, :meth:`scrub_bytes` of the encoded result is the scan's
        output: the rest of the scan (emails and phone numbers in the other strings, each
        scrubbed on its own) is what the patterns over the whole bytes do, as
        :func:`_no_personal_names` says (tested against the reference scrubber).

        >>> h = PiiHasher(b"k" * 32)
        >>> raw = b'{"sku":"A1","customer":{"email":"ana@example.com","phone":[447700900123]}}'
        >>> out = h.scrub_bytes(orjson.dumps(h._personal_replaced(orjson.loads(raw), None)))
        >>> out == h.scrub_payload(raw), out.count(b"hmac:"), b"ana@" in out
        (True, 2, False)
        """
        if isinstance(v, dict):
            return {
                k: self._personal_replaced(x, _key_kind(orjson.dumps(k)) or kind)
                for k, x in v.items()
            }
        if isinstance(v, list):
            return [self._personal_replaced(x, kind) for x in v]
        if kind is None or v is None or isinstance(v, bool):
            return v
        if isinstance(v, str):
            return self.token(kind, v)
        return self.token(kind, orjson.dumps(v).decode())  # a number, as written

    def _scrub_string(self, tok: bytes) -> bytes:
        """A JSON string token with emails/phones replaced; ``tok`` itself if none (or if it
        is not a valid JSON string: the patterns on the whole bytes see it then)."""
        if b"@" not in tok and b"\\" not in tok and _few_digits(tok):
            return tok  # nothing an email or a phone number needs (escapes: decoded below)
        text = _json_string(tok)
        if text is None:
            return tok
        clean = self.scrub_text(text)
        return tok if clean == text else _quoted(clean)

    def _scrub_emails(self, raw: bytes) -> bytes:
        """Replace every ``local@domain`` run; linear in the input (no regex backtracking)."""
        at = raw.find(b"@")
        if at < 0:
            return raw
        out = bytearray()
        pos = 0
        n = len(raw)
        while at >= 0:
            lo = at
            while lo > pos and at - lo < 64 and raw[lo - 1] in _EMAIL_CHARS:
                lo -= 1
            hi = at + 1
            while hi < n and hi - at < 255 and raw[hi] in _EMAIL_CHARS:
                hi += 1
            if lo < at and hi > at + 1:
                out += raw[pos:lo]
                addr = raw[lo:hi].decode("utf-8", "replace")
                out += b"hmac:" + self.email(addr).encode()
                pos = hi
            at = raw.find(b"@", max(hi, at + 1))
        out += raw[pos:]
        return bytes(out)


def _value_kind(top: tuple[bool, str | None, bool, str | None] | None) -> str | None:
    """PII kind of the next value: its key's in an object, else its container's."""
    if top is None:
        return None
    return top[3] or top[1] if top[0] else top[1]


@functools.lru_cache(maxsize=2048)
def _key_kind_cached(tok: bytes) -> str | None:
    text = _json_string(tok)
    return pii_kind(text) if text is not None else None


def _key_kind(tok: bytes) -> str | None:
    """The PII kind a field name (a JSON string token) gives its value. The few names a
    contract has are cached; long ones (hostile) and any that could hold an email address
    or a phone number are not (personal data is not kept, not even in memory)."""
    if len(tok) <= 64 and b"@" not in tok and b"\\" not in tok and _few_digits(tok):
        return _key_kind_cached(tok)
    text = _json_string(tok)
    return pii_kind(text) if text is not None else None


def _json_string(tok: bytes) -> str | None:
    """The text of a JSON string token, or None if it is not a valid one."""
    try:
        v = orjson.loads(tok)
    except orjson.JSONDecodeError:
        return None
    return v if isinstance(v, str) else None


def _quoted(text: str) -> bytes:
    return orjson.dumps(text)
