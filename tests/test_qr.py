"""QR images of QRIS payloads (the ``qr`` extra, segno)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import segno

from qrispay import qr, qris

STATIC = (
    "00020101021126340014ID.CO.QRIS.WWW0212ID10200000015204581253033605802ID"
    "5909TOKO SARI6007JAKARTA61051011063040230"
)
DYNAMIC = qris.to_dynamic(STATIC, 25_001)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_png() -> None:
    data = qr.render(DYNAMIC)
    assert data.startswith(PNG_SIGNATURE)
    assert data[12:16] == b"IHDR"
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    code = segno.make_qr(DYNAMIC, error="m")
    assert width == height == (code.symbol_size(scale=8, border=4)[0])


def test_png_scale_and_border() -> None:
    small = qr.render(DYNAMIC, scale=2, border=0)
    width = int.from_bytes(small[16:20], "big")
    code = segno.make_qr(DYNAMIC, error="m")
    assert width == code.symbol_size(scale=2, border=0)[0]


def test_svg() -> None:
    data = qr.render(DYNAMIC, "svg")
    root = ET.fromstring(data)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_encodes_the_payload_exactly() -> None:
    # The same symbol segno makes for the payload: no other text, no micro QR.
    expected = segno.make_qr(DYNAMIC, error="m", boost_error=True)
    assert not expected.is_micro
    assert expected.error in ("M", "Q", "H")
    assert qr.render(DYNAMIC, "svg", scale=1) == _svg(expected)


def _svg(code: segno.QRCode) -> bytes:
    import io

    buffer = io.BytesIO()
    code.save(buffer, kind="svg", scale=1, border=4)
    return buffer.getvalue()


def test_save_by_suffix(tmp_path: Path) -> None:
    png = qr.save(DYNAMIC, tmp_path / "invoice.PNG")
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    svg = qr.save(DYNAMIC, str(tmp_path / "invoice.svg"))
    assert isinstance(svg, Path)
    assert b"<svg" in svg.read_bytes()
    forced = qr.save(DYNAMIC, tmp_path / "invoice.img", kind="png")
    assert forced.read_bytes().startswith(PNG_SIGNATURE)


def test_save_needs_a_known_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        qr.save(DYNAMIC, tmp_path / "invoice.jpg")
    assert not (tmp_path / "invoice.jpg").exists()


def test_invalid_payload_is_refused(tmp_path: Path) -> None:
    bad = DYNAMIC[:-1] + ("0" if DYNAMIC[-1] != "0" else "1")
    with pytest.raises(qris.QrisError, match="CRC"):
        qr.render(bad)
    with pytest.raises(qris.QrisError):
        qr.save(bad, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"kind": "jpg"}, ValueError),
        ({"scale": 0}, ValueError),
        ({"border": -1}, ValueError),
        ({"scale": 2.5}, TypeError),
        ({"scale": True}, TypeError),
    ],
)
def test_arguments_are_checked(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        qr.render(DYNAMIC, **kwargs)  # type: ignore[arg-type]


def test_without_segno_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "segno", None)
    with pytest.raises(ImportError, match=r"pip install 'qrispay\[qr\]'"):
        qr.render(DYNAMIC)
