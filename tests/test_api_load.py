"""Load through the API: 20 short jobs queued back to back run one at a time, all succeed, the server's memory
stays flat, and a concurrent holder of the host's queue lock (the WebUI's txt2img) is never interleaved with them.

One run of 20 renders checks all three, so the server runs in this process (tests/api_server.py InProcessServer:
the standalone app in a uvicorn thread) where the test can hold the lock the Host runs under and read the
server's RSS from /proc/self/status. Fake checkpoints, the dlib detector, 3-frame speech clips.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from api_server import DLIB, FRAMES, InProcessServer, b64, inputs  # noqa: F401  (inputs: a fixture)

pytestmark = pytest.mark.slow
JOBS = 20
HOLD_SECONDS = 0.05  # a short txt2img-like call that takes the queue lock over and over


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def _overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_twenty_jobs_one_at_a_time_flat_memory_never_beside_a_lock_holder(fake_checkpoints, inputs, tmp_path):
    from sadtalker.host import Host

    queue_lock = threading.Lock()  # as scripts/ does with the WebUI's call_queue.queue_lock

    def run_exclusive(job):
        with queue_lock:
            return job()

    # the host's progress hook runs inside the pipeline, so inside the lock: the job's run as the pipeline sees it
    events: list[tuple[float, str]] = []
    rss_at_done: list[int] = []

    def on_progress(stage: str, done: int, total: int) -> None:
        events.append((time.time(), stage))
        if stage == "done":
            rss_at_done.append(_rss_kib())

    host = Host(fake_checkpoints, tmp_path / "outputs", allow_download=False, run_exclusive=run_exclusive,
                on_progress=on_progress, name="load-test")
    server = InProcessServer(host, tmp_path / "data").start()

    holds: list[tuple[float, float]] = []
    stop = threading.Event()

    def hold_the_lock_again_and_again() -> None:
        while not stop.is_set():
            with queue_lock:
                began = time.time()
                time.sleep(HOLD_SECONDS)
                holds.append((began, time.time()))
            time.sleep(HOLD_SECONDS)

    holder = threading.Thread(target=hold_the_lock_again_and_again, name="queue-lock-holder", daemon=True)
    most_running = 0
    try:
        with server.client() as client:
            body = {"image": b64(inputs["photo"]), "audio": b64(inputs["speech"]), "options": DLIB}
            ids = []
            holder.start()
            for n in range(JOBS):
                created = client.post("/jobs", json={**body, "items": [{"name": f"load-{n:02d}"}]})
                assert created.status_code == 202, created.text
                ids.append(created.json()["id"])
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                listed = client.get("/jobs", params={"limit": 100}).json()["jobs"]
                assert len(listed) == JOBS
                running = sum(job["counts"]["running"] for job in listed)
                assert running <= 1, f"{running} items running at once: {listed}"
                most_running = max(most_running, running)
                if all(job["state"] not in ("queued", "running") for job in listed):
                    break
                time.sleep(0.2)
            else:
                pytest.fail("the 20 jobs did not finish within an hour")
            jobs = [client.get(f"/jobs/{job_id}").json() for job_id in ids]
            still_serves = client.get("/version").status_code
    finally:
        stop.set()
        holder.join(30)
        server.stop()

    # all succeed
    for n, job in enumerate(jobs):
        item = job["items"][0]
        assert job["state"] == "done" and item["state"] == "done", job
        assert item["frames"] == FRAMES and Path(item["path"]).name == f"load-{n:02d}.mp4", item
        assert Path(item["path"]).is_file()
    assert still_serves == 200 and most_running == 1

    # one at a time, in the order queued: the store's [started, finished] of the items do not overlap
    records = [server.service.store.job(job_id).items[0] for job_id in ids]
    spans = [(r.started, r.finished) for r in records]
    for earlier, later in zip(spans, spans[1:]):
        assert earlier[1] <= later[0], f"two items ran at once: {spans}"

    # each job's pipeline run (first progress event to "done"), inside its own item's span
    runs, began = [], None
    for at, stage in events:
        began = at if began is None else began
        if stage == "done":
            runs.append((began, at))
            began = None
    assert len(runs) == JOBS and len(rss_at_done) == JOBS, (len(runs), len(rss_at_done))
    for run, span in zip(runs, spans):
        assert span[0] <= run[0] and run[1] <= span[1], (run, span)

    # the lock holder got the lock between the jobs (so interleaving was possible), and never during one
    during = [hold for hold in holds if runs[0][0] <= hold[0] <= runs[-1][1]]
    gaps_with_a_hold = sum(any(a[1] <= h[0] and h[1] <= b[0] for h in during) for a, b in zip(runs, runs[1:]))
    clashes = [(hold, run) for hold in holds for run in runs if _overlaps(hold, run)]
    assert not clashes, f"{len(clashes)} holds of the queue lock overlapped a job's run: {clashes[:3]}"
    assert gaps_with_a_hold >= (JOBS - 1) // 2, f"the lock holder ran between only {gaps_with_a_hold} jobs"

    # the server's memory after the 20th job is within 10% of after the 2nd (models loaded, nothing kept per job)
    mib = [kib / 1024 for kib in rss_at_done]
    seconds = [round(run[1] - run[0], 1) for run in runs]
    print(f"\nRSS at each job's end (MiB): {[round(m) for m in mib]}")
    print(f"RSS after job 2: {mib[1]:.0f} MiB, after job 20: {mib[19]:.0f} MiB ({100 * (mib[19] / mib[1] - 1):+.1f}%)")
    print(f"each job's pipeline run (s): {seconds}")
    print(f"queue-lock holds: {len(holds)} in all, {len(during)} during the jobs, in {gaps_with_a_hold} of the "
          f"{JOBS - 1} gaps between jobs; none overlapped a job")
    assert abs(mib[19] / mib[1] - 1) <= 0.10, f"RSS after job 2: {mib[1]:.0f} MiB, after job 20: {mib[19]:.0f} MiB"
