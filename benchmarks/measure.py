"""What both throughput benchmarks report: the CPU they ran on and a rate's median and spread."""

import argparse
import os

import numpy as np

from snapshot_ensembles import config
from snapshot_ensembles.models.build import cpu_flags

REPORTED_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_description(cpuinfo="/proc/cpuinfo"):
    """(model name, {flag: present} for REPORTED_CPU_FLAGS) from /proc/cpuinfo."""
    try:
        with open(cpuinfo) as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "unknown")
    except OSError:
        name = "unknown"
    flags = cpu_flags(cpuinfo) or set()
    return name, {flag: flag in flags for flag in REPORTED_CPU_FLAGS}


def describe_cpu(name, flags, cores):
    present = " ".join(flag for flag, here in flags.items() if here) or "none"
    return f"{name}, {cores} cores, flags: {present} (of {', '.join(REPORTED_CPU_FLAGS)})"


def rate_summary(seconds, images):
    """Images/s at the median of `seconds` (one per step or pass of `images` images) and the 25th-75th
    percentile of the individual rates."""
    rates = images / np.asarray(seconds)
    return {"img_s": round(float(images / np.median(seconds)), 2),
            "spread": [round(float(v), 2) for v in np.percentile(rates, [25, 75])]}


def load_average():
    """The 1, 5 and 15 minute load averages, as `uptime` prints them: other jobs on the machine slow a run."""
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def sha256_or_skip(text):
    """An argparse type of --data_sha256 for the benchmarks' own parsers: the setting's one rule."""
    value = config.SHA256.parse(text)
    problem = config.SHA256.problem(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}")
    return value
