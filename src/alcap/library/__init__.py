"""A captioned, searchable song library: `alcap library add | search | info | failures | export | remove`."""

from .store import Hit, Library, LibraryError, LibraryMismatchError, Song

__all__ = ["Hit", "Library", "LibraryError", "LibraryMismatchError", "Song"]
