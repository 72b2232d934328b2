"""The C heap's policy: freed tensor memory goes back to the system between stages, and is kept between frames."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sadtalker import heap

if heap._glibc() is None:
    pytest.skip("the heap policy is glibc's (a no-op with this C library)", allow_module_level=True)

BUFFER_PAGES = (64 << 20) // 4096  # a 64 MB tensor: one 256 x 256 x 256 float32 map of the SPADE decoder


def faults_of_a_frame(source: torch.Tensor) -> int:
    """Minor page faults taken by a 'frame' that makes and frees two 64 MB tensors."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    doubled = source * 2
    shifted = doubled + 1
    del doubled, shifted
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def check_the_policy() -> None:
    source = torch.ones(BUFFER_PAGES * 1024)
    heap.hand_large_buffers_back()
    faults_of_a_frame(source)
    assert faults_of_a_frame(source) > BUFFER_PAGES  # mapped afresh: the kernel zeroes every page again
    with heap.buffers_kept_between_frames():
        # the heap grows for the first frames (until freed chunks coalesce), then frames reuse it
        assert min(faults_of_a_frame(source) for _ in range(8)) < BUFFER_PAGES // 20
        with heap.buffers_kept_between_frames():  # a second render overlapping the first
            pass
        # the first render still keeps its buffers
        assert min(faults_of_a_frame(source) for _ in range(8)) < BUFFER_PAGES // 20
    assert faults_of_a_frame(source) > BUFFER_PAGES  # the policy between stages is back


def test_freed_buffers_are_reused_while_frames_render_and_handed_back_after():
    # In a fresh process: glibc serves a large request from a free chunk of the heap before it maps one, so the
    # heap that earlier tests (renders) left behind would hand out 64 MB without a fault whatever the policy.
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stdout + done.stderr


if __name__ == "__main__":
    check_the_policy()
