"""Client encodings: which the enforcer can read the way the server will, and which it
refuses (docs, 24.3 "Character Set Support", table 24.3 and 24.4; src/common/encnames.c).

The server converts every Query and Parse from the client encoding before parsing it, so
the enforcer decodes with the same encoding. Client-only encodings (SJIS, SHIFT_JIS_2004,
BIG5, GBK, UHC, GB18030, JOHAB) are refused everywhere: a multibyte character in them can
end with the byte of a quote or a backslash, so the bytes read as one statement in UTF-8
can be two in the client encoding. SQL_ASCII as the client encoding means no conversion:
the server reads the bytes in its own encoding.
"""

from __future__ import annotations

# PostgreSQL encoding name -> Python codec; None: the enforcer cannot decode it (refused).
_CODECS: dict[str, str | None] = {
    "UTF8": "utf-8", "SQL_ASCII": None, "EUC_JP": "euc_jp", "EUC_CN": "gb2312", "EUC_KR": "euc_kr",
    "EUC_TW": None, "EUC_JIS_2004": "euc_jis_2004", "MULE_INTERNAL": None,
    "LATIN1": "iso8859-1", "LATIN2": "iso8859-2", "LATIN3": "iso8859-3", "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9", "LATIN6": "iso8859-10", "LATIN7": "iso8859-13", "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15", "LATIN10": "iso8859-16", "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8", "WIN1250": "cp1250", "WIN1251": "cp1251",
    "WIN1252": "cp1252", "WIN1253": "cp1253", "WIN1254": "cp1254", "WIN1255": "cp1255", "WIN1256": "cp1256",
    "WIN1257": "cp1257", "WIN1258": "cp1258", "WIN866": "cp866", "WIN874": "cp874", "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
}
CLIENT_ONLY = frozenset({"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"})

# encnames.c pg_encname_tbl, keys cleaned as the server cleans them (alphanumerics, lower case).
_ALIASES = {
    "abc": "WIN1258", "alt": "WIN866", "big5": "BIG5", "euccn": "EUC_CN", "eucjis2004": "EUC_JIS_2004",
    "eucjp": "EUC_JP", "euckr": "EUC_KR", "euctw": "EUC_TW", "gb18030": "GB18030", "gbk": "GBK",
    "iso88591": "LATIN1", "iso885910": "LATIN6", "iso885913": "LATIN7", "iso885914": "LATIN8",
    "iso885915": "LATIN9", "iso885916": "LATIN10", "iso88592": "LATIN2", "iso88593": "LATIN3",
    "iso88594": "LATIN4", "iso88595": "ISO_8859_5", "iso88596": "ISO_8859_6", "iso88597": "ISO_8859_7",
    "iso88598": "ISO_8859_8", "iso88599": "LATIN5", "johab": "JOHAB", "koi8": "KOI8R", "koi8r": "KOI8R",
    "koi8u": "KOI8U", "latin1": "LATIN1", "latin10": "LATIN10", "latin2": "LATIN2", "latin3": "LATIN3",
    "latin4": "LATIN4", "latin5": "LATIN5", "latin6": "LATIN6", "latin7": "LATIN7", "latin8": "LATIN8",
    "latin9": "LATIN9", "mskanji": "SJIS", "muleinternal": "MULE_INTERNAL", "shiftjis": "SJIS",
    "shiftjis2004": "SHIFT_JIS_2004", "sjis": "SJIS", "sqlascii": "SQL_ASCII", "tcvn": "WIN1258",
    "tcvn5712": "WIN1258", "uhc": "UHC", "unicode": "UTF8", "utf8": "UTF8", "vscii": "WIN1258",
    "win": "WIN1251", "win1250": "WIN1250", "win1251": "WIN1251", "win1252": "WIN1252", "win1253": "WIN1253",
    "win1254": "WIN1254", "win1255": "WIN1255", "win1256": "WIN1256", "win1257": "WIN1257",
    "win1258": "WIN1258", "win866": "WIN866", "win874": "WIN874", "win932": "SJIS", "win936": "GBK",
    "win949": "UHC", "win950": "BIG5", "windows1250": "WIN1250", "windows1251": "WIN1251",
    "windows1252": "WIN1252", "windows1253": "WIN1253", "windows1254": "WIN1254", "windows1255": "WIN1255",
    "windows1256": "WIN1256", "windows1257": "WIN1257", "windows1258": "WIN1258", "windows866": "WIN866",
    "windows874": "WIN874", "windows932": "SJIS", "windows936": "GBK", "windows949": "UHC",
    "windows950": "BIG5",
}


class EncodingRefused(ValueError):
    """A client encoding the enforcer will not follow; the message says why."""


def canonical(name: str) -> str | None:
    """The server's name for an encoding as a client may spell it ('Shift_JIS' -> 'SJIS'),
    None when the server knows no such encoding."""
    cleaned = "".join(c for c in name.lower() if c.isascii() and c.isalnum())
    return _ALIASES.get(cleaned)


def client_only(name: str) -> bool:
    """Is this (any spelling of) an encoding whose multibyte characters may hide a quote?"""
    return canonical(name) in CLIENT_ONLY


def python_codec(client_encoding: str, server_encoding: str = "UTF8") -> str:
    """The Python codec that reads a statement as the server will; EncodingRefused when the
    encoding is client-only or one the enforcer cannot decode."""
    name = canonical(client_encoding)
    if name in CLIENT_ONLY:
        raise EncodingRefused(f"client encoding {client_encoding!r} is refused: its multibyte characters can "
                              "contain the bytes of a quote or backslash, so the enforcer and the server could "
                              "read a statement differently; use UTF8")
    if name == "SQL_ASCII":
        name = canonical(server_encoding)
        if name == "SQL_ASCII":
            return "latin-1"  # neither side converts: bytes are compared as bytes
    codec = _CODECS.get(name) if name is not None else None
    if codec is None:
        raise EncodingRefused(f"client encoding {client_encoding!r} is not supported through the enforcer; use UTF8")
    return codec
