"""Decoding HTML bytes as a browser would: the WHATWG Encoding Standard's labels and its order of
evidence (byte order mark, HTTP charset, `<meta charset>`, then detection), plus one rule of our own:
a page that is almost valid in its declared charset (a stray byte in UTF-8) is decoded in it, with
U+FFFD for the bad bytes, rather than handed to a detector that turns the whole page into mojibake.
"""

from __future__ import annotations

import codecs
import re

import cchardet
from resiliparse.parse.encoding import detect_encoding

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_\-:.]+)""", re.I)

# The WHATWG Encoding Standard's labels (encoding.spec.whatwg.org), as browsers read them, mapped to
# Python codecs. They differ from Python's own names where it matters: `iso-8859-1`, `latin1` and
# `ascii` mean windows-1252, `euc-kr` means windows-949, `gb2312` means GBK/GB18030.
_WHATWG = {
    "utf-8": "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8",
    "cp866": "866 cp866 csibm866 ibm866",
    "iso8859_2": "csisolatin2 iso-8859-2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 iso_8859-2:1987 l2 latin2",
    "iso8859_3": "csisolatin3 iso-8859-3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 iso_8859-3:1988 l3 latin3",
    "iso8859_4": "csisolatin4 iso-8859-4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 iso_8859-4:1988 l4 latin4",
    "iso8859_5": "csisolatincyrillic cyrillic iso-8859-5 iso-ir-144 iso8859-5 iso88595 iso_8859-5 iso_8859-5:1988",
    "iso8859_6": "arabic asmo-708 csiso88596e csiso88596i csisolatinarabic ecma-114 iso-8859-6 iso-8859-6-e "
                 "iso-8859-6-i iso-ir-127 iso8859-6 iso88596 iso_8859-6 iso_8859-6:1987",
    "iso8859_7": "csisolatingreek ecma-118 elot_928 greek greek8 iso-8859-7 iso-ir-126 iso8859-7 iso88597 "
                 "iso_8859-7 iso_8859-7:1987 sun_eu_greek",
    "iso8859_8": "csiso88598e csisolatinhebrew hebrew iso-8859-8 iso-8859-8-e iso-ir-138 iso8859-8 iso88598 "
                 "iso_8859-8 iso_8859-8:1988 visual csiso88598i iso-8859-8-i logical",
    "iso8859_10": "csisolatin6 iso-8859-10 iso-ir-157 iso8859-10 iso885910 l6 latin6",
    "iso8859_13": "iso-8859-13 iso8859-13 iso885913",
    "iso8859_14": "iso-8859-14 iso8859-14 iso885914",
    "iso8859_15": "csisolatin9 iso-8859-15 iso8859-15 iso885915 iso_8859-15 l9",
    "iso8859_16": "iso-8859-16",
    "koi8_r": "cskoi8r koi koi8 koi8-r koi8_r",
    "koi8_u": "koi8-ru koi8-u",
    "mac_roman": "csmacintosh mac macintosh x-mac-roman",
    "cp874": "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874",
    "cp1250": "cp1250 windows-1250 x-cp1250",
    "cp1251": "cp1251 windows-1251 x-cp1251",
    "cp1252": "ansi_x3.4-1968 ascii cp1252 cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 iso8859-1 iso88591 "
              "iso_8859-1 iso_8859-1:1987 l1 latin1 us-ascii windows-1252 x-cp1252",
    "cp1253": "cp1253 windows-1253 x-cp1253",
    "cp1254": "cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 iso_8859-9:1989 l5 latin5 "
              "windows-1254 x-cp1254",
    "cp1255": "cp1255 windows-1255 x-cp1255",
    "cp1256": "cp1256 windows-1256 x-cp1256",
    "cp1257": "cp1257 windows-1257 x-cp1257",
    "cp1258": "cp1258 windows-1258 x-cp1258",
    "mac_cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "gb18030": "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk gb18030",
    "big5hkscs": "big5 big5-hkscs cn-big5 csbig5 x-x-big5",
    "euc_jp": "cseucpkdfmtjapanese euc-jp x-euc-jp",
    "iso2022_jp": "csiso2022jp iso-2022-jp",
    "cp932": "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis",
    "cp949": "cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 ksc5601 ksc_5601 "
             "windows-949",
    "utf-16-be": "unicodefffe utf-16be",
    "utf-16-le": "csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff utf-16 utf-16le",
}
WHATWG_LABELS = {label: codec for codec, labels in _WHATWG.items() for label in labels.split()}
# What cchardet reports that is not a WHATWG label.
WHATWG_LABELS.update({"uhc": "cp949", "cp949": "cp949", "euc-tw": "big5hkscs", "iso-2022-kr": "cp949",
                      "iso-2022-cn": "gb18030", "mac-cyrillic": "mac_cyrillic", "ibm855": "cp855"})
# Detectors name Python codecs ('euc_jp', 'iso2022_jp', 'big5', 'latin-1'), not WHATWG labels: each
# label's Python codec, by its canonical name, leads back to the codec a browser uses for that label.
_BY_PYTHON_NAME: dict[str, str] = {}
for _label, _codec in WHATWG_LABELS.items():
    try:
        _BY_PYTHON_NAME.setdefault(codecs.lookup(_label).name, _codec)
    except LookupError:
        continue
# Codecs that decode (nearly) any bytes: their decoding without error is no evidence that they are right.
_PERMISSIVE = {"gb18030", "cp1252", "mac_roman", "mac_cyrillic", "koi8_r", "koi8_u", "cp866", "cp855"} | \
    {c for c in _WHATWG if c.startswith(("iso8859", "cp12", "cp874"))}
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_BE, "utf-16-be"), (codecs.BOM_UTF16_LE, "utf-16-le"))


def whatwg_codec(label: str | None) -> str | None:
    """The Python codec for an encoding label as a browser reads it, or None for an unknown label."""
    return WHATWG_LABELS.get((label or "").strip().strip("\"'").lower()) if label else None


def detector_codec(name: str | None) -> str | None:
    """The codec a browser would use for a detector's answer, whether a WHATWG label or a Python codec name."""
    codec = whatwg_codec(name)
    if codec or not name:
        return codec
    try:
        return _BY_PYTHON_NAME.get(codecs.lookup(name).name)
    except LookupError:
        return None


def _decode_almost(body: bytes, codec: str) -> str | None:
    """Decode with replacement when the bytes are almost valid in `codec`: fewer bad sequences than good
    non-ASCII characters. A page in another encoding read as UTF-8 has almost no valid sequences."""
    text = body.decode(codec, "replace")
    bad = text.count("\ufffd") - body.count(b"\xef\xbf\xbd")
    good = len(text) - len(text.encode("ascii", "ignore")) - bad
    return text if bad <= good else None


def decode_html(body: bytes, http_charset: str | None) -> tuple[str, str]:
    """Decode a page as a browser would (WHATWG): byte order mark, HTTP charset, `<meta charset>`,
    then detection. A declared charset the bytes almost fit (a stray byte in a UTF-8 page) still
    wins, with U+FFFD for the bad bytes. Returns (text, how), `how` naming the codec used."""
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(codec, "replace"), codec
    declared = [whatwg_codec(http_charset)]
    meta = _META_CHARSET.search(body[:4096])
    if meta:
        codec = whatwg_codec(meta.group(1).decode("ascii", "ignore"))
        # A meta tag readable as ASCII cannot be UTF-16: WHATWG reads it as UTF-8.
        declared.append("utf-8" if codec and codec.startswith("utf-16") else codec)
    for codec in filter(None, declared):
        try:
            return body.decode(codec), codec
        except UnicodeDecodeError:
            text = _decode_almost(body, codec)
            if text is not None:
                return text, f"{codec}:replaced"
    # Pure ASCII is the same text in UTF-8 and every ASCII-compatible charset, except the 7-bit stateful
    # ones (ISO-2022-JP and its kin), whose escape sequences start with ESC: those go to detection.
    if body.isascii() and b"\x1b" in body:
        return _detect(body)
    try:
        return body.decode("utf-8"), "detected:utf-8"
    except UnicodeDecodeError:
        pass
    guesses = _guesses(body)
    # A strict multi-byte fit comes before "UTF-8 with a stray byte": Big5 or EUC-JP text is often
    # half valid UTF-8 by chance, while a UTF-8 page almost never decodes strictly as either.
    strict = _decode_first(body, [c for c in guesses if c not in _PERMISSIVE])
    if strict is not None:
        return strict
    text = _decode_almost(body, "utf-8")
    if text is not None:
        return text, "detected:utf-8:replaced"
    return _detect(body, guesses)


def _guesses(body: bytes) -> list[str]:
    """The codecs resiliparse and cchardet guess, in that order (resiliparse takes EUC-KR for UTF-8;
    cchardet knows Korean but guesses wildly on mostly-ASCII pages)."""
    named = [detect_encoding(body), cchardet.detect(body[:65536]).get("encoding")]
    return list(dict.fromkeys(c for c in map(detector_codec, named) if c))


def _decode_first(body: bytes, candidates: list[str]) -> tuple[str, str] | None:
    for codec in candidates:
        try:
            return body.decode(codec), f"detected:{codec}"
        except (UnicodeDecodeError, LookupError):
            continue
    return None


def _detect(body: bytes, guesses: list[str] | None = None) -> tuple[str, str]:
    """Byte-level detection: the first guess whose codec decodes the bytes wins, but a strict codec
    (Big5, EUC-JP, Shift_JIS...) that decodes them outranks a permissive one (a single-byte charset,
    GB18030) that decodes almost anything: the strict decode is evidence, the permissive one is not.
    With no fit, the first guess (or windows-1252, as a browser) with replacement."""
    guesses = _guesses(body) if guesses is None else guesses
    found = _decode_first(body, sorted(guesses, key=lambda c: c in _PERMISSIVE))  # stable: strict ones first
    if found is not None:
        return found
    first = guesses[0] if guesses else "cp1252"
    return body.decode(first, "replace"), f"detected:{first}:replaced"
