"""What a call costs: USD per million tokens by model family, and the cost of one usage record.

Cache writes cost 1.25x the input price for the 5-minute TTL and 2x for the 1-hour TTL; cache
reads cost 0.1x. A model not in the table is priced at the most expensive known rate, so a cost
cap errs on the safe side.
"""
from __future__ import annotations

from loop.agents.base import Usage

# (prefix of the model name, input $/MTok, output $/MTok); the first matching prefix wins, so a
# longer prefix comes before a shorter one of the same family. Anthropic's published list prices.
PRICES = (
    ("claude-fable-5-1", 10.0, 50.0),
    ("claude-opus-5-5", 4.0, 20.0),
    ("claude-opus-5", 5.0, 25.0),
    ("claude-sonnet-5", 2.0, 10.0),  # Sonnet 5 and 5.5
    ("claude-opus-4-5", 5.0, 25.0),
    ("claude-opus-4-6", 5.0, 25.0),
    ("claude-opus-4-7", 5.0, 25.0),
    ("claude-opus-4-8", 5.0, 25.0),
    ("claude-opus-4", 15.0, 75.0),  # Opus 4 and 4.1
    ("claude-sonnet-4", 3.0, 15.0),
    ("claude-haiku-4", 1.0, 5.0),
)
FALLBACK = max((inp, out) for _, inp, out in PRICES)  # the most expensive known rate


def rates(model: str) -> tuple[float, float, bool]:
    """(input, output, known) for a model name."""
    for prefix, inp, out in PRICES:
        if model.startswith(prefix):
            return inp, out, True
    return FALLBACK[0], FALLBACK[1], False


def price(model: str, input_tokens: int, output_tokens: int, write_5m: int, write_1h: int, read: int) -> Usage:
    inp, out, _ = rates(model)
    cost = (input_tokens * inp + output_tokens * out + write_5m * inp * 1.25 + write_1h * inp * 2.0 + read * inp * 0.1) / 1e6
    return Usage(input_tokens, output_tokens, write_5m, write_1h, read, cost, calls=1)


def usage_of(model: str, usage: object) -> Usage:
    """Price an SDK `Usage` object (or anything with the same attributes)."""
    creation = getattr(usage, "cache_creation", None)
    write_1h = int(getattr(creation, "ephemeral_1h_input_tokens", 0) or 0) if creation else 0
    write_5m = int(getattr(creation, "ephemeral_5m_input_tokens", 0) or 0) if creation else \
        int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
    return price(model, int(getattr(usage, "input_tokens", 0) or 0), int(getattr(usage, "output_tokens", 0) or 0),
                 write_5m, write_1h, int(getattr(usage, "cache_read_input_tokens", 0) or 0))
