"""Method-parameter rules, checked before any model is built (`Editor.check_params`).

A rule takes a value and returns None when it is allowed, else the allowed range in words
("an integer >= 1"); the error names the key, the value and that range:
`pix2video: steps=-1 is not allowed: expected an integer >= 1`.
"""

from __future__ import annotations

import difflib
import math
from numbers import Integral, Real
from typing import Any, Callable, Iterable, Mapping

from vedit.errors import EditorError

Rule = Callable[[Any], "str | None"]


class ParamError(EditorError):
    """A method parameter outside its allowed range; raised before any model is built."""


def _range(low, high, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def _within(v: float, low, high, low_open: bool, high_open: bool) -> bool:
    return ((low is None or (v > low if low_open else v >= low))
            and (high is None or (v < high if high_open else v <= high)))


def integer(low: int | None = None, high: int | None = None, optional: bool = False) -> Rule:
    allowed = " ".join(filter(None, ["an integer", _range(low, high)])) + (" or null" if optional else "")

    def rule(v: Any) -> str | None:
        if v is None and optional:
            return None
        ok = isinstance(v, Integral) and not isinstance(v, bool) and _within(v, low, high, False, False)
        return None if ok else allowed
    return rule


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, optional: bool = False) -> Rule:
    """A finite real number in the range (NaN and inf are never allowed)."""
    allowed = " ".join(filter(None, ["a finite number", _range(low, high, low_open, high_open)]))
    allowed += " or null" if optional else ""

    def rule(v: Any) -> str | None:
        if v is None and optional:
            return None
        ok = (isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
              and _within(v, low, high, low_open, high_open))
        return None if ok else allowed
    return rule


def boolean() -> Rule:
    return lambda v: None if isinstance(v, bool) else "true or false"


def choice(*options: Any) -> Rule:
    return lambda v: None if v in options else f"one of {list(options)}"


def subset(*options: Any, optional: bool = False) -> Rule:
    """A non-empty list of distinct items from `options` (or null when optional)."""
    allowed = f"a non-empty list of {list(options)}" + (" or null" if optional else "")

    def rule(v: Any) -> str | None:
        if v is None and optional:
            return None
        ok = isinstance(v, (list, tuple)) and 0 < len(v) == len(set(v)) and all(x in options for x in v)
        return None if ok else allowed
    return rule


def period() -> Rule:
    """[start, end] fractions of the schedule with 0 <= start <= end <= 1."""
    def rule(v: Any) -> str | None:
        ok = (isinstance(v, (list, tuple)) and len(v) == 2 and all(number(0, 1)(x) is None for x in v)
              and v[0] <= v[1])
        return None if ok else "[start, end] with 0 <= start <= end <= 1"
    return rule


def layers(*names: str) -> Rule:
    """A named layer set or an explicit list of layer names."""
    def rule(v: Any) -> str | None:
        ok = v in names or (isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, str) for x in v))
        return None if ok else f"one of {list(names)} or a non-empty list of layer names"
    return rule


def fields(rules: Mapping[str, Rule], strict: bool = True) -> Rule:
    """A mapping (or null = defaults) whose keys follow `rules`; unknown keys are errors when `strict`."""
    def rule(v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, Mapping):
            return f"a mapping with keys {sorted(rules)}"
        problems = [unknown_key(k, rules) for k in v if strict and k not in rules]
        problems += [f"{k}={v[k]!r} is not allowed: expected {p}" for k, r in rules.items()
                     if k in v and (p := r(v[k]))]
        return "\n".join(problems) or None
    rule.nested = True  # its problems name the inner keys
    return rule


def unknown_key(key: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f", did you mean {close[0]!r}?" if close else ""
    return f"{key} is unknown{hint} (known: {', '.join(known) or 'none'})"


def check(owner: str, params: Mapping[str, Any], known: Iterable[str], rules: Mapping[str, Rule]) -> None:
    """Raise one ParamError listing every unknown key and every value outside its rule."""
    known = set(known)
    problems = []
    for key, value in params.items():
        if key not in known:
            problems.append(unknown_key(key, known))
        elif key in rules and (allowed := rules[key](value)):
            if getattr(rules[key], "nested", False) and isinstance(value, Mapping):
                problems += [f"{key}.{p}" for p in allowed.split("\n")]
            else:
                problems.append(f"{key}={value!r} is not allowed: expected {allowed}")
    if problems:
        raise ParamError(f"{owner}: " + "; ".join(problems) + f" (set them in conf/method/{owner}.yaml "
                         f"or as method.params.<key>=... on the command line)")
