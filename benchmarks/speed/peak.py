"""Peak memory of what a benchmark runs next, on CUDA or CPU (shared by meta_step.py, growth.py and
memory_smollm2.py; run each point in a fresh process, as they do)."""

from __future__ import annotations

import resource

import torch


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM; ru_maxrss would carry the launching parent's peak across exec)."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class PeakGrowth:
    """From construction on: growth of ``max_memory_allocated`` over the memory allocated now (CUDA),
    or of the peak resident set over its value now (CPU), in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = peak_rss_kib() * 1024

    def mib(self) -> float:
        now = torch.cuda.max_memory_allocated() if self.cuda else peak_rss_kib() * 1024
        return (now - self.base) / 2**20
