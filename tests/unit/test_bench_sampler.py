"""The bench's machine sampler keeps every reading whole while the bench reads along."""

from __future__ import annotations

import os
import time

from bench.machine import Machine, Sampler


def test_readings_stay_whole_and_in_order_while_the_bench_reads_them() -> None:
    with Sampler(Machine(), os.getpid()) as sampler:
        for _ in range(5):
            # Where waiting for a reading leaves the shared offset: at the start, with
            # the sampling process writing meanwhile.
            sampler._out.seek(0)
            time.sleep(Sampler.EVERY * 3)
        sampler.stop(covering=time.time())
    moments = [at for at, _reading in sampler._samples]
    assert len(moments) >= 5
    assert moments == sorted(moments)
    assert all({"idle", "publisher"} <= reading.keys() for _at, reading in sampler._samples)
