"""The recordings folder (data_dir/recordings): which file a call's stored
recording_path names, never one outside the folder. Reached as `store.recordings`.

With several nodes (a PostgreSQL store), every node must see the same folder at the
same path (a shared, NFS-like mount): workers write recordings there, web nodes serve
them, the retention purge deletes them (docs/storage.md).
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

RECORDINGS_DIR = "recordings"


class Recordings:
    """Files in `directory`; relative recording paths are relative to its parent (the
    data dir)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def inside(self, recording: str | None) -> Path | None:
        """The file a calls.recording_path names (relative paths are relative to the
        data dir), if it lies inside the recordings folder once symlinks and .. are resolved."""
        if not recording:
            return None
        path = Path(recording)
        if not path.is_absolute():
            path = self.directory.parent / path
        try:
            resolved = path.resolve()
            inside = resolved.is_relative_to(self.directory.resolve())
        except (OSError, RuntimeError):
            return None
        return resolved if inside else None

    def file(self, recording: str | None) -> Path | None:
        """For serving a call's recording: the existing file inside the recordings folder
        that `recording` (calls.recording_path) names, else None. Never a path outside."""
        path = self.inside(recording)
        return path if path is not None and path.is_file() else None

    def delete(self, recording: str | None) -> None:
        """Delete the recording if it lies inside the folder (logged otherwise)."""
        if not recording:
            return
        path = self.inside(recording)
        if path is None:
            log.warning("retention: not deleting %s: outside %s", recording, self.directory)
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("retention: cannot delete %s: %s", path, exc)
