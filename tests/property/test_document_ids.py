"""Document ids: one per primary key (injective), and always an id Elasticsearch accepts
(non-empty, at most 512 UTF-8 bytes), whatever the key: empty, very long, or shaped like
an id the sink makes by hashing."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pipeline.sinks.search import HASHED_ID_PREFIX, MAX_ID_BYTES, document_id

# Text that reaches the interesting edges: empty, multi-byte, the hashed-id prefix, and
# lengths around the 512-byte limit.
edge_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="aé€𝄞", min_size=120, max_size=600),
    st.builds(lambda tail: HASHED_ID_PREFIX + tail, st.text(max_size=70)),
    st.just(""),
)
single_text_keys = st.builds(lambda v: {"sku": v}, edge_text)
int64 = st.integers(-(2**63), 2**63 - 1)  # bigint, the widest integer key PostgreSQL has
single_int_keys = st.builds(lambda v: {"id": v}, int64)
composite_keys = st.builds(lambda a, b: {"order": a, "line": b}, edge_text,
                           st.one_of(int64, edge_text))


def _accepted(doc_id: str) -> bool:
    return 0 < len(doc_id.encode()) <= MAX_ID_BYTES


@given(st.sampled_from([single_text_keys, single_int_keys, composite_keys]).flatmap(
    lambda keys: st.tuples(keys, keys)))
def test_ids_are_injective_and_accepted(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    a, b = pair
    assert _accepted(document_id(a)) and _accepted(document_id(b))
    if a != b:
        assert document_id(a) != document_id(b)


@given(edge_text, edge_text)
def test_plain_ids_never_meet_hashed_ids(a: str, b: str) -> None:
    # A key whose plain id looks like a hashed one is hashed itself, so no key can take
    # the id of an empty or over-long key.
    if a != b:
        assert document_id({"sku": a}) != document_id({"sku": b})
