"""Parse a JSON object from metadata or a spec file, with one clear error line."""

from __future__ import annotations

import json

from .errors import AuditError


def parse_json_object(text: str, what: str, error: type[AuditError], allowed: set[str] | None = None) -> dict:
    """``text`` as a dict; ``error`` naming ``what`` when it is not JSON, not an object, or has
    keys outside ``allowed``."""
    try:
        raw = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise error(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise error(f"{what} must be a JSON object, got {text!r}")
    if allowed is not None:
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise error(f"{what} has unknown key(s): {', '.join(unknown)}")
    return raw
