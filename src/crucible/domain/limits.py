"""Resolves requested limits against the settings' defaults and ceilings."""

from __future__ import annotations

from collections.abc import Mapping

from crucible.core.config import LimitBounds, SandboxBounds, Settings
from crucible.core.errors import InvalidSubmission
from crucible.engine.models import Limits, SessionLimits

LIMIT_NAMES = tuple(n for n in LimitBounds.model_fields if n != "minimum")
SESSION_LIMIT_NAMES = tuple(SessionLimits.model_fields)


def resolve_bounds(
    requested: Mapping[str, float | int | None] | None,
    bounds: LimitBounds | SandboxBounds,
    names: tuple[str, ...],
    *,
    prefix: str = "limits.",
) -> dict[str, float | int]:
    """Fill unset values with ``bounds``' defaults; reject values outside [minimum,
    ceiling]. Raises InvalidSubmission naming the field (``<prefix><name>``) and the
    allowed range."""
    requested = requested or {}
    unknown = set(requested) - set(names)
    if unknown:
        where = prefix.rstrip(".") or "body"
        raise InvalidSubmission(f"unknown limit(s): {', '.join(sorted(unknown))}", field=where)
    values: dict[str, float | int] = {}
    for name in names:
        default, ceiling = getattr(bounds, name)
        floor = bounds.minimum[name]
        value = requested.get(name)
        if value is None:
            value = default
        if not floor <= value <= ceiling:
            raise InvalidSubmission(
                f"{prefix}{name} must be between {floor:g} and {ceiling:g}, got {value:g}",
                field=f"{prefix}{name}",
            )
        values[name] = value
    return values


def resolve_limits(
    requested: Mapping[str, float | int | None] | None, settings: Settings
) -> Limits:
    """An evaluation's limits (see :func:`resolve_bounds`)."""
    return Limits.model_validate(resolve_bounds(requested, settings.limits, LIMIT_NAMES))


def resolve_session_limits(
    requested: Mapping[str, float | int | None] | None, settings: Settings
) -> SessionLimits:
    """A long-lived sandbox's limits (see :func:`resolve_bounds`)."""
    values = resolve_bounds(requested, settings.sandbox_limits, SESSION_LIMIT_NAMES)
    return SessionLimits.model_validate(values)
