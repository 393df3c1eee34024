"""BufferTable: how a shard merges the model buffers its workers report (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from rayps.errors import ShapeError
from rayps.ps.core.buffers import BufferTable


def table():
    # two float entries (running statistics) and one integer entry (num_batches_tracked)
    return BufferTable(np.array([0.0, 1.0, 0.0]), np.array([False, False, True]))


def test_before_any_report_the_initial_values_are_served():
    t = table()
    t.merge()
    np.testing.assert_array_equal(t.values, [0.0, 1.0, 0.0])


def test_float_entries_are_the_sample_weighted_mean_and_integer_entries_the_maximum():
    t = table()
    t.report(0, np.array([1.0, 2.0, 5.0]), weight=32)
    t.report(1, np.array([4.0, 8.0, 7.0]), weight=96)
    t.merge()
    np.testing.assert_allclose(t.values[:2], [(32 * 1 + 96 * 4) / 128, (32 * 2 + 96 * 8) / 128])
    assert t.values[2] == 7.0


def test_one_report_is_served_exactly_as_sent():
    t = table()
    values = np.array([0.1234567, 3.3e-7, 12.0], dtype=np.float32).astype(np.float64)
    t.report(0, values, weight=17)
    t.merge()
    np.testing.assert_array_equal(t.values, values)  # bit for bit: the golden test needs it


def test_a_newer_report_replaces_the_workers_older_one_and_a_left_worker_stays_in_the_mean():
    t = table()
    t.report(0, np.array([1.0, 1.0, 1.0]), weight=1)
    t.report(1, np.array([3.0, 3.0, 3.0]), weight=1)
    t.report(0, np.array([5.0, 5.0, 9.0]), weight=1)
    t.merge()
    np.testing.assert_array_equal(t.values, [4.0, 4.0, 9.0])
    assert t.reporters == [0, 1]


def test_the_merge_does_not_depend_on_the_order_reports_arrive_in():
    rng = np.random.default_rng(0)
    reports = [(w, rng.normal(size=3), int(rng.integers(1, 100))) for w in range(5)]
    merged = []
    for order in (reports, reports[::-1], reports[2:] + reports[:2]):
        t = BufferTable(np.zeros(3))
        for w, v, n in order:
            t.report(w, v, n)
        t.merge()
        merged.append(t.values.tobytes())
    assert len(set(merged)) == 1


def test_a_report_is_copied_so_a_reused_receive_buffer_cannot_change_it():
    t = table()
    incoming = np.array([2.0, 2.0, 2.0])
    t.report(0, incoming, weight=1)
    incoming[:] = 99.0
    t.merge()
    np.testing.assert_array_equal(t.values, [2.0, 2.0, 2.0])


@pytest.mark.parametrize("bad, message", [
    ([1.0, 2.0, 3.0], "buffers must be a numpy array, got list"),
    (np.zeros(3, np.float32), "buffers dtype must be float64, got float32"),
    (np.zeros(4), r"buffers shape must be \(3,\), got \(4,\)"),
    (np.array([np.nan, 0.0, 0.0]), "buffers hold 1 NaN values"),
])
def test_malformed_reports_are_refused_with_what_was_expected(bad, message):
    with pytest.raises(ShapeError, match=message):
        table().check(bad, "ps-shard-0")


def test_infinity_is_a_legitimate_buffer_value():
    table().check(np.array([np.inf, -np.inf, 0.0]), "ps-shard-0")  # a running min/max may start there
