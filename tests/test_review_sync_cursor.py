"""Where the next sync reads from (labelloop.review.sync.Settled), without a server.

Times are seconds after T0 on the server's clock; the overlap is 5 s. A task stamped at t is
certainly visible to a read at R when t <= R - 5 (the overlap bounds how late a stamp commits).
"""

from __future__ import annotations

import datetime as dt

from labelloop.review.sync import Settled, server_read_time

T0 = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)


def at(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


def test_a_sync_long_after_the_last_edit_leaves_the_cursor_past_it() -> None:
    st = Settled(None, 5.0)
    # one short page, newest task at 10 s, read at 60 s: everything up to 55 s was visible
    assert st.final(None, at(60), at(10)) == at(55)


def test_a_sync_right_after_an_edit_keeps_the_unsure_seconds_for_next_time() -> None:
    st = Settled(at(0), 5.0)
    # read at 12 s: a task stamped after 7 s may still have been committing
    nxt = st.final(at(0), at(12), at(11))
    assert nxt == at(7)
    assert nxt <= at(11)  # the task stamped at 11 s is read again (and deduplicated)


def test_the_cursor_never_passes_a_task_that_may_have_committed_late() -> None:
    # whatever the pages, a task stamped at t >= R_first - overlap must be at or after the cursor
    for read_at in (1.0, 4.99, 5.0, 7.5, 30.0):
        st = Settled(at(0), 5.0)
        st.page(at(0), at(read_at), at(3))  # full page covering [0, 3)
        nxt = st.final(at(3), at(read_at + 20), at(4))
        late = max(0.0, read_at - 5.0)
        if late < 3:  # the first page may have missed tasks stamped from `late` on
            assert nxt <= at(late), (read_at, nxt)
        else:
            assert nxt == at(read_at + 15)


def test_an_early_unsure_page_holds_the_cursor_back_even_when_later_pages_settle() -> None:
    st = Settled(None, 5.0)
    st.page(None, at(8), at(6))  # covered [start, 6) at 8 s: from 3 s on it may miss tasks
    assert st.resume_point(at(6)) == at(3)
    st.page(at(6), at(40), at(20))  # settled: nothing missing
    assert st.final(at(20), at(60), at(30)) == at(3)


def test_a_page_of_one_timestamp_counts_as_unsure_from_that_timestamp() -> None:
    st = Settled(at(0), 5.0)
    st.page(at(2), at(100), at(2))  # all of it stamped at 2 s, the next page steps by number
    assert st.final(at(2), at(200), at(2)) == at(2)


def test_the_cursor_at_the_same_timestamp_as_a_task_includes_it() -> None:
    # the read filter is updated_at >= cursor: a cursor equal to a task's stamp re-reads it
    st = Settled(at(0), 5.0)
    assert st.final(at(0), at(15), at(10)) == at(10)


def test_without_the_server_clock_the_overlap_before_the_watermark_is_read_again() -> None:
    st = Settled(at(0), 5.0)
    st.page(at(0), None, at(30))
    assert st.final(at(30), None, at(40)) == at(35)
    assert Settled(at(50), 5.0).final(at(50), None, at(40)) == at(50)  # never backwards


def test_server_read_time_is_the_date_header_less_the_request_time() -> None:
    assert server_read_time("Thu, 03 Dec 2026 08:45:52 GMT", 1.5) == dt.datetime(
        2026, 12, 3, 8, 45, 50, 500000, tzinfo=dt.UTC
    )
    assert server_read_time(None, 0.1) is None
    assert server_read_time("yesterday", 0.1) is None
