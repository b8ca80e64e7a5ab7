"""Byte-level mutations of files for the fuzz tests (shared by the engine and robustness suites)."""

from __future__ import annotations

from hypothesis import strategies as st


def mutation(*, max_insert: int, max_delete: int, max_position: int = 4000) -> st.SearchStrategy:
    """One edit: flip a bit, set a byte, insert or delete bytes, or truncate."""
    position = st.integers(0, max_position)
    return st.one_of(
        st.tuples(st.just("flip"), position, st.integers(0, 7)),
        st.tuples(st.just("set"), position, st.integers(0, 255)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=max_insert)),
        st.tuples(st.just("delete"), position, st.integers(1, max_delete)),
        st.tuples(st.just("truncate"), position, st.none()),
    )


def mutate(data: bytes, mutations: list[tuple]) -> bytes:
    """Apply the edits drawn from :func:`mutation` in order (positions wrap around)."""
    buf = bytearray(data)
    for op, position, arg in mutations:
        i = position % (len(buf) + 1)
        if op == "insert":
            buf[i:i] = arg
        elif op == "truncate":
            del buf[i:]
        elif op == "delete":
            del buf[i : i + arg]
        elif i < len(buf):
            buf[i] = buf[i] ^ (1 << arg) if op == "flip" else arg
    return bytes(buf)
