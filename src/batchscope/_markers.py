"""
Markers a batch function returns in place of a value: :data:`END` ends a streamed row.
"""

from __future__ import annotations

from typing import Final, final

__all__ = ["END", "End"]


@final
class End:
    """The type of :data:`END`: one instance only."""

    _instance: End | None = None

    def __new__(cls) -> End:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "batchscope.END"

    def __reduce__(self) -> str:
        return "END"


#: Returned (or yielded) for a row instead of a value: that row's stream has ended.
END: Final = End()
