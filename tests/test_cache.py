"""The one cache of Slurm's answers (aifactory.snapshot.Cached) and the snapshots made of it,
with fetch functions that count their calls (no cluster)."""

import asyncio
import threading
import time

import pytest
from conftest import snapshot

from aifactory import allocations, slurm
from aifactory.allocations import Snapshot, Viewer
from aifactory.snapshot import Cached


class Fetch:
    """Answers 1, 2, 3, ... after `delay` s, or raises `error` when set."""

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay, self.error = 0, delay, None
        self.lock = threading.Lock()

    def __call__(self):
        time.sleep(self.delay)
        with self.lock:
            self.calls += 1
            if self.error:
                raise self.error
            return self.calls


def test_callers_at_once_share_one_fetch_and_a_young_answer_is_reused():
    fetch = Fetch(delay=0.2)
    cached = Cached(fetch)

    async def many():
        return await asyncio.gather(*(cached.get(max_age=5) for _ in range(30)))

    assert asyncio.run(many()) == [1] * 30 and fetch.calls == 1
    assert asyncio.run(cached.get(max_age=5)) == 1 and fetch.calls == 1
    assert asyncio.run(cached.get(max_age=0)) == 2 and fetch.calls == 2


def test_an_answer_from_before_a_change_is_not_given_to_who_asks_after_it():
    cached = Cached(Fetch())
    asyncio.run(cached.get(60))
    assert asyncio.run(cached.get(60, newer_than=time.time())) == 2


def test_when_slurm_does_not_answer_the_last_good_answer_stays_with_its_error():
    fetch = Fetch()
    cached = Cached(fetch, "slurmctld (squeue)")
    asyncio.run(cached.get(0))
    as_of = cached.as_of
    fetch.error = slurm.SlurmUnreachable("squeue: scheduler unreachable")
    with pytest.raises(slurm.SlurmUnreachable):
        asyncio.run(cached.get(0))
    asyncio.run(cached.refresh())  # a schedule's refresh keeps the error instead of raising
    assert (cached.last, cached.as_of) == (1, as_of)
    assert cached.error == "squeue: scheduler unreachable"
    fetch.error = None
    asyncio.run(cached.refresh())
    assert (cached.last, cached.error) == (4, "")  # the fourth call, two failed


def test_an_answer_that_cannot_be_read_is_an_error_like_slurms_own():
    cached = Cached(lambda: {}["missing"], "slurmctld (squeue)")
    with pytest.raises(slurm.SlurmError, match="could not read \\(KeyError\\)"):
        cached.fetch_now()
    assert cached.last is None and "KeyError" in cached.error


def test_a_snapshot_of_caches_has_each_parts_answer_age_and_error():
    good, bad = Cached(lambda: ["row"]), Cached(lambda: (_ for _ in ()).throw(
        slurm.SlurmError("sacct: slurmdbd down")))
    good.fetch_now()
    with pytest.raises(slurm.SlurmError):
        bad.fetch_now()
    snap = Snapshot.of({"shares": good, "history": bad})
    assert snap.shares == ["row"] and snap.history == []  # an empty answer until one comes
    assert set(snap.as_of) == {"shares"} and snap.errors == {"history": "sacct: slurmdbd down"}


@pytest.mark.parametrize("compute", [allocations.budgets, allocations.jobs, allocations.gpus])
def test_every_part_an_answer_reads_warns_when_slurm_did_not_renew_it(compute):
    """An answer's parts are declared once: a failure of any of them is in its warnings."""
    for part in compute.parts:
        snap = snapshot()
        snap.errors[part] = "no answer"
        answer = compute(Viewer("alice"), snap)
        assert any(w.startswith("no answer (") for w in answer["warnings"]), part
        assert allocations.SOURCES[part] in answer["source"]
