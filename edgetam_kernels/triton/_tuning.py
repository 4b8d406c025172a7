"""Where the autotuner keeps its choices: shape keys bucketed, results persisted per machine.

Tuning one shape compiles and times ~20 configs (about 75 s in fp32 on an H200 the first time,
bench/results/triton_h200.md). EdgeTAM's memory grows by one frame per tracked frame, so exact
shape keys would tune again for each of ~7 key lengths and for each object count. Keys
therefore use power-of-two buckets of the sizes that vary (batch x heads, queries, keys); a
config tuned for one member of a bucket is valid for all of them (launchers recompute the split
count from the real key length). Choices are written to a JSON file, keyed also by GPU name,
Triton and torch versions, so a new process does not tune again (Triton's own disk cache already
keeps the compiled kernels).

`EDGETAM_TRITON_TUNING_CACHE`: the file (default `$XDG_CACHE_HOME/edgetam_kernels/
triton_tuned.json`, `~/.cache` without XDG); `0` or empty keeps choices in memory only.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from typing import Dict, Optional

CACHE_ENV = "EDGETAM_TRITON_TUNING_CACHE"


def bucket(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def default_path() -> Optional[str]:
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env in ("", "0") else env
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "edgetam_kernels", "triton_tuned.json")


class TunedStore:
    """A str -> config dict map in memory, mirrored to a JSON file when `path` is set. A file
    that cannot be read or written (read-only home, corrupt JSON) only disables persistence."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self._lock = threading.Lock()
        self._mem: Dict[str, dict] = {}
        self._loaded = path is None

    def _load(self) -> None:
        self._loaded = True
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return
        if isinstance(data, dict):
            self._mem.update({k: v for k, v in data.items() if isinstance(v, dict)})

    def get(self, key: str) -> Optional[dict]:
        with self._lock:
            if not self._loaded:
                self._load()
            cfg = self._mem.get(key)
            return dict(cfg) if cfg is not None else None

    def put(self, key: str, cfg: dict) -> None:
        with self._lock:
            if not self._loaded:
                self._load()
            self._mem[key] = dict(cfg)
            if self.path is not None:
                self._save()

    def _save(self) -> None:
        # merge with what other processes wrote meanwhile, then replace the file atomically
        try:
            with open(self.path, encoding="utf-8") as f:
                on_disk = json.load(f)
        except (OSError, ValueError):
            on_disk = {}
        if isinstance(on_disk, dict):
            on_disk.update(self._mem)
        else:
            on_disk = dict(self._mem)
        tmp = None
        try:
            folder = os.path.dirname(self.path) or "."
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".triton_tuned.", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(on_disk, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            self.path = None  # unwritable: keep tuning results for this process only
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
