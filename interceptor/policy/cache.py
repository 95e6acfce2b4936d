"""Decisions kept for their keys, bounded by count and by the size of what produced them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from interceptor.decision import Decision


class DecisionCache:
    """Least recently used first out. `size`: most entries kept (0: none); `chars`: most
    characters (of the texts judged) the entries may add up to, so an agent's long
    operations cannot grow the daemon. An entry larger than `chars` alone is not kept."""

    def __init__(self, size: int, chars: int) -> None:
        self.size = size
        self.limit = chars
        self.chars = 0  # what the entries kept add up to now
        self._entries: OrderedDict[Hashable, tuple[Decision, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Decision | None:
        """The decision kept for `key` (now the most recently used), None when there is none."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def keep(self, key: Hashable, decision: Decision, chars: int) -> None:
        """Keep `decision` for `key`, counting `chars`; the least recently used go first."""
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.chars -= previous[1]
        self._entries[key] = (decision, chars)
        self.chars += chars
        while len(self._entries) > self.size or self.chars > self.limit:
            self.chars -= self._entries.popitem(last=False)[1][1]
