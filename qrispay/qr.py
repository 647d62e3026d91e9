"""QR images of QRIS payloads, as PNG or SVG, through segno.

::

    from qrispay import qr, qris

    payload = qris.to_dynamic(static_payload, 25_001)
    png = qr.render(payload)                 # bytes of a PNG image
    qr.save(payload, "invoice.svg")          # the kind follows the suffix

Needs the ``qr`` extra: ``pip install 'qrispay[qr]'``. segno is imported when
an image is made, so importing this module never fails; without segno,
:func:`render` and :func:`save` raise ``ImportError`` saying what to install.

Only a valid QRIS payload is drawn: it is parsed and its CRC checked first
(:class:`qrispay.qris.QrisError` otherwise), so a typo never becomes a QR code
that a customer's app refuses, or worse, reads differently. The code uses
error-correction level M or better (segno raises it when that costs no size),
which survives a printed code being a little worn or dirty.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Literal

from . import qris

__all__ = ["INSTALL_HINT", "Kind", "render", "save"]

Kind = Literal["png", "svg"]
KINDS: tuple[Kind, ...] = ("png", "svg")

INSTALL_HINT = "QR images need segno: pip install 'qrispay[qr]'"


def _segno() -> Any:
    try:
        import segno
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return segno


def _check_size(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def render(payload: str, kind: Kind = "png", *, scale: int = 8, border: int = 4) -> bytes:
    """The QR code of a QRIS ``payload`` as PNG or SVG bytes.

    ``scale``: pixels (PNG) or user units (SVG) per module. ``border``: the
    quiet zone in modules (4 is what the QR standard asks for; less may not
    scan). Raises ``QrisError`` for an invalid payload, ``ImportError``
    without segno.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'png' or 'svg', not {kind!r}")
    _check_size(scale, "scale", 1)
    _check_size(border, "border", 0)
    qris.parse(payload)
    segno = _segno()
    code = segno.make_qr(payload, error="m", boost_error=True)
    buffer = io.BytesIO()
    code.save(buffer, kind=kind, scale=scale, border=border)
    return buffer.getvalue()


def save(
    payload: str,
    path: str | os.PathLike[str],
    *,
    kind: Kind | None = None,
    scale: int = 8,
    border: int = 4,
) -> Path:
    """Write the QR code of ``payload`` to ``path`` and return the path.

    The kind follows the suffix (``.png`` or ``.svg``, any case) unless
    ``kind`` is given; another suffix without ``kind`` is a ``ValueError``.
    Nothing is written when the payload is invalid.
    """
    target = Path(path)
    if kind is None:
        suffix = target.suffix.lower().lstrip(".")
        if suffix not in KINDS:
            raise ValueError(
                f"cannot tell the image kind from {target.name!r}: use a .png or .svg "
                "suffix, or pass kind='png' or kind='svg'"
            )
        kind = "png" if suffix == "png" else "svg"
    data = render(payload, kind, scale=scale, border=border)
    target.write_bytes(data)
    return target
