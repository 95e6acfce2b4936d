"""Text caches stay bounded in bytes: long inputs are computed again, never kept."""

from interceptor.textcache import short_text_cache


def test_short_inputs_are_cached_long_ones_computed_each_time():
    calls = []

    @short_text_cache(maxsize=8, longest=10)
    def upper(text: str) -> str:
        calls.append(text)
        return text.upper()

    assert [upper("short"), upper("short")] == ["SHORT", "SHORT"]
    assert [upper("x" * 11), upper("x" * 11)] == ["X" * 11, "X" * 11]
    assert calls == ["short", "x" * 11, "x" * 11]
