"""Resolves requested limits against the settings' defaults and ceilings."""

from __future__ import annotations

from collections.abc import Mapping

from crucible.config import LimitBounds, Settings
from crucible.errors import InvalidSubmission
from crucible.sandbox.models import Limits

LIMIT_NAMES = tuple(n for n in LimitBounds.model_fields if n != "minimum")


def resolve_limits(
    requested: Mapping[str, float | int | None] | None, settings: Settings
) -> Limits:
    """Fill unset limits with defaults; reject values outside [minimum, ceiling].

    Raises InvalidSubmission naming the field (``limits.<name>``) and the allowed range.
    """
    requested = requested or {}
    unknown = set(requested) - set(LIMIT_NAMES)
    if unknown:
        raise InvalidSubmission(f"unknown limit(s): {', '.join(sorted(unknown))}", field="limits")
    values: dict[str, float | int] = {}
    for name in LIMIT_NAMES:
        default, ceiling = getattr(settings.limits, name)
        floor = settings.limits.minimum[name]
        value = requested.get(name)
        if value is None:
            value = default
        if not floor <= value <= ceiling:
            raise InvalidSubmission(
                f"limits.{name} must be between {floor:g} and {ceiling:g}, got {value:g}",
                field=f"limits.{name}",
            )
        values[name] = value
    return Limits.model_validate(values)
