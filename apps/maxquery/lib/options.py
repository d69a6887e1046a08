"""Typed, bounded request options: every value a client sends is checked here before the app uses it.

Each parser takes the raw value and the option's name and returns a plain Python value (``bool``, ``int``,
``float``, ``str``), or raises :class:`~lib.errors.InvalidInputError` (HTTP 422) naming the option and what it
accepts. Nothing here builds code, paths or commands from a value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .errors import InvalidInputError

__all__ = [
    "OptionParser",
    "check_options",
    "optional",
    "parse_bool",
    "parse_choice",
    "parse_device",
    "parse_float",
    "parse_gpus",
    "parse_int",
    "parse_name",
    "parse_name_list",
    "parse_text",
    "selected",
    "shown",
]

OptionParser = Callable[[Any, str], Any]

#: a plain id: letters, digits, ``.``, ``_``, ``-`` (not first), as used for image ids, label tags and sessions
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DEVICE_PATTERN = re.compile(r"cpu|cuda(?::([0-9]{1,3}))?")
MAX_NUMBER_TEXT = 64
TRUE_TEXT = {"true", "1", "yes", "on"}
FALSE_TEXT = {"false", "0", "no", "off"}


def shown(value: Any, limit: int = 80) -> str:
    """A short, printable rendering of a client value for error messages (no control characters, cut)."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else f"{text[:limit]}..."


def selected(value: Any) -> Any:
    """The selected value of a MONAI Label option: clients may send a list of choices, the first is the choice."""
    return value[0] if isinstance(value, (list, tuple)) and value else value


def optional(parser: OptionParser) -> OptionParser:
    """``parser``, except that ``None`` (JSON ``null``) and the empty string mean "not given" (``None``)."""

    def parse(value: Any, name: str) -> Any:
        value = selected(value)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parser(value, name)

    return parse


def parse_bool(value: Any, name: str) -> bool:
    """``true``/``false`` (JSON booleans, 0/1, or the strings true/false/1/0/yes/no/on/off)."""
    value = selected(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_TEXT | FALSE_TEXT:
        return value.strip().lower() in TRUE_TEXT
    raise InvalidInputError(f"option '{name}' must be true or false, got '{shown(value)}'.")


def _number(value: Any, name: str, kind: str) -> float:
    value = selected(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInputError(f"option '{name}' must be {kind}, got {type(value).__name__} '{shown(value)}'.")
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > MAX_NUMBER_TEXT:
            raise InvalidInputError(f"option '{name}' must be {kind}, got '{shown(value)}'.")
        try:
            value = int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else float(text)
        except ValueError as error:
            raise InvalidInputError(f"option '{name}' must be {kind}, got '{shown(text)}'.") from error
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"option '{name}' must be a finite number, got '{shown(value)}'.")
    return value


def parse_int(low: int, high: int) -> OptionParser:
    """A parser of integers in ``[low, high]``."""

    def parse(value: Any, name: str) -> int:
        number = _number(value, name, f"an integer in [{low}, {high}]")
        if isinstance(number, float):
            if not number.is_integer():
                raise InvalidInputError(f"option '{name}' must be an integer in [{low}, {high}], got {number}.")
            number = int(number)
        if not low <= number <= high:
            raise InvalidInputError(f"option '{name}' must be an integer in [{low}, {high}], got {shown(number)}.")
        return int(number)

    return parse


def parse_float(low: float, high: float, low_open: bool = False, high_open: bool = False) -> OptionParser:
    """A parser of finite numbers in the interval from ``low`` to ``high`` (closed unless said open)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(value: Any, name: str) -> float:
        number = float(_number(value, name, f"a number in {interval}"))
        below = number <= low if low_open else number < low
        above = number >= high if high_open else number > high
        if below or above:
            raise InvalidInputError(f"option '{name}' must be a number in {interval}, got {shown(number)}.")
        return number

    return parse


def parse_choice(choices: Iterable[str]) -> OptionParser:
    """A parser of one string among ``choices`` (exact match)."""
    allowed = tuple(choices)

    def parse(value: Any, name: str) -> str:
        value = selected(value)
        if isinstance(value, str) and value in allowed:
            return value
        raise InvalidInputError(f"option '{name}' must be one of {list(allowed)}, got '{shown(value)}'.")

    return parse


def parse_text(max_length: int = 200) -> OptionParser:
    """A parser of short informational text (kept out of every computation; control characters refused)."""

    def parse(value: Any, name: str) -> str:
        if not isinstance(value, str) or len(value) > max_length or not value.isprintable():
            raise InvalidInputError(f"option '{name}' must be printable text of at most {max_length} characters.")
        return value

    return parse


def parse_name(value: Any, name: str) -> str:
    """A plain id (letters, digits, ``.``, ``_``, ``-``; not starting with ``.`` or ``-``; at most 128 characters)."""
    value = selected(value)
    if isinstance(value, str) and NAME_PATTERN.fullmatch(value):
        return value
    raise InvalidInputError(
        f"option '{name}' must be a plain id (letters, digits, '.', '_', '-'), got '{shown(value)}'."
    )


def parse_name_list(max_items: int = 10_000) -> OptionParser:
    """A parser of a list of plain ids (see :func:`parse_name`), at most ``max_items`` long."""

    def parse(value: Any, name: str) -> list[str]:
        if not isinstance(value, (list, tuple)) or len(value) > max_items:
            raise InvalidInputError(f"option '{name}' must be a list of at most {max_items} ids.")
        return [parse_name(item, name) for item in value]

    return parse


def parse_device(value: Any, name: str = "device") -> str:
    """``cpu``, or ``cuda`` / ``cuda:N`` naming a GPU of this machine; returns ``"cpu"`` or ``"cuda:N"``."""
    value = selected(value)
    match = DEVICE_PATTERN.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInputError(f"option '{name}' must be 'cpu', 'cuda' or 'cuda:N', got '{shown(value)}'.")
    if value == "cpu":
        return "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(match.group(1) or 0)
    if index >= count:
        available = ["cpu"] + [f"cuda:{i}" for i in range(count)]
        raise InvalidInputError(f"option '{name}': no GPU '{value}' on this server; available: {available}.")
    return f"cuda:{index}"


def parse_gpus(value: Any, name: str = "gpus") -> str:
    """MONAI Label's ``gpus`` option: ``all`` or comma-separated GPU indices of this machine."""
    value = selected(value)
    if value == "all":
        return "all"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    indices = isinstance(value, str) and re.fullmatch(r"[0-9]{1,3}(,[0-9]{1,3}){0,15}", value)
    if indices and all(int(index) < count for index in value.split(",")):
        return value
    raise InvalidInputError(f"option '{name}' must be 'all' or GPU indices like '0,1' (this server has {count}).")


def check_options(
    request: Mapping[str, Any],
    parsers: Mapping[str, OptionParser],
    what: str,
    dropped: Iterable[str] = (),
) -> dict[str, Any]:
    """Check every entry of ``request``; return the parsed values of the known options.

    Args:
        request: the client's options (already merged by MONAI Label).
        parsers: option name -> parser; only these options are returned.
        what: the request kind, for messages (e.g. ``"training"``).
        dropped: options that MONAI Label or its clients add and that the app never reads; they are accepted and
            left out of the result.

    Raises:
        InvalidInputError: an option the app does not know, or a value its parser refuses.
    """
    if not isinstance(request, Mapping):
        raise InvalidInputError(f"{what} options must be a JSON object, got {type(request).__name__}.")
    dropped = set(dropped)
    result: dict[str, Any] = {}
    for key, value in request.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"{what} option names must be strings, got '{shown(key)}'.")
        if key in parsers:
            result[key] = parsers[key](value, key)
        elif key not in dropped:
            raise InvalidInputError(f"unknown {what} option '{shown(key)}'; accepted options: {sorted(parsers)}.")
    return result
