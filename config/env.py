"""Numbers from the environment, read one way for the app's settings, gunicorn's and the
server's: a bad value is named, with what it should be."""

from __future__ import annotations

from collections.abc import Mapping


def number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float,
           kind: type = int, problems: list[str] | None = None) -> float:
    """``env[name]`` as ``kind`` within ``lo`` to ``hi``, or ``default`` when unset.

    A bad value is appended to ``problems`` (every problem reported at once), or, without
    that list, stops the program with ``SystemExit`` (gunicorn's configuration).
    """
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        problem = f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
    else:
        if lo <= value <= hi:  # NaN is not
            return value  # type: ignore[no-any-return]
        problem = f"{name} must be between {_shown(lo)} and {_shown(hi)}, got {raw}"
    if problems is None:
        raise SystemExit(f"confhook: {problem}")
    problems.append(problem)
    return default


def _shown(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)
