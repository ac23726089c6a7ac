"""Peak memory of one run, whatever ran before it in the same process.

`experiment` trains every method (and every sweep run) in one process, so a process-wide
high-water mark would report, for each run, the maximum over all earlier runs. At the start
of a run the peak is therefore reset:

- CUDA: `torch.cuda.reset_peak_memory_stats`, then `max_memory_allocated` - the tensors'
  peak ("peak CUDA allocated"; the caching allocator reserves more).
- CPU (Linux): writing "5" to /proc/self/clear_refs resets the kernel's resident-set
  high-water mark (VmHWM), which is then exact at page granularity with no sampling
  ("peak RSS": the whole process, libraries and Python included). Where that file cannot be
  written, a thread samples the current RSS every 20 ms from the start of the run.

An in-process reset is chosen over one process per run because it also holds under
`accelerate launch` and costs no start-up time per run; RSS that an earlier run left
allocated still counts (the test compares against a fresh process).
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

KIND_CUDA = "peak CUDA allocated"
KIND_RSS = "peak RSS"


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float:
    """The process's resident set now (0.0 where /proc is unavailable)."""
    return (_status_kb("VmRSS") or 0.0) / 1024


class PeakMemory:
    """Measures the peak memory from `start()` on: `peak_mb()` and `kind`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = KIND_CUDA if device.type == "cuda" else KIND_RSS
        self._sampled = 0.0
        self._stop: threading.Event | None = None  # set when sampling (no clear_refs)

    def start(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not _reset_hwm():
            self._stop = threading.Event()
            threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _sample(self) -> None:
        stop = self._stop
        while stop is not None and not stop.wait(0.02):
            self._sampled = max(self._sampled, current_rss_mb())

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self._stop is not None:
            return max(self._sampled, current_rss_mb())
        return (_status_kb("VmHWM") or 0.0) / 1024

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None
