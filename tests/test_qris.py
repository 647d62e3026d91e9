from __future__ import annotations

import doctest
import pickle
import re

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qrispay import QrispayError, qris

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- an oracle that shares no code with qrispay.qris ---------------------------------------------


def crc_bitwise(data: str) -> str:
    """CRC-16/CCITT-FALSE, one bit at a time, straight from the definition."""
    crc = 0xFFFF
    for byte in data.encode("ascii"):
        for bit in range(7, -1, -1):
            top = (crc >> 15) & 1
            crc = (crc << 1) & 0xFFFF
            if top ^ ((byte >> bit) & 1):
                crc ^= 0x1021
    return format(crc, "04X")


def tlv(tag: str, value: str) -> str:
    assert len(value) <= 99
    return f"{tag}{len(value):02d}{value}"


def with_crc(body: str) -> str:
    """Append tag 63 with the CRC over ``body + "6304"``."""
    return body + "6304" + crc_bitwise(body + "6304")


def split_tlv(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(text):
        length = int(text[pos + 2 : pos + 4])
        out.append((text[pos : pos + 2], text[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out


MERCHANT_ACCOUNT = (
    tlv("00", "ID.CO.TELKOM.WWW")
    + tlv("01", "936008990000000001")
    + tlv("02", "000195000001234")
    + tlv("03", "UMI")
)
QRIS_ACCOUNT = tlv("00", "ID.CO.QRIS.WWW") + tlv("02", "ID1020012345678") + tlv("03", "UMI")
STATIC_BODY = (
    tlv("00", "01")
    + tlv("01", "11")
    + tlv("26", MERCHANT_ACCOUNT)
    + tlv("51", QRIS_ACCOUNT)
    + tlv("52", "5812")
    + tlv("53", "360")
    + tlv("58", "ID")
    + tlv("59", "WARUNG MAKAN SEDERHANA")
    + tlv("60", "JAKARTA SELATAN")
    + tlv("61", "12160")
    + tlv("62", tlv("07", "A01"))
)
STATIC = with_crc(STATIC_BODY)


# -- CRC -------------------------------------------------------------------------------------------


def test_crc16_check_value() -> None:
    assert qris.crc16("123456789") == "29B1"
    assert crc_bitwise("123456789") == "29B1"


def test_crc16_empty_and_format() -> None:
    assert qris.crc16("") == "FFFF"
    assert re.fullmatch(r"[0-9A-F]{4}", qris.crc16(STATIC_BODY))


@FAST
@given(st.text(st.characters(max_codepoint=127), max_size=300))
def test_crc16_matches_bitwise_oracle(data: str) -> None:
    assert qris.crc16(data) == crc_bitwise(data)


def test_crc16_refuses_non_ascii() -> None:
    with pytest.raises(qris.QrisError, match="non-ASCII"):
        qris.crc16("TOKO É")


# -- parsing a real-looking payload ----------------------------------------------------------------


def test_parse_real_looking_static_payload() -> None:
    payload = qris.parse(STATIC)
    assert STATIC.endswith("6304" + crc_bitwise(STATIC_BODY + "6304"))
    assert [tag for tag, _ in payload.tags] == [
        "00", "01", "26", "51", "52", "53", "58", "59", "60", "61", "62", "63",
    ]  # fmt: skip
    assert payload.get("00") == "01"
    assert payload.get("26") == MERCHANT_ACCOUNT
    assert payload.get("54") is None
    assert payload.get("99") is None
    assert payload.merchant_name == "WARUNG MAKAN SEDERHANA"
    assert payload.merchant_city == "JAKARTA SELATAN"
    assert not payload.is_dynamic
    assert payload.amount is None
    assert payload.dumps() == STATIC


def test_parse_template_reads_sub_tags() -> None:
    payload = qris.parse(STATIC)
    account = qris.parse_template(payload.get("26") or "")
    assert account == (
        ("00", "ID.CO.TELKOM.WWW"),
        ("01", "936008990000000001"),
        ("02", "000195000001234"),
        ("03", "UMI"),
    )
    assert qris.parse_template(payload.get("62") or "") == (("07", "A01"),)
    assert qris.parse_template("") == ()
    with pytest.raises(qris.QrisError, match="template truncated"):
        qris.parse_template("0005ABC")


def test_payload_is_immutable_value() -> None:
    payload = qris.parse(STATIC)
    assert attrs.has(qris.Payload)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        payload.tags = ()  # type: ignore[misc]
    assert payload == qris.parse(STATIC)
    assert hash(payload) == hash(qris.parse(STATIC))
    assert pickle.loads(pickle.dumps(payload)) == payload


def test_constructing_payload_directly_runs_the_same_checks() -> None:
    good = qris.parse(STATIC)
    assert qris.Payload(good.tags) == good
    with pytest.raises(qris.QrisError, match="CRC mismatch"):
        qris.Payload((*good.tags[:-1], ("63", "0000")))
    with pytest.raises(qris.QrisError, match="at most 99"):
        qris.Payload((("00", "01"), ("59", "X" * 100), ("63", "0000")))
    with pytest.raises(TypeError):
        qris.Payload([("00", "01")])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        qris.Payload((("00", 1),))  # type: ignore[arg-type]


def test_docstring_example_runs() -> None:
    result = doctest.testmod(qris, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_lowercase_crc_is_accepted_and_kept() -> None:
    lower = STATIC[:-4] + STATIC[-4:].lower()
    if lower == STATIC:  # pragma: no cover - CRC happens to be all digits
        pytest.skip("CRC has no letters")
    assert qris.parse(lower).dumps() == lower


def test_amount_readings() -> None:
    def payload_with_amount(amount: str) -> qris.Payload:
        return qris.parse(with_crc(tlv("00", "01") + tlv("01", "12") + tlv("54", amount)))

    assert payload_with_amount("10000").amount == 10000
    assert payload_with_amount("0010000").amount == 10000
    assert payload_with_amount("10000.00").amount == 10000
    assert payload_with_amount("10000.0").amount == 10000
    assert payload_with_amount("9999999999999").amount == 9_999_999_999_999
    with pytest.raises(qris.QrisError, match="not a whole rupiah"):
        _ = payload_with_amount("10000.50").amount
    for bad in ["1,000", "10.000,00", "-5", "+5", "abc", "", "1.", ".5", "1 000", "12345678901234"]:
        with pytest.raises(qris.QrisError, match="tag 54"):
            payload_with_amount(bad)


def test_tag_01_values() -> None:
    assert qris.parse(with_crc(tlv("00", "01") + tlv("01", "12"))).is_dynamic
    assert not qris.parse(with_crc(tlv("00", "01") + tlv("01", "11"))).is_dynamic
    assert not qris.parse(with_crc(tlv("00", "01"))).is_dynamic
    with pytest.raises(qris.QrisError, match="tag 01"):
        qris.parse(with_crc(tlv("00", "01") + tlv("01", "13")))


# -- corrupted payloads are refused, never repaired ------------------------------------------------


def test_wrong_crc_refused() -> None:
    crc = STATIC[-4:]
    wrong = format((int(crc, 16) + 1) % 0x10000, "04X")
    with pytest.raises(qris.QrisError, match="CRC mismatch"):
        qris.parse(STATIC[:-4] + wrong)


def test_crc_that_is_not_hex_refused() -> None:
    with pytest.raises(qris.QrisError, match="CRC mismatch"):
        qris.parse(STATIC[:-4] + "ZZZZ")


def test_changed_content_refused() -> None:
    tampered = STATIC.replace("WARUNG MAKAN SEDERHANA", "WARUNG MAKAN SEDERHANI")
    assert tampered != STATIC
    with pytest.raises(qris.QrisError, match="CRC mismatch"):
        qris.parse(tampered)


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 8, 9, 30, len(STATIC) - 4])
def test_truncated_refused(cut: int) -> None:
    with pytest.raises(qris.QrisError):
        qris.parse(STATIC[:-cut])


def test_truncated_message_says_where() -> None:
    with pytest.raises(
        qris.QrisError, match=r"truncated: tag 63 at position \d+ declares length 4"
    ):
        qris.parse(STATIC[:-1])
    with pytest.raises(qris.QrisError, match=r"truncated at position \d+"):
        qris.parse(STATIC[:-6])


def test_length_that_lies_refused_even_with_a_matching_crc() -> None:
    # Name says 11 characters but holds 10: with a CRC computed over the lie,
    # only the structure check can catch it.
    body = tlv("00", "01") + tlv("01", "11") + "5911TOKO SARI!" + tlv("60", "BOGOR")
    with pytest.raises(qris.QrisError, match="position"):
        qris.parse(with_crc(body))
    # A length running past the end.
    with pytest.raises(qris.QrisError, match="declares length 99"):
        qris.parse(tlv("00", "01") + "5999SHORT")


def test_non_digit_length_refused() -> None:
    with pytest.raises(qris.QrisError, match=r"tag 59 at position 6 has a non-digit length '1A'"):
        qris.parse(with_crc(tlv("00", "01") + "591ATOKO SARI ABCDEF"))
    with pytest.raises(qris.QrisError, match="non-digit length"):
        qris.parse(with_crc(tlv("00", "01") + "59 9TOKO SARI"))
    # Digits of another script are digits to str.isdigit(), not to EMVCo.
    with pytest.raises(qris.QrisError):
        qris.parse("00\u0660\u0662" + "01")


def test_non_digit_tag_refused() -> None:
    with pytest.raises(qris.QrisError, match=r"tag id 'AB' at position 6"):
        qris.parse(with_crc(tlv("00", "01") + tlv("AB", "XY")))


def test_missing_crc_refused() -> None:
    with pytest.raises(qris.QrisError, match="no CRC"):
        qris.parse(STATIC_BODY)
    with pytest.raises(qris.QrisError):
        qris.parse(STATIC_BODY + "6304")


def test_crc_not_last_refused() -> None:
    crc_first = with_crc(tlv("00", "01") + tlv("01", "11"))
    with pytest.raises(qris.QrisError, match="must be the last"):
        qris.parse(crc_first + tlv("58", "ID"))


def test_crc_of_wrong_length_refused() -> None:
    body = tlv("00", "01") + tlv("01", "11")
    with pytest.raises(qris.QrisError, match="length 04"):
        qris.parse(body + "6305" + crc_bitwise(body + "6304") + "0")
    with pytest.raises(qris.QrisError, match="length 04"):
        qris.parse(body + "6303ABC")


def test_trailing_data_refused() -> None:
    with pytest.raises(qris.QrisError):
        qris.parse(STATIC + "\n")
    with pytest.raises(qris.QrisError):
        qris.parse(" " + STATIC)


def test_format_indicator_must_come_first_and_be_01() -> None:
    with pytest.raises(qris.QrisError, match="start with tag 00"):
        qris.parse(with_crc(tlv("01", "11") + tlv("00", "01")))
    with pytest.raises(qris.QrisError, match="must be '01'"):
        qris.parse(with_crc(tlv("00", "02") + tlv("01", "11")))


def test_duplicate_top_level_tag_refused() -> None:
    body = tlv("00", "01") + tlv("01", "12") + tlv("54", "10000") + tlv("54", "1000")
    with pytest.raises(qris.QrisError, match="tag 54 appears twice"):
        qris.parse(with_crc(body))


def test_non_ascii_refused() -> None:
    body = tlv("00", "01") + tlv("59", "KOPI É")
    crc = "0000"  # never reached: the character is refused first
    with pytest.raises(qris.QrisError, match=r"non-ASCII character 'É' at position 15"):
        qris.parse(body + "6304" + crc)


def test_empty_and_non_str_refused() -> None:
    with pytest.raises(qris.QrisError, match="empty"):
        qris.parse("")
    with pytest.raises(TypeError):
        qris.parse(STATIC.encode())  # type: ignore[arg-type]


def test_qris_error_hierarchy() -> None:
    assert issubclass(qris.QrisError, ValueError)
    assert issubclass(qris.QrisError, QrispayError)


# -- to_dynamic ------------------------------------------------------------------------------------


def test_to_dynamic_on_real_looking_payload() -> None:
    dynamic = qris.to_dynamic(STATIC, 25_000)
    expected_body = (
        tlv("00", "01")
        + tlv("01", "12")
        + tlv("26", MERCHANT_ACCOUNT)
        + tlv("51", QRIS_ACCOUNT)
        + tlv("52", "5812")
        + tlv("53", "360")
        + tlv("54", "25000")
        + tlv("58", "ID")
        + tlv("59", "WARUNG MAKAN SEDERHANA")
        + tlv("60", "JAKARTA SELATAN")
        + tlv("61", "12160")
        + tlv("62", tlv("07", "A01"))
    )
    assert dynamic == with_crc(expected_body)
    payload = qris.parse(dynamic)
    assert payload.is_dynamic
    assert payload.amount == 25_000


def test_to_dynamic_never_touches_010211_inside_values() -> None:
    account = tlv("00", "ID.CO.QRIS.WWW") + tlv("01", "9360010211") + tlv("02", "010211")
    body = (
        tlv("00", "01")
        + tlv("01", "11")
        + tlv("26", account)
        + tlv("52", "5812")
        + tlv("53", "360")
        + tlv("58", "ID")
        + tlv("59", "TOKO 010211 JAYA")
        + tlv("60", "BANDUNG")
    )
    static = with_crc(body)
    assert static.count("010211") == 4  # the real tag 01 and three look-alikes in values
    dynamic = qris.to_dynamic(static, 15_000)
    payload = qris.parse(dynamic)
    assert payload.get("01") == "12"
    assert payload.get("26") == account
    assert payload.merchant_name == "TOKO 010211 JAYA"
    assert dynamic.count("010211") == 3
    assert dynamic.startswith("000201010212")
    assert dynamic == with_crc(
        tlv("00", "01")
        + tlv("01", "12")
        + tlv("26", account)
        + tlv("52", "5812")
        + tlv("53", "360")
        + tlv("54", "15000")
        + tlv("58", "ID")
        + tlv("59", "TOKO 010211 JAYA")
        + tlv("60", "BANDUNG")
    )


def test_to_dynamic_replaces_an_existing_amount() -> None:
    first = qris.to_dynamic(STATIC, 10_000)
    second = qris.to_dynamic(first, 20_000)
    assert qris.parse(second).amount == 20_000
    assert [tag for tag, _ in qris.parse(second).tags].count("54") == 1
    assert second == qris.to_dynamic(STATIC, 20_000)


def test_to_dynamic_replaces_a_fractional_amount() -> None:
    static = with_crc(tlv("00", "01") + tlv("01", "12") + tlv("54", "10.50") + tlv("58", "ID"))
    assert qris.parse(qris.to_dynamic(static, 11)).amount == 11


def test_to_dynamic_inserts_tag_01_when_absent() -> None:
    static = with_crc(tlv("00", "01") + tlv("26", QRIS_ACCOUNT) + tlv("58", "ID"))
    dynamic = qris.to_dynamic(static, 5)
    assert [tag for tag, _ in qris.parse(dynamic).tags] == ["00", "01", "26", "54", "58", "63"]
    assert qris.parse(dynamic).is_dynamic


def test_to_dynamic_amount_last_when_no_higher_tag() -> None:
    static = with_crc(tlv("00", "01") + tlv("01", "11") + tlv("53", "360"))
    dynamic = qris.to_dynamic(static, 1)
    assert dynamic == with_crc(tlv("00", "01") + tlv("01", "12") + tlv("53", "360") + "54011")


def test_to_dynamic_refuses_a_bad_payload() -> None:
    wrong = format((int(STATIC[-4:], 16) ^ 0x0001), "04X")
    with pytest.raises(qris.QrisError, match="CRC mismatch"):
        qris.to_dynamic(STATIC[:-4] + wrong, 1000)
    with pytest.raises(qris.QrisError, match="no CRC"):
        qris.to_dynamic(STATIC_BODY, 1000)


@pytest.mark.parametrize(
    "amount",
    [0, -1, -10_000, True, False, 1.0, 10_000.0, "10000", None, 10**13, 10**20],
)
def test_to_dynamic_amount_validation(amount: object) -> None:
    with pytest.raises(ValueError, match="amount"):
        qris.to_dynamic(STATIC, amount)  # type: ignore[arg-type]


def test_to_dynamic_amount_limits() -> None:
    assert qris.parse(qris.to_dynamic(STATIC, 1)).amount == 1
    biggest = 10**13 - 1
    assert qris.parse(qris.to_dynamic(STATIC, biggest)).get("54") == "9999999999999"


def test_to_dynamic_amount_checked_before_payload() -> None:
    # A bad amount is reported as such even when the payload is fine.
    with pytest.raises(qris.QrisError, match="positive"):
        qris.to_dynamic(STATIC, 0)


# -- properties ------------------------------------------------------------------------------------

ASCII = st.characters(max_codepoint=127)
# Tags the generator may use freely; 00 and 63 are placed by the builder, and
# 01 and 54 have value rules of their own.
FREE_TAGS = [f"{n:02d}" for n in range(2, 100) if n not in (54, 63)]
TEMPLATE_TAGS = {f"{n:02d}" for n in [*range(26, 52), 62, 64, *range(80, 100)]}


@st.composite
def template_values(draw: st.DrawFn) -> str:
    subs = draw(
        st.lists(
            st.tuples(st.integers(0, 99).map(lambda n: f"{n:02d}"), st.text(ASCII, max_size=15)),
            max_size=4,
        )
    )
    text = "".join(tlv(tag, value) for tag, value in subs)
    return text if len(text) <= 99 else ""


@st.composite
def amounts_text(draw: st.DrawFn) -> str:
    whole = draw(st.from_regex(r"[0-9]{1,10}", fullmatch=True))
    fraction = draw(st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,2}", fullmatch=True)))
    return whole + fraction


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    """A valid payload string and its top-level data objects (without 63)."""
    tags = draw(st.lists(st.sampled_from(FREE_TAGS), unique=True, max_size=12))
    if draw(st.booleans()):
        tags.sort()
    objects: list[tuple[str, str]] = [("00", "01")]
    initiation = draw(st.sampled_from([None, "11", "12"]))
    if initiation is not None:
        objects.append(("01", initiation))
    for tag in tags:
        if tag in TEMPLATE_TAGS and draw(st.booleans()):
            value = draw(template_values())
        else:
            value = draw(st.text(ASCII, max_size=99))
        objects.append((tag, value))
    if draw(st.booleans()):
        objects.insert(draw(st.integers(1, len(objects))), ("54", draw(amounts_text())))
    body = "".join(tlv(tag, value) for tag, value in objects)
    return with_crc(body), objects


@FAST
@given(payloads())
def test_parse_dumps_round_trip(generated: tuple[str, list[tuple[str, str]]]) -> None:
    text, objects = generated
    payload = qris.parse(text)
    assert payload.dumps() == text
    assert list(payload.tags[:-1]) == objects
    assert payload.tags[-1] == ("63", crc_bitwise(text[:-4]))
    for tag, value in objects:
        assert payload.get(tag) == value
        try:
            subs = qris.parse_template(value)
        except qris.QrisError:
            continue  # not every value is a template, and parse does not insist
        assert "".join(tlv(t, v) for t, v in subs) == value


@FAST
@given(payloads(), st.integers(1, 10**13 - 1))
def test_to_dynamic_properties(generated: tuple[str, list[tuple[str, str]]], amount: int) -> None:
    text, objects = generated
    dynamic = qris.to_dynamic(text, amount)
    payload = qris.parse(dynamic)

    assert payload.amount == amount
    assert payload.get("54") == str(amount)
    assert payload.is_dynamic
    assert dynamic[-4:] == crc_bitwise(dynamic[:-4])
    assert dynamic.startswith("000201")
    assert split_tlv(dynamic) == list(payload.tags)

    # Every other data object keeps its value and its order; tip tags are dropped.
    def others(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(t, v) for t, v in items if t not in ("01", "54", "55", "56", "57", "63")]

    assert not {"55", "56", "57"} & {tag for tag, _ in payload.tags}

    assert others(list(payload.tags)) == others(objects)

    # Tag 01 keeps its place when it was there, else comes right after tag 00.
    out_tags = [tag for tag, _ in payload.tags]
    in_tags = [tag for tag, _ in objects]
    if "01" in in_tags:
        without_54 = [t for t in out_tags if t not in ("54", "63")]
        assert without_54 == [t for t in in_tags if t not in ("54", "55", "56", "57")]
    else:
        assert out_tags[1] == "01"

    # Tag 54 sits before the first tag above 54, and after everything before it.
    index = out_tags.index("54")
    assert all(int(t) < 54 for t in out_tags[:index])
    following = out_tags[index + 1]
    assert following == "63" or int(following) > 54

    # Doing it again changes nothing.
    assert qris.to_dynamic(dynamic, amount) == dynamic


@FAST
@given(payloads(), st.data())
def test_any_single_character_change_is_refused(
    generated: tuple[str, list[tuple[str, str]]], data: st.DataObject
) -> None:
    text, _ = generated
    position = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.characters(max_codepoint=0x7F))
    original = text[position]
    in_crc = position >= len(text) - 4
    # In the CRC value, a change of case is the same number, and is accepted.
    if replacement == original or (in_crc and replacement.upper() == original.upper()):
        return
    tampered = text[:position] + replacement + text[position + 1 :]
    with pytest.raises(qris.QrisError):
        qris.parse(tampered)


@FAST
@given(payloads(), st.data())
def test_any_truncation_is_refused(
    generated: tuple[str, list[tuple[str, str]]], data: st.DataObject
) -> None:
    text, _ = generated
    cut = data.draw(st.integers(1, len(text)))
    with pytest.raises(qris.QrisError):
        qris.parse(text[:-cut])


def test_to_dynamic_drops_tip_tags_unless_asked() -> None:
    core = (
        tlv("00", "01")
        + tlv("01", "11")
        + tlv("26", tlv("00", "ID.CO.QRIS.WWW"))
        + tlv("52", "5812")
        + tlv("53", "360")
        + tlv("55", "02")
        + tlv("56", "500")
        + tlv("58", "ID")
        + tlv("59", "TOKO")
        + tlv("60", "JAKARTA")
        + "6304"
    )
    static = with_crc(core[:-4])
    dropped = qris.parse(qris.to_dynamic(static, 25_001))
    assert dropped.get("55") is None
    assert dropped.get("56") is None
    assert dropped.amount == 25_001
    kept = qris.parse(qris.to_dynamic(static, 25_001, keep_tip=True))
    assert (kept.get("55"), kept.get("56")) == ("02", "500")
