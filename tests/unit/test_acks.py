from hypothesis import given
from hypothesis import strategies as st

from pipeline.acks import AckLedger


def test_only_a_contiguous_prefix_is_ready() -> None:
    ledger: AckLedger[str] = AckLedger()
    for offset in (5, 6, 7):
        ledger.track(("t", 0), offset, f"e{offset}")
    ledger.track(("t", 1), 3, "other")
    ledger.done(("t", 0), 6)
    ledger.done(("t", 0), 7)
    assert ledger.ready() == []  # 5 is still in flight: 6 and 7 must wait
    ledger.done(("t", 1), 3)
    assert ledger.ready() == ["other"]
    ledger.done(("t", 0), 5)
    assert ledger.ready() == ["e5", "e6", "e7"]
    assert ledger.waiting() == 0


@given(st.permutations(list(range(20))))
def test_any_completion_order_acks_each_once_in_offset_order(order: list[int]) -> None:
    ledger: AckLedger[int] = AckLedger()
    for offset in range(20):
        ledger.track(("t", 0), offset, offset)
    acked: list[int] = []
    for offset in order:
        ledger.done(("t", 0), offset)
        newly = ledger.ready()
        acked.extend(newly)
        # never ack past an offset that is not done
        assert all(o in order[: order.index(offset) + 1] for o in newly)
    assert acked == list(range(20))
