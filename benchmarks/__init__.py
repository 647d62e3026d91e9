"""qrispay's performance suite: ``python -m benchmarks [--quick]``.

Every figure is a ratio against a baseline measured in the same process and
the same run, so figures from different machines or runs can be compared by
their ratios, never by their absolute times.

Timing: ``time.perf_counter``, a warm-up first, then repeats, variants
interleaved (rotating order) so drift and machine load hit all sides alike;
the median is reported (on a shared machine the best-of is a lucky window,
not the cost). Timed sections start with ``gc.collect()`` and run with the
cyclic GC disabled (the ``timeit`` convention): reference counting still
frees everything, only the cycle collector's pauses are left out, and they
are left out of both sides. The many-merchant figure runs for minutes in
real time, GC on, and counts CPU time (``time.process_time``).
"""
