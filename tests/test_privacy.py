"""The dead letters' scrubber gives, byte for byte, what its first, plainer version gave
(``tests/reference_scrub.py``), on any bytes: JSON with personal data in odd places, broken
JSON, escapes, runs of brackets, noise. The fast version skips work (runs of brackets, string
ends found with ``bytes.find``, phone patterns tried only where one can start); this is what
shows it skips nothing that matters."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnicanal.tools.datagen import Generator
from operators.privacy import PiiHasher
from tests import reference_scrub as ref

H = PiiHasher(b"privacy-property-key-01")

FRAGMENTS = [
    b"{", b"}", b"[", b"]", b":", b",", b'"', b"\\", b'\\"', b"\\\\", b"\\u0040", b"\\n",
    b'"email"', b'"Phone"', b'"mobileNumber"', b'"E-Mail"', b'"sku"', b'"note"', b'"tel"',
    b"ana.lopez@example.com", b"+44 7700 900123", b"447700900123", b"(0)20 7946-0958",
    b"+34 (612) 345-678", b"2024-05-01 10:00", b"2026-12-02T00:58:45.112970Z", b"12345",
    b"-1.5e3", b"9" * 40, b"x", b" ", b"\n", b"\xff\xfe", b"a@", b"@b", b".", b"-", b"/",
    b"+", b"(", b")", b"e", b"null", b"true", b"\xc3\xa9",
]  # fmt: skip

noise = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.binary(max_size=4),
        st.from_regex(rb"\A[0-9 .()/+-]{1,24}\Z"),
        st.builds(lambda c, k: c * k, st.sampled_from([b"[", b"{", b"]", b"}", b"[{"]),
                  st.integers(1, 60)),
    ),
    max_size=40,
).map(b"".join)  # fmt: skip

keys = st.one_of(
    st.sampled_from(["email", "Phone", "mobileNumber", "E-Mail", "sku", "note", "a", "tel"]),
    st.text(max_size=8),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "ana.lopez@example.com",
            "+44 7700 900123",
            "call 0207 946 0958 today",
            "2024-05-01 10:00",
            "SKU-000000057",
            'a"b\\c',
            "x@y",
        ]
    ),
    st.text(max_size=12),
)
documents = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


@st.composite
def json_payloads(draw: st.DrawFn) -> bytes:
    raw = orjson.dumps(draw(documents))
    cut = draw(st.integers(0, len(raw)))
    return raw if draw(st.booleans()) else raw[:cut]  # whole or truncated


@settings(max_examples=600, deadline=None)
@given(st.one_of(noise, json_payloads()))
def test_the_fast_scrubber_gives_what_the_plain_one_gave(raw: bytes) -> None:
    assert H.scrub_payload(raw) == ref.scrub_payload(H, raw)


@settings(max_examples=400, deadline=None)
@given(noise)
def test_phone_and_email_patterns_find_what_a_whole_substitution_finds(raw: bytes) -> None:
    assert H.scrub_bytes(raw) == ref.scrub_bytes(H, raw)


@pytest.mark.parametrize("seed", [1, 2])
def test_every_kind_of_generated_bad_input_is_scrubbed_as_before(seed: int) -> None:
    gen = Generator(seed=seed, customers=200, bad_share=1.0)
    kinds = set()
    for m in gen.messages(400):
        kinds.add(m.expected_reason)
        assert H.scrub_payload(m.value) == ref.scrub_payload(H, m.value), m.expected_reason
    assert len(kinds) >= 10  # deep nesting, too large, broken JSON, invalid UTF-8...


def test_runs_of_brackets_and_long_strings_are_scrubbed_in_one_step_each() -> None:
    """The cases the speed-up is about, with personal data around them."""
    tail = b',"phone":"+44 7700 900123","n":"ana.lopez@example.com"}'
    for raw in (
        b'{"a":' + b"[" * 50_000 + b"]" * 50_000 + tail,
        b'{"a":"' + b"x" * 300_000 + b'"' + tail,
        b'{"a":"' + b'\\"' * 50_000 + b'"' + tail,
        b'{"a":[' + b'{"email":[' * 2_000 + b"447700900123" + b"]}" * 2_000 + b"]}",
    ):
        out = H.scrub_payload(raw)
        assert out == ref.scrub_payload(H, raw)
        assert b"7700" not in out and b"ana.lopez" not in out


def test_compact_json_is_scrubbed_on_its_parsed_values_without_the_token_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The common dead letter (compact JSON with a personal field) takes the parsed path; one
    nested deeper than orjson writes falls back to the scan, with the same bytes."""
    import operators.privacy as privacy

    compact = orjson.dumps(
        {"sku": "A1", "note": "call +44 7700 900123", "customer": {"email": "ana@example.com",
         "phone": [447700900123, None]}, "lines": [{"e-mail": {"x": 1.5}}]}
    )  # fmt: skip
    deep = b'{"a":' + b'{"email":' * 900 + b'"ana@example.com"' + b"}" * 900 + b"}"
    # orjson parses it (1,024 levels) but writes 254 at most: the compact check must not fail
    expected = {raw: ref.scrub_payload(H, raw) for raw in (compact, deep)}

    class NoScan:
        def search(self, *_: object) -> None:
            raise AssertionError("the token scan ran")

    monkeypatch.setattr(privacy, "_TOKEN", NoScan())
    out = H.scrub_payload(compact)
    assert out == expected[compact]
    assert out.count(b"hmac:") == 4 and b"7700" not in out and b"ana@" not in out
    with pytest.raises(AssertionError, match="token scan"):
        H.scrub_payload(deep)  # too deep for the parsed values: the scan
    monkeypatch.undo()
    assert H.scrub_payload(deep) == expected[deep]


@st.composite
def long_payloads(draw: st.DrawFn) -> bytes:
    """Tens of KB of filler (letters, or digits too) with fragments, phone numbers among
    them, at any offset: around the 4 KB blocks the fast search skips when they hold too
    few digits."""
    size = draw(st.integers(9_000, 30_000))
    filler = draw(st.sampled_from([b"x", b"ab ", b"1 x", b'"a":"b",']))
    out = bytearray((filler * (size // len(filler) + 1))[:size])
    for _ in range(draw(st.integers(0, 12))):
        at = draw(st.one_of(st.integers(0, size), st.sampled_from([4094, 4096, 8150, 8191])))
        out[at:at] = draw(noise)
    return bytes(out)


@settings(max_examples=150, deadline=None)
@given(long_payloads())
def test_long_inputs_searched_by_blocks_find_every_phone_number(raw: bytes) -> None:
    assert H.scrub_bytes(raw) == ref.scrub_bytes(H, raw)
    assert H.scrub_payload(raw) == ref.scrub_payload(H, raw)


@pytest.mark.parametrize("phone", [b"+44 7700 900123", b"(0)20 7946-0958", b"447700900123"])
def test_a_phone_number_across_a_block_boundary_is_found(phone: bytes) -> None:
    for at in [*range(4060, 4100), *range(8160, 8200)]:
        raw = b"x" * at + b" " + phone + b" " + b"x" * (12_000 - at)
        out = H.scrub_bytes(raw)
        assert out == ref.scrub_bytes(H, raw) and phone not in out, at


def test_every_personal_field_name_makes_the_scan_run() -> None:
    """A field whose name says personal data is replaced whatever its value, also in a
    payload with no digits, no "@" and no other hint (``courriel`` was once let through)."""
    from operators.privacy import _EMAIL_NAMES, _PHONE_NAMES

    for name in sorted(_EMAIL_NAMES | _PHONE_NAMES):
        out = H.scrub_payload(b'{"' + name.encode() + b'": "ana lopez"}')
        assert b"ana lopez" not in out and b"hmac:" in out, name


@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=200),
    kind=st.sampled_from([b"email", b"phone"]),
    value=st.text(max_size=80),
)
def test_tokens_are_the_standard_hmac_sha256_of_kind_and_value(
    key: bytes, kind: bytes, value: str
) -> None:
    """The hasher precomputes the key's padded blocks; its tokens must stay those of the
    standard library's HMAC (every stored identity link is keyed by them)."""
    import hmac

    msg = kind + b"\x00" + value.encode("utf-8", "surrogatepass")
    expected = hmac.digest(key, msg, "sha256")[:16].hex()
    h = PiiHasher(key)
    assert h._mac(kind, value) == expected
    # ... and a hasher is reusable: the precomputed states are copied, never consumed
    assert h._mac(kind, value) == expected
