"""The C heap's policy: freed tensor memory goes back to the system between stages, and is kept between frames."""

from __future__ import annotations

import resource

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


def test_freed_buffers_are_reused_while_frames_render_and_handed_back_after():
    source = torch.ones(BUFFER_PAGES * 1024)
    heap.hand_large_buffers_back()
    # free heap chunks an earlier test left resident (frames it kept past its render) would serve a tensor
    # without a fault: hand them back first
    heap.return_freed_memory()
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
