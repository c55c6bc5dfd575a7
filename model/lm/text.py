"""Token ids to text deltas: incremental detokenising and stop sequences. No torch, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas.

    A byte-level BPE token can hold half of a UTF-8 character; decoding it alone gives
    U+FFFD. So we decode a short window (``prefix..end``) and emit only the part past
    the previous window's text, and hold back a delta that ends in U+FFFD until the
    next token completes the character (the approach of vLLM / text-generation-inference).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0   # start of the decode window
        self._read = 0     # end of the text already emitted, in tokens

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (may be empty)."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix: self._read])
        new_text = self._decode(self.ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text):]
            self._prefix, self._read = self._read, len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix_text = self._decode(self.ids[self._prefix: self._read])
        new_text = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text):]


class StopMatcher:
    """Finds stop sequences in streamed text, holding back a possible partial match.

    ``feed`` returns ``(text_to_emit, stopped)``. Text that might be the start of a stop
    sequence is kept until the next delta decides it; the stop sequence itself is never
    emitted (the OpenAI convention).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        if not self.stops:
            return delta, False
        text = self._pending + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._pending = ""
            return text[: min(hits)], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        self._pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """Held-back text when generation ends without a stop sequence."""
        out, self._pending = self._pending, ""
        return out
