"""When the library's search uses an approximate index (kept free of imports: `--help` reads it)."""

AUTO_ROWS = 200_000  # exact search stays under ~15 ms below this on 2 cores; the index pays above it
POLICIES = ("auto", "exact", "faiss")
