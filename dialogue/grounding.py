"""The grounding guard: a generated reply may only state facts that the evidence states.

The language model may wrap a grounded answer in conversational glue, but a reply
that states a number, price, date, duration, time, URL, e-mail address, phone
number or policy term that is not in the retrieved knowledge or the catalog is
replaced by the grounded answer: the bot never invents policy.

:func:`extract_facts` finds the checkable statements of a text and normalises
them ("€4.95", "4,95 €", "EUR 4.95" → money ``4.95 eur``; "30 days", "thirty
days", "30-day" → duration ``30 day``). :class:`Evidence` collects, generously,
everything the evidence texts state; :func:`unsupported` lists the reply's facts
the evidence does not support. :class:`GroundedStream` applies the check to a
streamed reply sentence by sentence and cancels the generation at the first
unsupported sentence.

Rules worth knowing (each has a test):

* A bare number needs the same whole number in the evidence: "5" is not supported
  by "€54.95" or "€4.95", only by a 5 written on its own ("3–5 business days",
  "5 items"). This holds for small counts too: "1 or 2 items" needs a 1 and a 2 in
  the evidence. Number *words* below ten ("one of our colleagues", "two options")
  are ordinary wording and not facts, unless they count a unit ("two days", "five
  percent", "five euros"); from "ten" up they are numbers.
* Order numbers and product ids (NW-10234, P1001) are numbers and must appear.
* A duration without a qualifier is supported by the same span with one ("3–5 days"
  by "3–5 business days"), not the other way round. Weeks count as 7 days, years
  as 12 months, hours as 60 minutes. A single value is not supported by a range
  that merely contains it ("within 5 business days" vs "5–7 business days").
* A price needs the same currency: "4.95 pounds", "US$4.95", "4.95 francs" and "4.95
  cents" are not supported by "€4.95" (a "$" with a country prefix, "C$" or "A$", is
  that country's dollar). A price with cents is also supported by the bare amount in a
  text that names the currency (catalog JSON: ``"price": 89.95, "currency": "EUR"``).
* A single "." before exactly three digits separates thousands: "€1.000" is 1000 euros.
* Policy terms ("free", "exchange", "store credit", "voucher", "warranty", ...) must
  appear in an equivalent form ("free of charge" = "no fee" = "free"). Presence is
  what is checked, not polarity: the evidence "we don't offer store credit" supports
  the term. Numbers and terms catch most inventions; a sentence that only rewords a
  negation is beyond a pattern-based guard.
* Pass the answer texts as evidence rather than FAQ questions ("Is there a
  cancellation fee?" states no fact), and add the customer's own message if the reply
  may echo its numbers.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# ------------------------------------------------------------------ vocabulary
_ONES = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
WORD_NUMBERS: dict[str, int] = {w: i + 1 for i, w in enumerate(_ONES)}
WORD_NUMBERS |= {w: i + 10 for i, w in enumerate(_TEENS)}
for _t, _tw in enumerate(_TENS):
    WORD_NUMBERS[_tw] = 20 + 10 * _t
    for _o, _ow in enumerate(_ONES):
        WORD_NUMBERS[f"{_tw}-{_ow}"] = WORD_NUMBERS[f"{_tw} {_ow}"] = 21 + 10 * _t + _o

_ONES_RE = "|".join(_ONES)
_WORDNUM = rf"(?:(?:{'|'.join(_TENS)})(?:[- ](?:{_ONES_RE}))?|{'|'.join(_TEENS)}|{_ONES_RE})"
_BIG_WORDNUM = rf"(?:(?:{'|'.join(_TENS)})(?:[- ](?:{_ONES_RE}))?|{'|'.join(_TEENS)})"
_DIGITS = r"\d+(?:[.,]\d+)*"
_NUM = rf"(?:{_DIGITS}|{_WORDNUM}\b)"
_AMOUNT = r"(?:\d{1,3}(?:[,.]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?)(?![\d])"
_DASH = r"(?:-|–|—|to|and|or|until|till)"

# A money key is an amount in a currency, and only the same key supports it: whatever
# names a currency must map to its own code, or "4.95 pounds" is read as the number 4.95
# and passes on "€4.95". Subunits are currencies of their own ("95 cents" is not "€0.95").
_CURRENCIES = {"€": "eur", "eur": "eur", "euro": "eur", "euros": "eur", "$": "usd", "usd": "usd",
               "dollar": "usd", "dollars": "usd", "£": "gbp", "gbp": "gbp", "pound": "gbp", "pounds": "gbp",
               "chf": "chf", "franc": "chf", "francs": "chf", "cad": "cad", "aud": "aud",
               "cent": "cent", "cents": "cent", "pence": "pence"}
# The country before "$" or "dollars" says which dollar; a prefix not listed here keeps
# its own code ("NT$" → "nt$"), so it is never plain dollars either.
_DOLLARS = {"us": "usd", "u.s.": "usd", "american": "usd", "c": "cad", "ca": "cad", "canadian": "cad",
            "a": "aud", "au": "aud", "australian": "aud", "nz": "nzd", "hk": "hkd", "s": "sgd", "sg": "sgd"}
_CURRENCY_CODE = r"EUR|USD|GBP|CHF|CAD|AUD"
_CURRENCY_NAME = (r"euros?|(?:(?:US|U\.S\.|American|Canadian|Australian|Swiss|British)\s+)?"
                  r"(?:dollars?|pounds?|francs?)")
_DOLLAR_SIGN = r"(?:[A-Z]{1,2})?\$"  # "$", "US$", "C$", "A$"
_UNITS = {"minute": ("minute", 1), "min": ("minute", 1), "hour": ("minute", 60), "hr": ("minute", 60),
          "h": ("minute", 60), "day": ("day", 1), "week": ("day", 7), "wk": ("day", 7),
          "month": ("month", 1), "year": ("month", 12), "yr": ("month", 12)}
_UNIT_NAMES = {"min": "minute", "hr": "hour", "h": "hour", "wk": "week", "yr": "year"}
_UNIT = r"(?:minutes?|mins?|hours?|hrs?|h|days?|weeks?|wks?|months?|years?|yrs?)"
_QUAL = r"(?:business|working|calendar)"

_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december"]
_MONTH_RE = (r"(?:(?:January|February|March|April|May|June|July|August|September|October|November"
             r"|December)(?![a-z])|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)(?![a-z])\.?)")
_YEAR = r"(?P<y>\d{4})\b(?![-/.]\d)"
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_DAY_ABBR = {"mon": 0, "tue": 1, "tues": 1, "wed": 2, "thu": 3, "thur": 3, "thurs": 3, "fri": 4,
             "sat": 5, "sun": 6}

# Policy terms: (key, pattern). Order matters: an earlier, longer phrase claims its
# words ("no restocking fee" is "free", not "fee"; "price guarantee" is "price match").
_POLICY: list[tuple[str, str]] = [
    ("free", r"\bfree[- ]of[- ]charge\b|\bfor free\b|\bat no (?:extra |additional )?(?:cost|charge)\b"
             r"|\bno (?:extra |additional |hidden |[a-z]+ )?(?:fee|charge|cost)s?\b"
             r"|\bwithout (?:any )?(?:extra )?(?:charge|cost|fee)s?\b|\bcosts? nothing\b|\bcomplimentary\b"
             r"|\bfree\b"),
    ("price match", r"\bprice[- ]match\w*|\bmatch (?:the |a |any )?(?:lower |competitors?'? )?prices?\b"
                    r"|\bprice (?:guarantee|protection|adjustment)s?\b"),
    ("guarantee", r"\bmoney[- ]back guarantee\b|\bsatisfaction guarantee\b|\bguarantee[ds]?\b"),
    ("lifetime", r"\blifetime\b"),
    ("warranty", r"\bwarrant(?:y|ies)\b"),
    ("store credit", r"\b(?:store|shop) credit\b|\bcredit notes?\b"),
    ("voucher", r"\bvouchers?\b|\bcoupons?\b|\bpromo(?:tional)? codes?\b|\bdiscount codes?\b"
                r"|\bgift ?cards?\b|\bgift certificates?\b"),
    ("discount", r"\bdiscount\w*|\breduced prices?\b|\bprice reductions?\b|\bmarked down\b"
                 r"|(?<=% )off\b|(?<=%)off\b|\bper ?cent off\b"),
    ("sale", r"\bon sale\b|(?<!for )\bsale\b"),
    ("exchange", r"\bexchang\w*|\bswap\w*"),
    ("refund", r"\brefund\w*|\bmoney back\b|\breimburs\w*"),
    ("fee", r"\bfees?\b|\bsurcharges?\b|\bhandling charges?\b"),
    ("cash on delivery", r"\bcash on delivery\b|\bpay(?:ing)? (?:in )?cash\b"),
    ("instalments", r"\binstall?ments?\b|\bpay later\b|\bfinancing\b"),
    ("pre-order", r"\b(?:pre|back)[- ]?order\w*"),
    ("pickup", r"\bclick[- ](?:and|&)[- ]collect\b|\bpick[- ]?ups?\b|\bcollect(?:ion)? in[- ]store\b"
               r"|\bin[- ]store\b"),
    ("parcel locker", r"\bparcel lockers?\b|\bpackstations?\b"),
    ("express", r"\bexpress\b(?!\s+(?:my|our|gratitude|thanks|interest))"),
    ("gift wrapping", r"\bgift[- ]?wrap\w*"),
    ("loyalty", r"\bloyalty\b|\b(?:reward|bonus) points?\b|\bcashback\b"),
]
_POLICY_RES = [(key, re.compile(pattern, re.I)) for key, pattern in _POLICY]
_NEGATION_BEFORE = re.compile(r"(?:\bnot|n't|\bcannot|\bno)\s+(?:\w+\s+)?$", re.I)


@dataclass(frozen=True)
class Fact:
    """A checkable statement in a text."""

    kind: str  # "money" | "percent" | "number" | "duration" | "date" | "time" | "url" | "email" | ...
    text: str  # as written
    key: str  # normalised form used for comparison: "4.95 eur", "30 day", "shop.example/returns"


@dataclass(frozen=True)
class _Found:
    start: int
    end: int
    kind: str
    key: str


_Extractor = Callable[[str], Iterator[_Found]]


# --------------------------------------------------------------- normalising
# "€1.000" is a thousand euros, as parse_budget (dialogue/entities.py) reads a budget;
# a head of 0 or of four digits ("0.500", "1234.567") cannot be a thousands group.
_DOT_THOUSANDS = re.compile(r"[1-9]\d{0,2}\.\d{3}")


def number_value(text: str) -> Decimal | None:
    """The value of "4.95", "4,95", "1,000", "1.000", "1.000,50" or "thirty"; None if it is neither."""
    word = text.lower().strip()
    if word in WORD_NUMBERS:
        return Decimal(WORD_NUMBERS[word])
    if word in ("a", "an"):
        return Decimal(1)
    digits = text.replace(" ", "")
    if "," in digits and "." in digits:  # the later separator is the decimal one
        decimal = "," if digits.rfind(",") > digits.rfind(".") else "."
        thousands = "." if decimal == "," else ","
        digits = digits.replace(thousands, "").replace(decimal, ".")
    elif digits.count(",") == 1 and len(digits.split(",")[1]) != 3:
        digits = digits.replace(",", ".")  # "4,95": a decimal comma
    elif digits.count(".") > 1 or digits.count(",") >= 1 or _DOT_THOUSANDS.fullmatch(digits):
        digits = digits.replace(",", "").replace(".", "")  # "1,000", "1.000", "1.000.000": thousands
    try:
        return Decimal(digits)
    except InvalidOperation:
        return None


def _fmt(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _money_key(amount: Decimal, currency: str) -> str:
    text = str(int(amount)) if amount == amount.to_integral_value() else str(amount.quantize(Decimal("0.01")))
    return f"{text} {currency}"


def _url_key(url: str) -> str:
    url = re.sub(r"^[a-z][a-z0-9+.-]*://", "", url.lower())
    url = url.removeprefix("www.")
    return url.rstrip("/")


# ---------------------------------------------------------------- extractors
_Key = Callable[[re.Match[str]], str | None]


def _scan(pattern: str, kind: str, key: _Key, flags: int = re.I) -> _Extractor:
    compiled = re.compile(pattern, flags)

    def extract(text: str) -> Iterator[_Found]:
        for m in compiled.finditer(text):
            value = key(m)
            if value is not None:
                span = m.span("fact") if "fact" in compiled.groupindex else m.span()
                yield _Found(span[0], span[1], kind, value)

    return extract


_TRAILING = ".,;:!?)]}'\""


def _urls(pattern: str) -> _Extractor:
    compiled = re.compile(pattern, re.I)

    def extract(text: str) -> Iterator[_Found]:
        for m in compiled.finditer(text):
            url = m.group(0).rstrip(_TRAILING)  # "see example.com/returns." ends the sentence
            yield _Found(m.start(), m.start() + len(url), "url", _url_key(url))

    return extract


def _email(m: re.Match[str]) -> str:
    return m.group(0).lower()


def _phone(m: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", m.group(0))
    return digits.removeprefix("00") if len(digits) >= 7 else None


def _iso_date(m: re.Match[str]) -> str | None:
    year, month, day = int(m["y"]), int(m["m"]), int(m["d"])
    return f"{year:04d}-{month:02d}-{day:02d}" if 1 <= month <= 12 and 1 <= day <= 31 else None


def _eu_date(m: re.Match[str]) -> str | None:
    day, month, year = int(m["d"]), int(m["m"]), int(m["y"])
    year = year + 2000 if year < 100 else year
    return f"{year:04d}-{month:02d}-{day:02d}" if 1 <= month <= 12 and 1 <= day <= 31 else None


def _month_number(name: str) -> int:
    return next(i for i, full in enumerate(_MONTHS, 1) if full.startswith(name.lower().rstrip(".")[:3]))


def _month_date(m: re.Match[str]) -> str | None:
    groups = m.groupdict()
    month, day, year = _month_number(groups["mon"]), groups.get("d"), groups.get("y")
    if day is None:
        return f"{int(year or 0):04d}-{month:02d}"
    if not 1 <= int(day) <= 31:
        return None
    return f"{int(year):04d}-{month:02d}-{int(day):02d}" if year else f"{month:02d}-{int(day):02d}"


def _currency(text: str) -> str | None:
    """The code of a currency as written: "€", "EUR", "euros" → "eur"; "US$", "US dollars" → "usd"."""
    words = text.lower().split()
    name = words[-1]
    if name.endswith("$") and name != "$":
        return _DOLLARS.get(name[:-1], name)
    if len(words) > 1 and name.startswith("dollar"):
        return _DOLLARS.get(words[0], name)
    return _CURRENCIES.get(name)


def _money(m: re.Match[str]) -> str | None:
    amount = number_value(m["a1"] or m["a2"])
    currency = _currency(m["c1"] or m["c2"])
    return None if amount is None or currency is None else _money_key(amount, currency)


def _percent(m: re.Match[str]) -> str | None:
    value = number_value(m["n"])
    return None if value is None else f"{_fmt(value)}%"


def _time(m: re.Match[str]) -> str | None:
    groups = m.groupdict()
    hour, minute = int(groups["h"]), int(groups["m"] or 0)
    ampm = (groups.get("ap") or "").lower().replace(".", "")
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    return f"{hour:02d}:{minute:02d}" if hour <= 24 and minute < 60 else None


def _duration(m: re.Match[str]) -> str | None:
    groups = m.groupdict()
    low = number_value(groups["a"])
    high = number_value(groups["b"]) if groups.get("b") else None
    if low is None or (groups.get("b") and high is None):
        return None
    unit = groups["u"].lower()
    unit = unit[:-1] if unit.endswith("s") else unit
    unit = _UNIT_NAMES.get(unit, unit)
    qual = (groups["q"] or "").lower().replace("working", "business").replace("calendar", "")
    span = _fmt(low) if high is None else f"{_fmt(low)}-{_fmt(high)}"
    return " ".join(x for x in (span, qual, unit) if x)


def _code(m: re.Match[str]) -> str:
    return m.group(0).lower().replace("-", "")


def _number(m: re.Match[str]) -> str | None:
    text = m.string
    line_start = text.rfind("\n", 0, m.start()) + 1
    if not text[line_start:m.start()].strip() and re.match(r"[.)]\s", text[m.end():m.end() + 2]):
        return None  # "1. Start your return": a list marker, not a statement
    value = number_value(m["fact"])
    return None if value is None else _fmt(value)


def _weekday(m: re.Match[str]) -> str:
    return m.group(0).lower().rstrip("s")


def _holiday(m: re.Match[str]) -> str | None:
    before = m.string[max(0, m.start() - 7):m.start()].lower()
    if before.endswith(("merry ", "happy ")):
        return None  # a greeting, not a promise
    key = m.group(0).lower().replace("xmas", "christmas").replace("'s", "").replace("’s", "")
    return re.sub(r"\s+(?:eve|day)$", "", key) if key.startswith("new year") else key


def _relative(m: re.Match[str]) -> str:
    return re.sub(r"[- ](?:business|working)", "", m.group(0).lower()).replace("-", " ")


def _fixed(key: str) -> Callable[[re.Match[str]], str]:
    return lambda m: key


# The reply extractors, in priority order: a later one never sees text an earlier one
# claimed, so "€4.95" is money and not also the number 4.95.
_EXTRACTORS: list[_Extractor] = [
    # The look-behinds make a match start only where a word starts: without them a long
    # run of letters is rescanned from every position (quadratic).
    _scan(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+", "email", _email),
    _urls(r"(?:https?://|www\.)[^\s<>\"'()\[\]]+"),
    _urls(r"(?<![\w.-])(?:[a-z0-9-]+\.)+(?:com|org|net|eu|de|fr|nl|es|it|at|be|io|co|uk|shop|store|example|info)\b"
          r"(?:/[^\s<>\"'()\[\]]*)?"),
    _urls(r"(?<![\w/.:])/[A-Za-z0-9_.~-]+(?:/[A-Za-z0-9_.~-]+)+/?"),
    _scan(r"\b(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})\b", "date", _iso_date),
    _scan(r"\b(?P<d>\d{1,2})[./](?P<m>\d{1,2})[./](?P<y>\d{4}|\d{2})\b", "date", _eu_date),
    _scan(r"(?<![\w+])(?:\+|00)\d[\d ()./-]{5,}\d(?!\w)"
          r"|(?<![\w+])\(?0\d{1,4}\)?[ ./-]?\d[\d ./-]{4,}\d(?!\w)", "phone", _phone),
    _scan(rf"(?:(?<![\w])(?P<c1>{_CURRENCY_CODE}|€|£|{_DOLLAR_SIGN})\s?(?P<a1>{_AMOUNT}))"
          rf"|(?:(?<![\w.,])(?P<a2>{_AMOUNT}|{_WORDNUM})\s?"
          rf"(?P<c2>€|£|{_DOLLAR_SIGN}|(?:{_CURRENCY_CODE}|{_CURRENCY_NAME}|cents?|pence)\b))",
          "money", _money),
    _scan(rf"(?<![\w.,])(?P<n>{_NUM})\s?(?:%|percent\b|per cent\b|pct\b)", "percent", _percent),
    _scan(r"(?<![\w:.])(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s?(?P<ap>[ap]\.?m\b\.?)", "time", _time),
    _scan(r"(?<![\w:.])(?P<h>\d{1,2}):(?P<m>\d{2})(?!\d)", "time", _time),
    _scan(r"(?<![\w/])24/7(?![\w/])", "time", _fixed("24/7")),
    _scan(r"\b(?:noon|midday)\b", "time", _fixed("12:00")),
    _scan(r"\bmidnight\b", "time", _fixed("00:00")),
    _scan(r"\bhalf an hour\b", "duration", _fixed("30 minute")),
    _scan(rf"(?<![\w.,])(?:between\s+)?(?P<a>{_NUM})(?:\s*{_DASH}\s*(?P<b>{_NUM}))?(?:\s*-?\s*)"
          rf"(?:(?P<q>{_QUAL})(?:\s+|-))?(?P<u>{_UNIT})(?![\w])", "duration", _duration),
    _scan(rf"\b(?:within|in|for|after|under|than|about|around|only|just|up to|over|takes?|approximately)\s+"
          rf"(?P<fact>(?P<a>an?)\s+(?:(?P<q>{_QUAL})\s+)?(?P<u>{_UNIT})(?![\w]))", "duration", _duration),
    _scan(rf"\b(?P<d>\d{{1,2}})(?:st|nd|rd|th)?(?:\s+of)?\s+(?P<mon>{_MONTH_RE})(?:,?\s+{_YEAR})?",
          "date", _month_date, flags=0),
    _scan(rf"\b(?P<mon>{_MONTH_RE})\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+{_YEAR})?",
          "date", _month_date, flags=0),
    _scan(rf"\b(?P<mon>{_MONTH_RE})\s+{_YEAR}", "date", _month_date, flags=0),
    _scan(r"\b(?:January|February|March|April|June|July|August|September|October|November|December)\b",
          "date", lambda m: m.group(0).lower(), flags=0),
    _scan(r"\b(?:christmas|xmas|easter|black friday|cyber monday|boxing day"
          r"|new year(?:['’]s)?(?: eve| day)?)\b", "date", _holiday),
    _scan(rf"\b(?:{'|'.join(_WEEKDAYS)})s?\b", "date", _weekday),
    _scan(r"\b(?:tomorrow|overnight|next[- ](?:(?:business|working)[- ])?day|same[- ]day"
          r"|next week|this week)\b", "date", _relative),
    _scan(r"\b[A-Z]{1,4}-?\d{2,}[A-Z0-9]*\b", "number", _code, flags=0),
    _scan(rf"(?<![\w.,])(?P<fact>{_DIGITS})(?:st|nd|rd|th)?", "number", _number),
    _scan(rf"\b(?P<fact>{_BIG_WORDNUM})\b", "number", _number),
]


def _policy(text: str) -> Iterator[_Found]:
    for key, pattern in _POLICY_RES:
        for m in pattern.finditer(text):
            if key == "free" and m.group(0).lower() == "free" and _casual_free(text, m.start(), m.end()):
                continue
            if key == "guarantee" and _NEGATION_BEFORE.search(text[max(0, m.start() - 25):m.start()]):
                continue  # "I can't guarantee that": a hedge, not a promise
            yield _Found(m.start(), m.end(), "policy", key)


def _casual_free(text: str, start: int, end: int) -> bool:
    """"feel free", "free to choose", "hands-free": the word, not a price."""
    before, after = text[max(0, start - 5):start].lower(), text[end:end + 4].lower()
    return before.endswith("feel ") or before.endswith("-") or after.startswith((" to ", "-"))


def _find(text: str) -> list[_Found]:
    """The facts of ``text`` with their spans; each extractor sees the text earlier ones left.

    Claimed text is masked rather than skipped: in "over €60 and 2 days" the duration
    pattern must not start at the "60" that money already took, and then find nothing.
    """
    masked = text
    found: list[_Found] = []
    for extract in [*_EXTRACTORS, _policy]:
        for f in list(extract(masked)):
            if f.end > f.start and "\0" not in masked[f.start:f.end]:
                found.append(f)
                masked = masked[:f.start] + "\0" * (f.end - f.start) + masked[f.end:]
    return sorted(found, key=lambda f: f.start)


def extract_facts(text: str) -> list[Fact]:
    """The checkable statements of ``text``, in reading order."""
    return [Fact(f.kind, text[f.start:f.end], f.key) for f in _find(text)]


# ------------------------------------------------------------------ evidence
_NUMBER_TOKEN = re.compile(r"\d+(?:[.,]\d+)*")
_WORD_TOKEN = re.compile(rf"\b{_WORDNUM}\b", re.I)
_CODE_ANYCASE = re.compile(r"\b[A-Za-z]{1,4}-?\d{2,}[A-Za-z0-9]*\b")
# A currency a text names (not a subunit: "cents" names no price in it).
_CURRENCY_MENTION = re.compile(rf"€|£|(?:\b[A-Z]{{1,2}})?\$|\b(?:{_CURRENCY_CODE}|{_CURRENCY_NAME})\b", re.I)
# Abbreviations only capitalised: "Mon–Fri" is a range, "I sat" and "the sun" are not days.
_DAY_NAME = (rf"(?:(?i:{'|'.join(_WEEKDAYS)})"
             rf"|(?:{'|'.join(a.capitalize() for a in sorted(_DAY_ABBR, key=len, reverse=True))})\b\.?)")
_DAY_RANGE = re.compile(rf"\b({_DAY_NAME})\s*(?:-|–|—|to|through|until|till)\s*({_DAY_NAME})")
_DAY_ANY = re.compile(rf"\b{_DAY_NAME}")
# Where a reply clause ends (policy terms said in one clause must be stated together),
# and where an evidence sentence ends.
_CLAUSE_END = re.compile(r"[,;:–—]\s|\s(?:and|but|or|while|whereas|although|so)\s|[.!?…]+(?:\s|$)|\n", re.I)
_SENTENCE_SPLIT = re.compile(r"[.!?…]+(?:\s|$)|\n")
_DURATION_KEY = re.compile(r"(?P<lo>[\d.]+)(?:-(?P<hi>[\d.]+))? (?:(?P<q>business) )?(?P<u>\w+)")


def _day_index(name: str) -> int:
    name = name.lower().rstrip(".")
    return _WEEKDAYS.index(name) if name in _WEEKDAYS else _DAY_ABBR[name]


def _duration_canon(key: str) -> tuple[Decimal, Decimal, str, str] | None:
    """("3-5 business day") -> (3, 5, "business", "day"), in minutes, days or months."""
    m = _DURATION_KEY.fullmatch(key)
    if m is None:
        return None
    base, factor = _UNITS.get(m["u"], (m["u"], 1))
    low = Decimal(m["lo"]) * factor
    high = Decimal(m["hi"]) * factor if m["hi"] else low
    return low.normalize(), high.normalize(), m["q"] or "", base


def _number_tokens(text: str) -> Iterator[str]:
    for m in _NUMBER_TOKEN.finditer(text):
        token = m.group(0)
        # "36,37,38" (a list) is three numbers; "1,000" and "4,95" are one.
        listed = token.count(",") > 1 and any(len(p) != 3 for p in re.split(r"[.,]", token)[1:])
        for piece in token.split(",") if listed else [token]:
            value = number_value(piece)
            if value is not None:
                yield _fmt(value)


class Evidence:
    """Everything a set of evidence texts states, collected generously.

    Each extractor also runs over the whole text on its own (so "€54.95" supports the
    money and the number 54.95, an e-mail address its domain), and forms a reply may
    use for the same fact are added: weekday ranges stand for the days between, a full
    date supports its month, a price in a text that names its currency supports that
    price written with the currency. Build one per turn and check every sentence with it.
    """

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = tuple(texts)
        self._keys: set[tuple[str, str]] = set()
        self._durations: set[tuple[Decimal, Decimal, str, str]] = set()
        self._policy_sentences: list[frozenset[str]] = []  # the policy terms of each evidence sentence
        for text in self.texts:
            self._collect(text)
            for sentence in _SENTENCE_SPLIT.split(text):
                terms = frozenset(f.key for f in _policy(sentence))
                if len(terms) > 1:
                    self._policy_sentences.append(terms)

    def _collect(self, text: str) -> None:
        add = self._keys.add
        independent = (f for extract in [*_EXTRACTORS, _policy] for f in extract(text))
        for f in [*_find(text), *independent]:
            add((f.kind, f.key))
            if f.kind == "duration" and (canon := _duration_canon(f.key)) is not None:
                self._durations.add(canon)
                # "3-5 days" is said of "3-5 business days" (not the other way round)
                self._durations.add((*canon[:2], "", canon[3]))
            if f.kind == "date" and re.fullmatch(r"(\d{4}-)?\d{2}-\d{2}|\d{4}-\d{2}", f.key):
                parts = f.key.split("-")
                month = int(parts[1] if len(parts[0]) == 4 else parts[0])
                add(("date", _MONTHS[month - 1]))
                if len(parts) == 3:
                    add(("date", f"{parts[1]}-{parts[2]}"))
                    add(("date", f"{parts[0]}-{parts[1]}"))
        numbers = set(_number_tokens(text))
        numbers |= {str(WORD_NUMBERS[w.lower().replace(" ", "-")]) for w in _WORD_TOKEN.findall(text)}
        numbers |= {m.group(0).lower().replace("-", "") for m in _CODE_ANYCASE.finditer(text)}
        self._keys |= {("number", n) for n in numbers}
        currencies = {code for m in _CURRENCY_MENTION.finditer(text) if (code := _currency(m.group(0)))}
        for n in numbers:  # catalog data: "price": 89.95, "currency": "EUR"
            # n is already a value as _fmt writes it: read back, "12.345" would be thousands
            value = Decimal(n) if re.fullmatch(r"\d+\.\d+", n) else None
            if value is not None and value != value.to_integral_value():
                self._keys |= {("money", _money_key(value, c)) for c in currencies}
        for m in _DAY_RANGE.finditer(text):
            first, last = _day_index(m[1]), _day_index(m[2])
            for step in range((last - first) % 7 + 1):
                add(("date", _WEEKDAYS[(first + step) % 7]))
        for m in _DAY_ANY.finditer(text):
            add(("date", _WEEKDAYS[_day_index(m.group(0))]))

    def supports(self, fact: Fact) -> bool:
        """Whether the evidence states ``fact`` (in some equivalent form)."""
        if (fact.kind, fact.key) in self._keys:
            return True
        if fact.kind == "duration" and (canon := _duration_canon(fact.key)) is not None:
            return canon in self._durations
        return False

    def unsupported(self, text: str) -> list[Fact]:
        """The facts of ``text`` the evidence does not state, in reading order, each (kind, key) once.

        Besides each fact on its own, policy terms said in one clause must be stated in one
        evidence sentence: "express delivery is free" is not grounded by "standard delivery
        is free" and "express delivery costs €9.95".
        """
        found = _find(text)
        bad = [f for f in found if not self.supports(Fact(f.kind, "", f.key))]
        ends = [m.end() for m in _CLAUSE_END.finditer(text)]
        clauses: dict[int, list[_Found]] = {}
        for f in found:
            if f.kind == "policy" and f not in bad:
                clauses.setdefault(bisect.bisect_right(ends, f.start), []).append(f)
        for facts in clauses.values():
            terms = {f.key for f in facts}
            if len(terms) > 1 and not any(terms <= sentence for sentence in self._policy_sentences):
                bad.extend(facts)
        out: list[Fact] = []
        seen: set[tuple[str, str]] = set()
        for f in sorted(bad, key=lambda f: f.start):
            if (f.kind, f.key) not in seen:
                seen.add((f.kind, f.key))
                out.append(Fact(f.kind, text[f.start:f.end], f.key))
        return out


def unsupported(reply: str, evidence: Iterable[str] | Evidence) -> list[Fact]:
    """Facts of ``reply`` absent from all evidence texts (empty: the reply may be sent)."""
    ground = evidence if isinstance(evidence, Evidence) else Evidence(evidence)
    return ground.unsupported(reply)


# ----------------------------------------------------------------- streaming
# A sentence ends at ., ! or ? (with closing quotes or brackets) followed by
# whitespace, or at a line break. Requiring the whitespace keeps "€4." + "95" whole
# when a chunk boundary falls inside a price.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+|\n+")


class GroundedStream:
    """Wraps an async iterator of text chunks (an LM stream) and lets only grounded text through.

    Text is released sentence by sentence, and only sentences whose facts are all
    supported by the evidence. At the first unsupported sentence the stream stops
    consuming, closes the source with ``aclose()`` so that the generation is
    cancelled, and records the facts in :attr:`blocked`; the caller then sends the
    grounded answer instead of (or after) :attr:`released`. Closing this stream
    early (``break``, cancellation) closes the source too.
    """

    def __init__(self, chunks: AsyncIterator[str], evidence: Sequence[str] | Evidence) -> None:
        self._source = chunks
        self._evidence = evidence if isinstance(evidence, Evidence) else Evidence(evidence)
        self._started = False
        self.blocked: list[Fact] = []  # the unsupported facts of the sentence that stopped the stream
        self.released = ""  # all text released so far

    def __aiter__(self) -> AsyncIterator[str]:
        if self._started:
            raise RuntimeError("a GroundedStream can be iterated only once")
        self._started = True
        return self._run()

    async def _run(self) -> AsyncIterator[str]:
        buffer = ""
        try:
            async for chunk in self._source:
                buffer += chunk
                while (m := _SENTENCE_END.search(buffer)) is not None:
                    sentence, buffer = buffer[:m.end()], buffer[m.end():]
                    if not self._admit(sentence):
                        return
                    yield sentence
            if buffer and self._admit(buffer):
                yield buffer
        finally:
            await self._close_source()

    def _admit(self, sentence: str) -> bool:
        facts = self._evidence.unsupported(sentence)
        if facts:
            self.blocked = facts
            return False
        self.released += sentence
        return True

    async def _close_source(self) -> None:
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()
