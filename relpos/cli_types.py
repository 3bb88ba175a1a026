"""argparse value types that refuse zero, negative, non-finite or absurd numbers with a one-line message."""

from __future__ import annotations

import argparse
import math


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default to its help, except where there is nothing to show: no default (None) or a flag
    (an option without a value, such as --mirror or --no-progress, whose "default: False/True" only confuses), as
    "(default: None)" after "default: the bundled photographs" would."""

    def _get_help_string(self, action):
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def bounded_int(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must lie in [{low}, {high}], got {value}")
        return value

    parse.__name__ = "integer"  # what argparse names in its message
    return parse


def bounded_float(low: float, high: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be a finite number in [{low}, {high}], got {text}")
        return value

    parse.__name__ = "number"
    return parse


def device_text(text: str) -> str:
    """argparse type of a --device option (see relpos.devices)."""
    from .devices import check_device_text

    try:
        return check_device_text(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None

