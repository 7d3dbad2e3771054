"""The shape every service shares: ``async with`` starts it and stops it, whatever ended the
block."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class StartsAndStops:
    """``async with`` for what starts and stops on the loop (a server, the impairment proxy):
    :meth:`start` on entry, :meth:`stop` on the way out, whatever ended the block."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> bool:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
