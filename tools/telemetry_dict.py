"""Build the telemetry preset dictionary (``device_agent/telemetry_dict_{version}.json``) from samples.

The samples are whole telemetry messages of real agents (``tools/telemetry_samples/*.json``, as
``python -m benchmarks.telemetry_bytes --dump FILE`` writes them: one without viewers, one with a
QoE-reporting viewer). Each is normalised (boot ids, which are random per boot, become zeros) and
serialised exactly as the fleet link sends it (compact JSON); the dictionary is a JSON array of
them, in file-name order: deflate reaches back at most 32 KB and near matches cost fewer bits, so
the richest sample goes last. Reproducible: the same samples give the same bytes (and Adler-32,
which ``device_agent/telemetry_codec.py`` pins as ``DICT_ADLER32``).

Run: .venv/bin/python -m tools.telemetry_dict [--version 1] [--samples DIR] [--out FILE] [--check FILE...]
``--check`` prints the compression ratio of other samples (not used to build it) with the result.
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tools" / "telemetry_samples"
MAX_BYTES = 32 * 1024  # deflate's window: more dictionary would never be referenced


def normalise(value: Any) -> Any:
    """The sample with per-boot random ids replaced by zeros (same length and alphabet)."""
    if isinstance(value, dict):
        return {
            k: ("0" * len(v) if k == "boot" and isinstance(v, str) else normalise(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def compact(value: Any) -> str:
    """Serialised as the fleet link does (``device_agent.fleetlink.link.dumps``)."""
    return json.dumps(value, separators=(",", ":"), default=str)


def build(sample_files: list[Path]) -> bytes:
    """The dictionary bytes: a compact JSON array of the normalised samples."""
    parts = [compact(normalise(json.loads(p.read_text()))) for p in sample_files]
    data = ("[" + ",".join(parts) + "]").encode()
    if len(data) > MAX_BYTES:
        raise SystemExit(f"dictionary of {len(data)} bytes is over deflate's {MAX_BYTES}-byte window")
    return data


def ratio(sample: Path, dictionary: bytes) -> tuple[int, int]:
    """(plain, deflated with the dictionary) bytes of one sample as sent."""
    plain = compact(json.loads(sample.read_text())).encode()
    comp = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, dictionary)
    return len(plain), len(comp.compress(plain) + comp.flush())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--check", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    files = sorted(args.samples.glob("*.json"))
    if not files:
        raise SystemExit(f"no samples in {args.samples}")
    data = build(files)
    out = args.out or ROOT / "device_agent" / f"telemetry_dict_{args.version}.json"
    out.write_bytes(data)
    print(f"{out}: {len(data)} bytes from {len(files)} samples, Adler-32 {zlib.adler32(data):#010x}")
    for path in args.check:
        plain, comp = ratio(path, data)
        print(f"  {path.name}: {plain} -> {comp} bytes ({plain / comp:.1f}x)")


if __name__ == "__main__":
    main()
