"""Attach py-spy to the service during a measurement, and summarise what it recorded.

py-spy is a sampling profiler that reads the service's stacks from outside the process, so
the service runs unmodified and unslowed. It is not a project dependency: install it into the
venv for profiling (`pip install py-spy`); without it `--profile` is refused with that advice.

`python -m benchmarks.spy FILE [--top N]` prints, from a py-spy "raw" (collapsed stacks)
file, the functions with the most samples on top of the stack (self) and anywhere in it
(inclusive), as shares of all samples.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

SAMPLE_RATE_HZ = 250
STOP_TIMEOUT_SECONDS = 20.0


def py_spy() -> str | None:
    return shutil.which("py-spy")


class Recorder:
    """`py-spy record --pid PID` running until `stop()`; writes collapsed stacks to `output`."""

    def __init__(self, pid: int, output: Path) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed: `pip install py-spy` into the venv")
        output.parent.mkdir(parents=True, exist_ok=True)
        self.output = output
        self.process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(SAMPLE_RATE_HZ),
                "--format",
                "raw",
                "--output",
                str(output),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """SIGINT makes py-spy write its file and exit (blocking: call off the loop)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _frame_name(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`: lines merge, files stay apart."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


def summarise(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function, from a collapsed-stacks file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples"]
    for title, counter in (("self", own), ("inclusive", inclusive)):
        lines.append(f"-- top {top} by {title} share")
        lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="summarise a py-spy raw profile")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(summarise(args.file, args.top))


if __name__ == "__main__":
    main()
