"""Personal data in free text, found and replaced with placeholders. Pure text processing.

Used where a customer's words leave the transcript: the prompt sent to a *remote*
language model (``dialogue.generate.Writer``) and log lines (``bot.security``). The
stored conversation keeps the original text: agents need the customer's e-mail
address or phone number to help.

What is replaced, and how it is told apart from the numbers a shop chat is full of
(order numbers, prices, dates, event ids, IP addresses):

* e-mail addresses → ``[email]``;
* card numbers → ``[card]``: 13–19 digits, alone or in groups split by single spaces or
  hyphens, that pass the Luhn check (so most order or tracking numbers do not match);
* phone numbers → ``[phone]``: ``+`` or ``00`` and 7–15 digits; or 9–15 digits written
  in at least two groups (``030 1234 5678``, ``(555) 123-4567``, ``06.12.34.56.78``),
  no group longer than 8 digits (a 13-digit event id with ``-0`` is not a phone), that
  start with ``0`` or ``(`` or have a group of three digits or more ("sizes 38 40 42 44"
  is not a phone number); or a national number written in one piece: 10–15 digits
  starting with ``0``. An IPv4 address, a date or a time is never a phone number.

Each rule has a test in ``tests/test_security.py``. Pattern matching misses some
formats (a phone number written in words, a card number split oddly) and may hide an
unusual order number; ``docs/security.md`` says what is and is not covered.
"""

from __future__ import annotations

import re

EMAIL = "[email]"
PHONE = "[phone]"
CARD = "[card]"

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")
# Digits in groups separated by one space or hyphen, not glued to a word, and not the
# first part of an event id ("1732890000123-0"): a trailing "-digit" is not part of a card.
_CARD = re.compile(r"(?<![\w+-])\d(?:[ -]?\d){12,18}(?!\w|-\d)")
# A phone candidate: an optional + / 00 prefix, an optional "(area)", then digit groups
# joined by single separators. Checked further by _phone() (digit counts, group sizes).
# Group counts are bounded so that a long run of numbers is scanned in linear time.
_PHONE = re.compile(r"(?<![\w+.-])(?<!\d:)(?:\+|00)?(?:\(\d{1,5}\)[ .-]?)?\d{1,15}(?:[ .-]\d{1,15}){0,7}"
                    r"(?!\w|[.:-]\d)")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def luhn_ok(digits: str) -> bool:
    """True when ``digits`` passes the Luhn checksum that every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return CARD if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group()


def _is_phone(text: str) -> bool:
    if _IPV4.fullmatch(text) or _DATE.fullmatch(text):
        return False
    digits = re.sub(r"\D", "", text)
    if text.startswith(("+", "00")):
        return 7 <= len(digits) <= 15
    groups = re.findall(r"\d+", text)
    if len(groups) >= 2:
        # "sizes 38 40 42 44" is not a phone number; "06 12 34 56 78" and "555 123 4567" are.
        looks_dialled = digits.startswith("0") or text.startswith("(") or any(len(g) >= 3 for g in groups)
        return 9 <= len(digits) <= 15 and max(len(g) for g in groups) <= 8 and looks_dialled
    return 10 <= len(digits) <= 15 and digits.startswith("0")


def _phone(match: re.Match[str]) -> str:
    return PHONE if _is_phone(match.group()) else match.group()


def redact_pii(text: str) -> str:
    """``text`` with e-mail addresses, card numbers and phone numbers replaced by
    ``[email]``, ``[card]`` and ``[phone]``; everything else exactly as it was."""
    if not any(ch.isdigit() or ch == "@" for ch in text):
        return text  # the common case: nothing to look for
    text = _EMAIL.sub(EMAIL, text)
    text = _CARD.sub(_card, text)  # before phones: a grouped card number looks like one
    return _PHONE.sub(_phone, text)
