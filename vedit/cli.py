"""Command-line overrides checked before Hydra sees them, so the usual misspellings get vedit's
did-you-mean messages instead of Hydra's: `method=pix2vid` (any config group: a name not in
`conf/<group>/`) and `method.params.stepz=5` (a key the method's yaml does not list, checked by the
editor's own parameter rules). Sweep values (`method=a,b`) are checked one by one; Hydra's own options
(`-m`, `hydra/...`, `+key=...`) pass through unchanged.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parents[1] / "conf"


def _groups(conf: Path) -> dict[str, list[str]]:
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in conf.iterdir() if d.is_dir() and d.name != "hydra"}


def _split(arg: str) -> tuple[str, str] | None:
    if arg.startswith(("-", "+", "~")) or "=" not in arg:
        return None
    key, _, value = arg.partition("=")
    return key.strip(), value.strip()


def override_errors(args: list[str], conf: Path = CONF) -> list[str]:
    """One message per override that names an unknown config option or method parameter."""
    groups, errors = _groups(conf), []
    chosen_method = "framewise"
    for arg in args:
        parsed = _split(arg)
        if parsed is None:
            continue
        key, value = parsed
        if key in groups and "(" not in value:
            for name in (v.strip() for v in value.split(",")):
                if name not in groups[key] and name != "null":
                    close = difflib.get_close_matches(name, groups[key], n=1)
                    errors.append(f"unknown {key} {name!r}." + (f" Did you mean {close[0]!r}?" if close else "")
                                  + f" Known: {', '.join(groups[key])} (conf/{key}/)")
            if key == "method" and "," not in value:
                chosen_method = value
    for arg in args:
        parsed = _split(arg)
        if parsed is None or not parsed[0].startswith("method.params."):
            continue
        key, value = parsed
        errors += _param_errors(chosen_method, key.split(".", 2)[2], value, conf)
    return errors


def _param_errors(method: str, key: str, value: str, conf: Path) -> list[str]:
    file = conf / "method" / f"{method}.yaml"
    if not file.exists():
        return []
    conf = yaml.safe_load(file.read_text()) or {}
    name = key.split(".", 1)[0]
    if name in (conf.get("params") or {}):
        return []
    from vedit.editors.params import ParamError
    from vedit.registry import EDITORS, UnknownNameError

    try:
        EDITORS.get(conf.get("name", method)).check_params({name: value})
    except (ParamError, UnknownNameError) as e:
        return [str(e)]
    return [f"{method}: method.params.{name} is a parameter conf/method/{method}.yaml does not list; "
            f"add it with +method.params.{name}={value}"]


def exit_on_bad_overrides(args: list[str] | None = None) -> None:
    """Print vedit's message for each bad override and exit 2, before Hydra starts."""
    errors = override_errors(sys.argv[1:] if args is None else args)
    if errors:
        raise SystemExit("\n".join(f"error: {e}" for e in errors))
