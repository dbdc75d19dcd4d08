"""A captioned, searchable song library: `alcap library add | search | info | failures | export | remove`.

Imported lazily, so that the command line's help can read `alcap.library.policy` without numpy.
"""

_EXPORTS = ("Hit", "Library", "LibraryError", "LibraryMismatchError", "Song")

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'alcap.library' has no attribute {name!r}")
