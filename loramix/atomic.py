"""Moved to `loramix.writer`, the one writer; this name is kept only until the branches that still import it are
merged (it re-exports, and writes nothing itself)."""

from loramix.writer import DiskFullError, atomic_path, is_disk_full, write_bytes, write_text  # noqa: F401
