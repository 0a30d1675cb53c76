"""ALSA without a sound card, for tests: an asound.conf of ``file``/``null`` plugin PCMs.

A capture PCM reads raw S16_LE from ``infile`` (then zeros once it runs out); a playback PCM
writes raw S16_LE to ``file``. Both sit on ``null``, which is not paced in real time, so tests run
as fast as the CPU. alsa-lib reads ``ALSA_CONFIG_PATH`` and re-reads changed config files on every
``snd_pcm_open``, so a test can define, remove and redefine PCMs while a process runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SYSTEM_CONF = "/usr/share/alsa/alsa.conf"


@dataclass
class AlsaTestConfig:
    """An asound.conf under ``directory``; ``write()`` it, then ``activate()`` it."""

    directory: Path
    captures: dict[str, Path] = field(default_factory=dict)
    playbacks: dict[str, Path] = field(default_factory=dict)
    _generation: int = 0

    @property
    def path(self) -> Path:
        return self.directory / "asound.conf"

    @property
    def env(self) -> dict[str, str]:
        """Environment entries pointing alsa-lib at this file (for subprocesses)."""
        return {"ALSA_CONFIG_PATH": f"{SYSTEM_CONF}:{self.path}"}

    def add_capture(self, name: str, samples: np.ndarray | None = None) -> Path:
        """Define capture PCM ``name`` reading ``samples`` (int16, interleaved); returns the infile."""
        self.directory.mkdir(parents=True, exist_ok=True)
        infile = self.directory / f"{name}.in.raw"
        if samples is not None:
            np.ascontiguousarray(samples, dtype="<i2").tofile(infile)
        elif not infile.exists():
            infile.write_bytes(b"")
        self.captures[name] = infile
        return infile

    def add_playback(self, name: str) -> Path:
        """Define playback PCM ``name``; returns the raw output file it writes."""
        out = self.directory / f"{name}.out.raw"
        self.playbacks[name] = out
        return out

    def remove(self, name: str) -> None:
        self.captures.pop(name, None)
        self.playbacks.pop(name, None)

    def write(self) -> Path:
        """Write the file; its mtime always moves forward so alsa-lib notices the change."""
        self.directory.mkdir(parents=True, exist_ok=True)
        parts = [f"# generation {self._generation}\n"]
        for name, infile in self.captures.items():
            parts.append(
                f'pcm.{name} {{\n    type file\n    slave.pcm "null"\n'
                f'    file "/dev/null"\n    infile "{infile}"\n    format "raw"\n}}\n'
            )
        for name, out in self.playbacks.items():
            parts.append(
                f'pcm.{name} {{\n    type file\n    slave.pcm "null"\n'
                f'    file "{out}"\n    format "raw"\n}}\n'
            )
        self.path.write_text("".join(parts))
        self._generation += 1
        stamp = 1_000_000_000 + self._generation * 10  # distinct whole seconds per generation
        os.utime(self.path, (stamp, stamp))
        return self.path

    def activate(self, monkeypatch) -> None:  # noqa: ANN001 - pytest's MonkeyPatch
        """Point this process's alsa-lib at the file (restored by monkeypatch after the test)."""
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
