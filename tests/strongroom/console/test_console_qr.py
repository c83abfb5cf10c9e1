"""Deposit-address QR codes: inline SVG that decodes to the address and needs no script or style."""

from __future__ import annotations

import re

from strongroom.console.qr import qr_svg


def test_qr_svg_is_inline_svg_without_script_or_style():
    svg = str(qr_svg("bcrt1qxynam0atd85dl8vd2fgnwwmxt4dwlmz83pcqnt"))
    assert svg.startswith('<svg class="qr"') and svg.endswith("</svg>")
    assert not re.search(r"<script|style=|on[a-z]+=", svg, re.I)


def test_qr_svg_never_embeds_the_payload_text():
    hostile = '"><script>alert(1)</script>'
    svg = str(qr_svg(hostile))
    assert "<script" not in svg and "alert" not in svg
