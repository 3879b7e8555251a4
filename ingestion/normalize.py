"""Pure normalisation of source values: religion, denominations, packed classes, dates.

Every function keeps to one rule: the raw value is stored beside the result, so a wrong
guess here can always be corrected later without going back to the file.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

from places.models import Religion

_RELIGION_SYNONYMS: dict[str, str] = {
    "christianity": "christian",
    "islam": "muslim",
    "islamic": "muslim",
    "moslem": "muslim",
    "judaism": "jewish",
    "jew": "jewish",
    "hinduism": "hindu",
    "buddhism": "buddhist",
    "sikhism": "sikh",
    "bahai": "bahai",
    "baha'i": "bahai",
    "jainism": "jain",
    "shintoist": "shinto",
    "shintoism": "shinto",
    "taoism": "taoist",
    "zoroastrianism": "zoroastrian",
    "interfaith": "multifaith",
    "multi-faith": "multifaith",
}
_VOCABULARY = set(Religion.values)

# Spellings of one denomination that sources mix; the key is the normalised spelling.
_DENOMINATION_SYNONYMS: dict[str, str] = {
    "catholic": "roman_catholic",
    "urc": "united_reformed",
    "c_of_e": "anglican",
    "church_of_england": "anglican",
    "cofe": "anglican",
}


def _fold(text: str) -> str:
    """Lowercase, strip accents and surrounding space (``Bahá’í`` → ``baha'i``)."""
    text = text.replace("\u2019", "'").strip().lower()
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def religion_normalise(raw: str | None) -> str:
    """Map a free-text religion to the controlled vocabulary (``unknown`` when empty)."""
    if not raw or not raw.strip():
        return Religion.UNKNOWN
    value = _fold(raw).replace(" ", "_")
    value = _RELIGION_SYNONYMS.get(value, value)
    return value if value in _VOCABULARY else Religion.OTHER


def denominations_normalise(raw: str | None) -> list[str]:
    """Split OSM's ``;`` lists (with or without spaces) into normalised, unique values."""
    if not raw:
        return []
    result: list[str] = []
    for part in raw.split(";"):
        value = re.sub(r"[\s\-]+", "_", _fold(part)).strip("_")
        if not value:
            continue
        value = _DENOMINATION_SYNONYMS.get(value, value)
        if value not in result:
            result.append(value)
    return result


def packed_class_split(fclass: str | None) -> tuple[str, str]:
    """Split Geofabrik's ``fclass`` (``christian_anglican``) into religion and denomination.

    Returns ``(religion_raw, denomination_raw)``; the denomination is empty for a plain
    ``christian``.
    """
    if not fclass:
        return "", ""
    head, _, tail = fclass.strip().partition("_")
    return head, tail


# Geofabrik puts every OSM object that carries a religion tag in its pofw layers, and names
# the class after the religion (``christian_anglican``, ``muslim``, ``shintoist``): schools,
# colleges and cemeteries of a faith get the same classes as its churches. Two rules report
# them. A class whose first part is no religion (``school``, as other Geofabrik layers use)
# is not a place of worship. Within a religion class, a name whose last school or burial word
# is not followed by a word for a building of worship is not one either: "St Mary's Church of
# England Primary School" and "Nunhead Cemetery" are reported, "Brompton Cemetery Chapel" and
# "St Dominic's College Chapel" are kept. The words are English, as the Geofabrik names are.
NOT_WORSHIP_WORDS = (
    "school",
    "schools",
    "college",
    "academy",
    "nursery",
    "sixth form",
    "cemetery",
    "graveyard",
    "burial ground",
    "crematorium",
)
WORSHIP_WORDS = (
    "church",
    "chapel",
    "cathedral",
    "mosque",
    "masjid",
    "synagogue",
    "shul",
    "temple",
    "gurdwara",
    "mandir",
    "abbey",
    "priory",
    "minster",
    "basilica",
    "oratory",
    "tabernacle",
    "shrine",
    "kingdom hall",
    "meeting house",
)


def _not_worship_pattern(boundary: str) -> str:
    """Word-bounded pattern, ``\\b`` for Python and ``\\y`` for PostgreSQL; the same rule."""

    def words(items: tuple[str, ...]) -> str:
        return "|".join(re.escape(w).replace("\\ ", " ") for w in items)

    b = boundary
    return f"(?i){b}({words(NOT_WORSHIP_WORDS)}){b}(?!.*{b}(?:{words(WORSHIP_WORDS)}){b})"


NOT_WORSHIP_NAME_SQL = _not_worship_pattern(r"\y")
_NOT_WORSHIP_NAME = re.compile(_not_worship_pattern(r"\b"), re.DOTALL)


def worship_class_heads() -> list[str]:
    """First parts of a packed class that name a religion (so may be a place of worship)."""
    heads = {v for v in _VOCABULARY if v not in {Religion.OTHER, Religion.UNKNOWN}}
    heads |= {k for k, v in _RELIGION_SYNONYMS.items() if v in heads}
    return sorted(heads)


def packed_class_not_worship(fclass: str | None, name: str | None) -> str | None:
    """Why a row with a packed class is not a place of worship, or None when it may be one.

    The import applies the same rule in SQL (``NOT_WORSHIP_NAME_SQL``, ``worship_class_heads``)
    over every staged row at once; this is its Python statement, for tests and tools.
    """
    fclass = (fclass or "").strip()
    if not fclass:
        return None
    if fclass.partition("_")[0].lower() not in worship_class_heads():
        return f"class {fclass} is not a place of worship"
    if name and (m := _NOT_WORSHIP_NAME.search(name)):
        return f"{name} looks like a {m[1].lower()}, not a place of worship (class {fclass})"
    return None


_MONTHS = {
    m.lower(): i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
        start=1,
    )
}
_PART_OF_DECADE = {"early": 2, "mid": 5, "late": 8}
_PART_OF_CENTURY = {"early": 10, "mid": 50, "late": 80}


def date_parse(raw: str | None) -> dt.date | None:
    """Best-effort date for free text; None when the text gives no year.

    Imprecise values resolve to a representative day (``1885`` → 1885-01-01,
    ``mid-1990s`` → 1995-01-01, ``early 1960's`` → 1962-01-01); the raw text is kept
    beside the result, so the precision is never lost.
    """
    if not raw:
        return None
    text = raw.strip().lower().replace("\u2019", "'")
    text = re.sub(r"^(c\.|ca\.|circa|~|before|after|about)\s*", "", text)
    try:
        if m := re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", text):
            return dt.date(int(m[1]), int(m[2]), int(m[3]))
        if m := re.fullmatch(r"(\d{4})-(\d{2})", text):
            return dt.date(int(m[1]), int(m[2]), 1)
        if m := re.fullmatch(r"(\d{4})", text):
            return dt.date(int(m[1]), 1, 1)
        if m := re.fullmatch(r"(\d{1,2})(?:st|nd|rd|th)?\s+([a-z]{3,9})\.?,?\s+(\d{4})", text):
            month = _MONTHS.get(m[2][:3])
            return dt.date(int(m[3]), month, int(m[1])) if month else None
        if m := re.fullmatch(r"([a-z]{3,9})\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})", text):
            month = _MONTHS.get(m[1][:3])
            return dt.date(int(m[3]), month, int(m[2])) if month else None
        if m := re.fullmatch(r"([a-z]{3,9})\.?\s+(\d{4})", text):
            month = _MONTHS.get(m[1][:3])
            return dt.date(int(m[2]), month, 1) if month else None
        if m := re.fullmatch(r"(?:(early|mid|late)[\s-]+)?(\d{3})0'?s", text):
            offset = _PART_OF_DECADE.get(m[1] or "", 0)
            return dt.date(int(m[2]) * 10 + offset, 1, 1)
        if m := re.fullmatch(
            r"(?:(early|mid|late)[\s-]+)?(\d{1,2})(?:st|nd|rd|th)\s+century", text
        ):
            offset = _PART_OF_CENTURY.get(m[1] or "", 1)
            return dt.date((int(m[2]) - 1) * 100 + offset, 1, 1)
    except ValueError:  # impossible day or month, e.g. 31 Feb
        return None
    return None
