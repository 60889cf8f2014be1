"""
One device shared by several scopes: slots granted by weighted deficit round robin.

A :class:`Device` stands for what several scopes' batches compete for: one GPU that two
models share, one remote API that two tenants call. Each scope built with ``device=`` asks
it for a slot before it dispatches a batch (:meth:`DeviceClient.may_run`) and gives the
slot back when the batch ends (:meth:`DeviceClient.release`). Scopes without a device
never touch this module.

While a slot is free and nobody waits for one, the first scope with a due batch takes it.
Scopes that find every slot taken wait; when a slot frees, the device chooses among them
by deficit round robin on cost: the waiting scopes form a ring, the scope whose turn it
is gets ``quantum * weight`` cost units of credit, and it is served while its credit
covers its next batch's load (the batch's size, or its cost); then the turn passes on.
Over time each backlogged scope gets a share of the device's work proportional to its
weight, whatever the sizes of its batches. ``quantum`` is the largest batch load the
device has seen, so any scope is served within ``1 / weight`` turns. Aging: a scope that
has waited ``aging`` seconds for a slot is served next, whatever its credit, so none
starves, however small its weight.

A scope's scheduler asks when its timer finds a batch due, but a slot can free in the
same instant, before that scheduler has run: so when a batch ends, the device also asks
each scope not yet waiting whether a batch of its is due now (``Scheduler.device_due``),
and such a scope waits with the others before the device chooses. A batch that came due
is never passed over for a turn it has not asked for yet.

The chosen scope's slot is held for it (it may not be the next to ask), and its
scheduler is woken through its own channel (``Scheduler.wake``); if it no longer has a
due batch (its callers left), it hands the slot back and the device chooses again.

Lookahead: the device does not pre-empt, so a batch that comes due while another runs
waits for the rest of it. When the device is about to grant a slot to a scope whose batch
will run ``R`` seconds (that scope's fitted run time for the batch's load,
``Scheduler.model``), it asks each scope that is not waiting when its pending batch
comes due (``Scheduler.device_upcoming``): one due before ``now + R`` would wait for
that whole batch anyway, so it goes first, early (the slot is held for it with
:attr:`DeviceClient.early` set, and its scheduler releases what is pending now, release
reason ``early``); the chosen scope keeps its turn and its credit and goes next, with no
lookahead (one early batch per grant). Of several, the one due soonest goes. Never ahead
of a scope served by aging. Bounds, so that early batches take no more than a scope's
weighted share from backlogged ones: a scope outside the ring earns
``quantum * weight / len(ring)`` of credit for early batches per turn the ring grants
(what a place in the ring would give it), one turn's worth at most, and is pulled
forward only while that covers the batch; the batch is charged to it and to the scope's
round-robin credit (down to zero), and what it earned outside lapses when it joins the
ring (turns credit it there).

A device belongs to one event loop: every scope using it must run on the loop of the
first one that opened (a scope on another loop raises ``RuntimeError`` when it opens).
It is not thread-safe, like the rest of a scope.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import final

import anyio
import anyio.lowlevel
import attrs

from ._durations import check_int, positive_seconds

__all__ = ["Device", "DeviceClient", "DeviceShare", "DeviceStatistics"]


@final
@attrs.frozen
class DeviceShare:
    """
    One scope's use of a :class:`Device`, in :meth:`Device.statistics`.

    .. versionadded:: 0.2.0
    """

    #: The scope, as its ``repr`` names it when it opened.
    scope: str
    #: Its weight.
    weight: float
    #: Batches it ran on the device.
    batches: int
    #: Their load: items, or cost units when the scope has a ``cost``.
    load: float
    #: Seconds its batches held a slot.
    busy_seconds: float
    #: Seconds its due batches waited for a slot.
    wait_seconds: float
    #: Its part of the busy time of every scope listed (0.0 before any batch ended).
    share: float


@final
@attrs.frozen
class DeviceStatistics:
    """
    A snapshot of a :class:`Device`: its slots and each scope's share of them.

    .. versionadded:: 0.2.0
    """

    #: Slots of the device.
    slots: int
    #: Slots held by running batches now (or held for a scope that was chosen).
    in_use: int
    #: Scopes waiting for a slot now.
    waiting: int
    #: Every scope that has used the device, in the order they first opened.
    scopes: tuple[DeviceShare, ...]


class DeviceClient:
    """One scope's handle on its device (held by its engine)."""

    __slots__ = (
        "ahead",
        "asked_at",
        "batches",
        "busy",
        "deficit",
        "device",
        "due",
        "early",
        "held",
        "load",
        "mark",
        "name",
        "runtime",
        "upcoming",
        "wait",
        "waited",
        "wake",
        "want",
        "weight",
    )

    def __init__(
        self,
        device: Device,
        name: str,
        weight: float,
        wake: Callable[[], None],
        due: Callable[[], float],
        upcoming: Callable[[], tuple[float, float]],
        runtime: Callable[[float], float],
    ) -> None:
        self.device: Device = device
        self.name: str = name
        self.weight: float = weight
        #: Pokes the scope's scheduler (``Scheduler.wake``).
        self.wake: Callable[[], None] = wake
        #: The load of the scope's batch due now, or 0.0 (``Scheduler.device_due``).
        self.due: Callable[[], float] = due
        #: When the scope's pending batch comes due and its load, or ``(inf, 0.0)``
        #: (``Scheduler.device_upcoming``).
        self.upcoming: Callable[[], tuple[float, float]] = upcoming
        #: The scope's predicted run time of a batch of a load (its ``RunTimeModel``).
        self.runtime: Callable[[float], float] = runtime
        #: Credit in cost units (deficit round robin).
        self.deficit: float = 0.0
        #: The load of the due batch it waits to run.
        self.want: float = 0.0
        #: When it started waiting (inf: not waiting).
        self.asked_at: float = math.inf
        #: A slot the device holds for it.
        self.held: bool = False
        #: The held slot is for a batch pulled forward (lookahead): release what is
        #: pending now, before its timer.
        self.early: bool = False
        #: Credit earned outside the ring, for batches pulled forward (lookahead).
        self.ahead: float = 0.0
        #: The device's ``rounds`` when this scope last earned credit outside the ring.
        self.mark: float = device.rounds
        self.batches: int = 0
        self.load: float = 0.0
        self.busy: float = 0.0
        self.waited: float = 0.0
        self.wait: float = 0.0

    def may_run(self) -> bool:
        """Whether the scope may take a slot now (one is free, or held for it)."""
        device = self.device
        return self.held or (device.free > 0 and not device.ring)

    def ask(self, load: float, now: float, *, choose: bool = True) -> None:
        """
        The scope has a due batch of *load* and no slot: wait for one (it is woken when
        chosen). Without *choose* the device does not choose yet (a slot is about to
        free, and the scope asks before it does: it is still backlogged).
        """
        self.device.enqueue(self, load, now, choose=choose)

    def claim(self, load: float, now: float) -> None:
        """The scope dispatches a batch of *load*: take the slot (the one held for it)."""
        device = self.device
        self.early = False
        if self.held:
            self.held = False
        else:
            device.free -= 1
        if self.asked_at != math.inf:
            self.waited += now - self.asked_at
            self.asked_at = math.inf
        device.quantum = max(device.quantum, load)
        self.batches += 1
        self.load += load

    def decline(self) -> None:
        """Chosen, the scope has no due batch after all: hand the held slot back."""
        self.early = False
        if self.held:
            self.held = False
            self.device.free += 1
            # Not pulled forward in the same breath: its scheduler is running (it is the
            # one declining), so a wake would not reach it and the slot would sit idle.
            self.device.choose(skip=self)

    def release(self, seconds: float) -> None:
        """A batch that held a slot for *seconds* ended: free the slot, choose the next."""
        self.busy += seconds
        device = self.device
        device.free += 1
        device.gather_due()
        device.choose()

    def leave(self) -> None:
        """The scope closed: stop waiting, hand back a held slot."""
        device = self.device
        if self in device.ring:
            device.ring.remove(self)
        if device.passed_over is self:
            device.passed_over = None
        self.asked_at = math.inf
        self.due = _nothing_due
        self.upcoming = _nothing_upcoming
        self.decline()


def _nothing_due() -> float:
    """A closed scope has no batch due."""
    return 0.0


def _nothing_upcoming() -> tuple[float, float]:
    """A closed scope has no batch pending."""
    return math.inf, 0.0


def _no_runtime(load: float) -> float:
    """A scope that tells no run time: none to look ahead over."""
    return 0.0


@final
class Device:
    """
    A device (a GPU, a remote API) that several scopes share, fairly.

    Pass one to several scopes (``BatchScope(fn, device=gpu, weight=2.0)``): at most
    *slots* of their batches run at once, all scopes together. When a slot frees, the
    next batch comes from the scopes waiting for one by weighted deficit round robin on
    cost: while they are all backlogged, each scope's share of the device's work (in
    items, or cost units with ``cost=``) is proportional to its weight. Inside each
    scope its own options (``max_batch_size``, ``policy``, deadlines...) still pick
    the batch. A scope that has waited *aging* seconds for a slot goes next, so none
    starves. The device does not pre-empt, but it looks ahead: when it grants a slot, a
    scope not waiting whose pending batch would come due while the granted batch runs
    sends that batch first, early (release reason ``early``), within its weighted share.
    Scopes without ``device=`` are not affected.

    A device belongs to one event loop: all its scopes must run on it (a scope opened
    on another loop or thread raises ``RuntimeError``). Each scope's own
    ``max_concurrent_batches`` still bounds that scope's batches.

    Args:
        slots: Batches that may run on the device at once, all scopes together.
        aging: Seconds (or a ``timedelta``) a scope's due batch waits for a slot at
            most before it is served, whatever its weight and credit.

    Raises:
        TypeError, ValueError: An argument is invalid (the message names it).

    .. versionadded:: 0.2.0
    """

    def __init__(self, slots: int = 1, *, aging: float = 1.0) -> None:
        check_int("slots", slots, minimum=1)
        self._slots = slots
        self._aging = positive_seconds("aging", aging)
        #: Free slots (not running a batch, not held for a chosen scope).
        self.free: int = slots
        #: Scopes waiting for a slot, in round-robin order; the head has the turn.
        self.ring: deque[DeviceClient] = deque()
        #: Credit per turn at weight 1: the largest batch load seen.
        self.quantum: float = 1.0
        self._clients: list[DeviceClient] = []
        self._token: object = None
        #: The scope whose turn it is (it keeps the turn while its credit lasts).
        self._turn: DeviceClient | None = None
        #: The scope an early batch went ahead of: it goes next, with no lookahead.
        self.passed_over: DeviceClient | None = None
        #: Credit per unit of weight the ring has granted so far, each turn's
        #: ``quantum / len(ring)``: what a scope outside the ring earns (lookahead).
        self.rounds: float = 0.0

    def __repr__(self) -> str:
        return f"<Device slots={self._slots} free={self.free} waiting={len(self.ring)}>"

    @property
    def slots(self) -> int:
        """Batches that may run at once."""
        return self._slots

    def join(
        self,
        name: str,
        weight: float,
        wake: Callable[[], None],
        due: Callable[[], float] = _nothing_due,
        upcoming: Callable[[], tuple[float, float]] = _nothing_upcoming,
        runtime: Callable[[float], float] = _no_runtime,
    ) -> DeviceClient:
        """
        A scope opens on this device (on the current event loop); return its handle.
        *wake* pokes its scheduler; *due* returns the load of its batch due now, or 0.0;
        *upcoming* when its pending batch comes due and its load, or ``(inf, 0.0)``;
        *runtime* its predicted run time of a batch of a given load.
        """
        token = anyio.lowlevel.current_token()
        if self._token is None:
            self._token = token
        elif token != self._token:
            raise RuntimeError(
                f"{self!r} is used by scopes on another event loop; a device is shared only "
                f"by scopes on one event loop (one thread)"
            )
        client = DeviceClient(self, name, weight, wake, due, upcoming, runtime)
        self._clients.append(client)
        return client

    def enqueue(self, client: DeviceClient, load: float, now: float, *, choose: bool) -> None:
        """*client* waits for a slot for a batch of *load*; *choose*: fill free slots now."""
        client.want = load
        self.quantum = max(self.quantum, load)
        if client.asked_at == math.inf:
            client.asked_at = now
        if client not in self.ring:
            # Credit left from a turn is kept, up to one turn's worth (no bursts); in the
            # ring, turns credit it (what it earned outside, for early batches, lapses).
            client.deficit = min(client.deficit, self.quantum * client.weight)
            client.ahead = 0.0
            if client is self._turn:
                self.ring.appendleft(client)  # its turn goes on
            else:
                self.ring.append(client)
        if choose and self.free > 0:
            self.choose()

    def gather_due(self) -> None:
        """Every scope with a batch due now that has not asked yet waits for a slot too."""
        ring = self.ring
        now = anyio.current_time()
        for client in self._clients:
            if client.held or client in ring:
                continue
            load = client.due()
            if load:
                self.enqueue(client, load, now, choose=False)

    def choose(self, skip: DeviceClient | None = None) -> None:
        """
        Hold free slots for the waiting scopes whose turn it is, and wake them; *skip* (a
        scope handing its slot back) is not pulled forward.
        """
        ring = self.ring
        while self.free > 0 and ring:
            now = anyio.current_time()
            chosen = self._aged(now)
            if chosen is None:
                chosen = self._next_by_credit()
                # A scope passed over once goes next: one early batch per grant at most.
                if chosen is not self.passed_over:
                    early = self._lookahead(chosen, now, skip)
                    if early is not None:
                        # The chosen scope keeps its place, its turn and its credit.
                        chosen.deficit += chosen.want
                        self.passed_over = chosen
                        early.early = True
                        self._grant(early)
                        continue
            ring.remove(chosen)
            if chosen is self.passed_over:
                self.passed_over = None
            self._grant(chosen)

    def _grant(self, client: DeviceClient) -> None:
        """Hold a free slot for *client* and wake it."""
        self.free -= 1
        client.held = True
        client.mark = self.rounds
        client.wake()

    def _lookahead(
        self, chosen: DeviceClient, now: float, skip: DeviceClient | None
    ) -> DeviceClient | None:
        """
        A scope not waiting whose pending batch comes due while *chosen*'s batch would
        run, and whose credit covers it (the one due soonest), charged for it; or None.
        """
        ring = self.ring
        horizon = now + chosen.runtime(chosen.want)
        if horizon <= now:
            return None
        rounds = self.rounds
        early: DeviceClient | None = None
        early_load = 0.0
        for client in self._clients:
            if client.held or client is skip or client in ring:
                continue
            due, load = client.upcoming()
            if not load:
                client.mark = rounds  # nothing pending: no credit for idle time
                continue
            # Credit earned outside the ring since it was last counted, one turn at most.
            most = self.quantum * client.weight
            client.ahead = min(client.ahead + (rounds - client.mark) * client.weight, most)
            client.mark = rounds
            if now < due < horizon and client.ahead >= load:
                horizon = due
                early = client
                early_load = load
        if early is not None:
            # Charged to the credit earned outside the ring, and to the round-robin credit
            # it would bring into the ring (not below zero: a scope served early does not
            # then wait a turn in debt once it does join the ring).
            early.ahead -= early_load
            early.deficit = max(early.deficit - early_load, 0.0)
            early.want = early_load
        return early

    def _aged(self, now: float) -> DeviceClient | None:
        """The scope that has waited longest, if that is *aging* or more."""
        oldest = min(self.ring, key=lambda client: client.asked_at)
        return oldest if now - oldest.asked_at >= self._aging else None

    def _next_by_credit(self) -> DeviceClient:
        """Deficit round robin: the head while its credit covers its batch, else the next."""
        ring = self.ring
        # Each full turn adds quantum * weight to a scope's credit, so some scope is
        # served within max(want) / (quantum * min(weight)) + 1 turns of the ring.
        while True:
            head = ring[0]
            if head.deficit >= head.want and head is self._turn:
                head.deficit -= head.want
                return head
            if head is self._turn:
                ring.rotate(-1)  # its credit is spent: the turn passes on
            turn = self._turn = ring[0]
            turn.deficit += self.quantum * turn.weight
            self.rounds += self.quantum / len(ring)

    def statistics(self) -> DeviceStatistics:
        """
        Return a frozen snapshot: slots in use, scopes waiting, each scope's share.

        .. versionadded:: 0.2.0
        """
        total = sum(client.busy for client in self._clients)
        return DeviceStatistics(
            slots=self._slots,
            in_use=self._slots - self.free,
            waiting=len(self.ring),
            scopes=tuple(
                DeviceShare(
                    scope=client.name,
                    weight=client.weight,
                    batches=client.batches,
                    load=client.load,
                    busy_seconds=client.busy,
                    wait_seconds=client.waited,
                    share=client.busy / total if total > 0 else 0.0,
                )
                for client in self._clients
            ),
        )
