"""Personal data in free text, found and replaced with placeholders. Pure text processing.

Used where a customer's words leave the transcript: the prompt sent to a *remote*
language model (``dialogue.generate.Writer``) and log lines (``bot.security``). The
stored conversation keeps the original text: agents need the customer's e-mail
address or phone number to help.

What is replaced, and how it is told apart from the numbers a shop chat is full of
(order numbers, prices, dates, event ids, IP addresses):

* e-mail addresses → ``[email]``, internationalised domains (``jörg@müller.de``) too;
* card numbers → ``[card]``: 13–19 digits, alone or in groups split by single spaces or
  hyphens, that pass the Luhn check (so most order or tracking numbers do not match).
  When a run of numbers is longer ("4111 1111 1111 1111 12/25", a CVV after it, a number
  before it), the card-shaped part of it that passes (one piece, ``4-4-4-4``, ``4-6-5``)
  is replaced. An event id (``1732890000123-0``) is never a card;
* phone numbers → ``[phone]``: ``+`` or ``00`` and 7–15 digits; or 9–15 digits written
  in groups, none longer than 8 digits (a 13-digit event id is not a phone), that either
  start with ``0`` or ``(`` (``030 1234 5678``, ``(555) 123-4567``, ``06.12.34.56.78``),
  or form at least three groups shaped like one number (``555-123-4567``,
  ``1 800 555 0199``) rather than a list of alike numbers ("orders 10234 10235", "120
  150 200 euros", "2023 2024 2025", "ids 2024-001 2024-002") and not ending in a lone
  check digit (``978-3-16-148410-0``); or a national number written in one piece: 10–15
  digits starting with ``0``. An IPv4 address, a date or a time is never a phone number.

Each rule has a test in ``tests/test_security.py``. Pattern matching misses some
formats (a phone number written in words, a card number split oddly) and may hide an
unusual order number; ``docs/security.md`` says what is and is not covered.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from itertools import pairwise

EMAIL = "[email]"
PHONE = "[phone]"
CARD = "[card]"

# Domain labels may hold any letter or digit (IDNs: "müller.de"), as the local part may.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
# A run of numbers separated by a hyphen or spaces (one to three: a typo's double space),
# not glued to a word in front; _cards() finds the card numbers in it. Each group is taken
# whole ("\d+" then a required separator), so a run is matched once, in linear time.
_RUN = re.compile(r"(?<![\w+-])\d+(?:(?: {1,3}|-)\d+)*")
_GROUP = re.compile(r"\d+")
_WORD = re.compile(r"\w")
ID_HEAD = 13  # digits of an event id's first part (Unix ms): "1732890000123-0" is no card
# A phone candidate: an optional + / 00 prefix (with its country code when an "(area)"
# follows: "+49 (0)30 …"), an optional "(area)", then digit groups joined by single
# separators. Checked further by _phone() (digit counts, group sizes). Group counts are
# bounded so that a long run of numbers is scanned in linear time.
_PHONE = re.compile(r"(?<![\w+.-])(?<!\d:)(?:(?:\+|00)\d{1,4}[ .-]?(?=\()|\+|00)?(?:\(\d{1,5}\)[ .-]?)?"
                    r"\d{1,15}(?:[ .-]\d{1,15}){0,7}(?!\w|[.:-]\d)")
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


def _card_shaped(lengths: list[int]) -> bool:
    """How card numbers are written: in one piece, 4-4-4-4 (the last group 1–4 digits long,
    13–19 in all), or 4-6-5 / 4-6-4 (American Express, Diners Club)."""
    if len(lengths) == 1 or lengths in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(n == 4 for n in lengths[:-1]) and 1 <= lengths[-1] <= 4


def _cards(match: re.Match[str]) -> str:
    text = match.group()
    groups = [(g.start(), g.end()) for g in _GROUP.finditer(text)]
    seps = [text[a[1]:b[0]] for a, b in pairwise(groups)]  # seps[k]: spaces or "-" after groups[k]
    digits = [b - a for a, b in groups]
    # An event id ("<ms>-<seq>"): its hyphen joins two parts of one id, never a card's groups.
    if any(sep == "-" and digits[k] >= ID_HEAD for k, sep in enumerate(seps)):
        return text
    end = len(groups)
    if _WORD.match(match.string, match.end()):
        end -= 1  # the last group is glued to a word ("1234abc"): not a card's
    if end == len(groups) and 13 <= sum(digits) <= 19 and luhn_ok(re.sub(r"\D", "", text)):
        return CARD  # the whole run, however it is grouped (the common case)
    # A longer run: a card with an expiry date, a CVV or another number beside it. Try the
    # card-shaped stretches that begin and end where a space splits the run (a hyphen binds
    # the groups it joins), longest first, left to right.
    total = [0]  # total[k]: digits in groups[:k]
    for n in digits:
        total.append(total[-1] + n)
    out, i, done = [], 0, 0
    while i < end:
        if digits[i] != 4 and not 13 <= digits[i] <= 19:
            i += 1  # no card starts here: it opens with four digits, or is written in one piece
            continue
        # groups[i:j] holds 13–19 digits
        longest, shortest = bisect_right(total, total[i] + 19) - 1, bisect_left(total, total[i] + 13)
        for j in range(min(end, longest), max(i, shortest - 1), -1):
            if ((i == 0 or seps[i - 1] != "-") and (j == len(groups) or seps[j - 1] != "-")
                    and _card_shaped(digits[i:j])
                    and luhn_ok(re.sub(r"\D", "", text[groups[i][0]:groups[j - 1][1]]))):
                out += [text[done:groups[i][0]], CARD]
                done, i = groups[j - 1][1], j
                break
        else:
            i += 1
    return "".join(out) + text[done:]


def _is_phone(text: str) -> bool:
    if _IPV4.fullmatch(text) or _DATE.fullmatch(text):
        return False
    digits = re.sub(r"\D", "", text)
    if text.startswith(("+", "00")):
        return 7 <= len(digits) <= 15
    lengths = [len(g) for g in _GROUP.findall(text)]
    if len(lengths) == 1:
        return 10 <= len(digits) <= 15 and digits.startswith("0")
    if not 9 <= len(digits) <= 15 or max(lengths) > 8:
        return False
    if digits.startswith("0") or text.startswith("("):
        return True  # a trunk prefix or an area code in brackets: dialled ("06 12 34 56 78")
    # No prefix: "555 123 4567" and "1-800-555-0199" are phone numbers; "orders 10234
    # 10235", "120 150 200 euros", "2023 2024 2025" and "2024-001 2024-002" are lists of
    # alike numbers (group lengths that repeat), "978-3-16-148410-0" ends in a check digit.
    return len(lengths) >= 3 and lengths[-1] >= 2 and not _repeats(lengths)


def _repeats(lengths: list[int]) -> bool:
    """True when ``lengths`` is one pattern repeated (3,3,3 or 4,3,4,3): a list of numbers."""
    return any(all(lengths[k] == lengths[k - p] for k in range(p, len(lengths)))
               for p in range(1, len(lengths) // 2 + 1))


def _phone(match: re.Match[str]) -> str:
    return PHONE if _is_phone(match.group()) else match.group()


def redact_pii(text: str) -> str:
    """``text`` with e-mail addresses, card numbers and phone numbers replaced by
    ``[email]``, ``[card]`` and ``[phone]``; everything else exactly as it was."""
    if not any(ch.isdigit() or ch == "@" for ch in text):
        return text  # the common case: nothing to look for
    text = _EMAIL.sub(EMAIL, text)
    text = _RUN.sub(_cards, text)  # before phones: a grouped card number looks like one
    return _PHONE.sub(_phone, text)
