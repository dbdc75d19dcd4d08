"""Small helpers shared by the library and the application."""

from __future__ import annotations


def nested_differences(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    """Leaf-level differences between two nested dicts, as (dotted key, value in a, value in b)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += nested_differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]
