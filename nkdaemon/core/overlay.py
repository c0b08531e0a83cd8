"""The log after a snapshot, folded without the snapshot: only the rows the log touched.

Restore validation must not hold a whole table in memory (a LogFold loaded from the
snapshot holds every row: gigabytes at ten million rows). This fold applies the logged
transactions after the snapshot and keeps, per table, only the rows they inserted,
changed or deleted. ``expected_rows`` then streams the snapshot's rows of one table once
and yields the table at the end of the log: the snapshot's rows the log did not touch,
then the touched rows that still exist, every reference named by the referenced row's
natural key *at the end* (the form a target reads back and a digest folds).

Rows are followed by entity, as in core/fold.py, so that a rename is seen by every row
that refers to the renamed one: a snapshot row is ``["S", table, its key in the
snapshot]``, a row the log inserted ``["@", n]``, and a row of a table outside the fold
``["K", its key]``. A key or row in *entity form* has its references replaced by those.

The fold is as strict as LogFold, but it cannot see the snapshot while it folds: an event
that needs a snapshot row to exist (an update, a delete, a reference) or not to exist (an
insert) records that claim, and ``expected_rows`` checks the claims against the snapshot's
rows as they pass, raising ReplayError with the message LogFold would have given.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from nkdaemon.core.fold import ReplayError
from nkdaemon.core.keys import TableSpec, key_references, row_references
from nkdaemon.core.log import ChangeEvent
from nkdaemon.core.overlay_parts import (
    DANGLING,
    Form,
    LaterRef,
    OverlayTable,
    Pair,
    form_bytes,
    waits,
)
from nkdaemon.core.table_diff import Unresolved, key_text


class LogOverlay:
    """Apply transactions in order (``apply_transaction``), then stream each table's
    expected rows over its snapshot rows (``expected_rows``)."""

    def __init__(self, specs: Iterable[TableSpec]) -> None:
        self._tables = {
            s.name: OverlayTable(spec=s, key_refs=key_references(s), row_refs=row_references(s))
            for s in specs
        }
        self._next = 1
        self._home: dict[int, str] = {}  # inserted entity -> its table
        self._pending: list[tuple[OverlayTable, bytes, Mapping[str, Any], str, int]] = []
        self._last_set: dict[tuple[str, bytes], int] = {}  # in this transaction
        self._sets = 0
        self._pending_whole: list[tuple[OverlayTable, Mapping[str, Any], str]] = []
        # rows whose references are LaterRef: settled at the end of the transaction
        self._pending_forms: list[tuple[OverlayTable, bytes, Form, str, int]] = []
        self._pending_whole_forms: list[tuple[OverlayTable, Form, str]] = []
        self._deleted: dict[tuple[str, bytes], list[Any]] = {}  # in this transaction
        self._where = ""
        self._dirty_tables: set[str] | None = None  # worked out once the log is folded

    def touched(self, table: str) -> int:
        """How many rows of ``table`` the overlay holds (its memory, in rows)."""
        t = self._tables[table]
        return len(t.state) + len(t.gone) + len(t.present) + len(t.delta)

    # --- entity form ---------------------------------------------------------------------

    def _entity(self, table: str, key: Any, *, defer: bool = False) -> list[Any]:
        """The identity of the row ``key`` names now; ``defer``: raise Unresolved rather than
        take it for a snapshot row, when the log holds no such row yet (a reference to a row
        inserted later in the same transaction: one INSERT of a child before its parent)."""
        t = self._tables.get(table)
        if t is None:
            return ["K", key]
        form = self._key_form(t, key)
        found = t.live.get(ek := form_bytes(form)) or self._deleted.get((table, ek))
        if found is not None:
            return found
        named = f"{table} {key_text(key)}"
        if defer:
            snapshot = None if t.truncated or ek in t.gone else self._unwrap(t, form)
            return LaterRef(table=table, ek=ek, snapshot=snapshot, named=named)  # type: ignore[return-value]
        message = f"{self._where}{named}, which does not exist, is referred to"
        return self._snapshot_entity(t, form, ek, Unresolved(named), message)

    def _settle(self, later: LaterRef) -> list[Any]:
        """The row a deferred reference names, now its transaction has ended."""
        t = self._tables[later.table]
        # the snapshot row under that key when the reference was made, renamed or deleted
        # since: a row inserted later under its old key is another row
        moved = later.snapshot is not None and form_bytes(later.snapshot) in t.replaced
        found = (
            None if moved else t.live.get(later.ek) or self._deleted.get((later.table, later.ek))
        )
        if found is not None:
            return found
        if later.snapshot is None:
            raise Unresolved(later.named)
        message = f"{self._where}{later.named}, which does not exist, is referred to"
        t.present.setdefault(form_bytes(later.snapshot), message)
        return ["S", later.table, later.snapshot]

    def _settled(self, form: Form) -> Form:
        """``form`` with its deferred references settled."""
        return {n: self._settle(v) if isinstance(v, LaterRef) else v for n, v in form.items()}

    def _snapshot_entity(
        self, t: OverlayTable, form: Form, ek: bytes, error: Exception, message: str
    ) -> list[Any]:
        """The untouched snapshot row with this entity-form key (claimed to exist)."""
        key = None if t.truncated or ek in t.gone else self._unwrap(t, form)
        if key is None:
            raise error
        t.present.setdefault(form_bytes(key), message)
        return ["S", t.spec.name, key]

    def _unwrap(self, t: OverlayTable, form: Form) -> Form | None:
        """The snapshot key of an entity-form key, if only snapshot rows are in it."""
        key = {}
        for part, value in form.items():
            if part in t.key_refs and value is not None:
                if value[0] == "@":
                    return None  # a row the log inserted: no snapshot row refers to it
                value = value[-1]
            key[part] = value
        return key

    def _key_form(self, t: OverlayTable, key: Mapping[str, Any]) -> Form:
        refs = t.key_refs
        return {
            p: self._entity(refs[p], v) if p in refs and v is not None else v
            for p, v in key.items()
        }

    def _row_form(self, t: OverlayTable, row: Mapping[str, Any], *, defer: bool = False) -> Form:
        refs = t.row_refs
        return {
            n: self._entity(refs[n], v, defer=defer) if n in refs and v is not None else v
            for n, v in row.items()
        }

    # --- folding -------------------------------------------------------------------------

    def apply_transaction(self, events: Iterable[ChangeEvent], *, where: str = "") -> None:
        """Apply one transaction's events; references may point forward within it."""
        self._where = where
        self._dirty_tables = None
        for event in events:
            t = self._tables.get(event.table)
            if t is not None:
                try:
                    self._apply(t, event, where)
                except Unresolved as missing:
                    raise _missing(where, t, missing) from None
        self._resolve_pending()
        self._deleted.clear()

    def _apply(self, t: OverlayTable, event: ChangeEvent, where: str) -> None:
        if event.op == "T":
            t.truncated, t.moved = True, True
            for part in (t.live, t.state, t.gone, t.delta, t.forms):
                part.clear()
        elif t.spec.full_row_identity:
            self._apply_multiset(t, event, where)
        elif event.op == "I":
            self._insert(t, _given(event.key), _given(event.row), where)
        elif event.op == "U":
            self._update(t, event, where)
        else:
            self._delete(t, _given(event.key), where)

    def _claim_absent(self, t: OverlayTable, form: Form, ek: bytes, message: str) -> None:
        if not t.truncated and ek not in t.gone:
            key = self._unwrap(t, form)
            if key is not None:
                t.absent.setdefault(form_bytes(key), message)

    def _insert(
        self, t: OverlayTable, key: Mapping[str, Any], row: Mapping[str, Any], where: str
    ) -> None:
        name = t.spec.name
        form = self._key_form(t, key)
        ek = form_bytes(form)
        if ek in t.live:
            raise ReplayError(f"{where}insert of {name} {key_text(key)}, which exists")
        self._claim_absent(t, form, ek, f"{where}insert of {name} {key_text(key)}, which exists")
        entity = ["@", self._next]
        self._home[self._next] = name
        self._next += 1
        t.gone.discard(ek)
        t.live[ek] = entity
        self._set(t, entity, form, row, where)

    def _take(
        self, t: OverlayTable, key: Mapping[str, Any], message: str
    ) -> tuple[list[Any], bytes]:
        """The entity with this key, taken out of the live rows (a snapshot row: claimed)."""
        form = self._key_form(t, key)
        ek = form_bytes(form)
        entity = t.live.pop(ek, None)
        if entity is None:
            entity = self._snapshot_entity(t, form, ek, ReplayError(message), message)
            t.replaced.add(form_bytes(entity[2]))
        t.gone.add(ek)
        t.state.pop(form_bytes(entity), None)
        return entity, ek

    def _update(self, t: OverlayTable, event: ChangeEvent, where: str) -> None:
        name, key, previous = t.spec.name, _given(event.key), _given(event.previous_key)
        message = f"{where}update of {name} {key_text(previous)}, which does not exist"
        entity, old = self._take(t, previous, message)
        form = self._key_form(t, key)
        ek = form_bytes(form)
        if ek in t.live:
            raise ReplayError(f"{where}update of {name} to {key_text(key)}, which exists")
        if ek != old:
            exists = f"{where}update of {name} to {key_text(key)}, which exists"
            self._claim_absent(t, form, ek, exists)
            t.moved = t.moved or entity[0] == "S"
        t.gone.discard(ek)
        t.live[ek] = entity
        self._set(t, entity, form, _given(event.row), where)

    def _delete(self, t: OverlayTable, key: Mapping[str, Any], where: str) -> None:
        message = f"{where}delete of {t.spec.name} {key_text(key)}, which does not exist"
        entity, ek = self._take(t, key, message)
        t.moved = t.moved or entity[0] == "S"
        self._deleted[(t.spec.name, ek)] = entity

    def _set(
        self, t: OverlayTable, entity: list[Any], key: Form, row: Mapping[str, Any], where: str
    ) -> None:
        eid = form_bytes(entity)
        # only a row's last change in the transaction may settle its state at the end
        self._sets += 1
        self._last_set[(t.spec.name, eid)] = written = self._sets
        try:
            form = self._row_form(t, row, defer=True)
        except Unresolved:  # a reference to a row later in the transaction
            t.state[eid] = (key, None)
            self._pending.append((t, eid, row, where, written))
            return
        if waits(form):
            t.state[eid] = (key, None)
            self._pending_forms.append((t, eid, form, where, written))
        else:
            t.state[eid] = (key, form)

    def _apply_multiset(self, t: OverlayTable, event: ChangeEvent, where: str) -> None:
        """A keyless table: a change of how many of each row there are."""
        if event.op in ("U", "D"):
            form = self._row_form(t, _given(event.previous_key))
            text = form_bytes(form)
            count = t.delta.get(text, 0) - 1
            message = f"{where}{event.op} of a {t.spec.name} row that does not exist"
            if count < 0 and t.truncated:
                raise ReplayError(message)
            if count < 0:
                t.short.setdefault(text, message)
            self._count(t, text, form, count)
        if event.op in ("I", "U"):
            try:
                form = self._row_form(t, _given(event.row), defer=True)
            except Unresolved:  # a reference to a row later in the transaction
                self._pending_whole.append((t, _given(event.row), where))
                return
            if waits(form):
                self._pending_whole_forms.append((t, form, where))
                return
            text = form_bytes(form)
            self._count(t, text, form, t.delta.get(text, 0) + 1)

    def _count(self, t: OverlayTable, text: bytes, form: Form, count: int) -> None:
        if count:
            t.delta[text], t.forms[text] = count, form
        else:
            t.delta.pop(text, None)
            t.forms.pop(text, None)

    def _resolve_pending(self) -> None:
        last, self._last_set = self._last_set, {}
        forms, self._pending_forms = self._pending_forms, []
        for t, eid, form, where, written in forms:
            if eid in t.state and last.get((t.spec.name, eid)) == written:
                try:
                    t.state[eid] = (t.state[eid][0], self._settled(form))
                except Unresolved as missing:
                    raise _missing(where, t, missing) from None
        whole_forms, self._pending_whole_forms = self._pending_whole_forms, []
        for t, form, where in whole_forms:
            try:
                settled = self._settled(form)
            except Unresolved as missing:
                raise _missing(where, t, missing) from None
            text = form_bytes(settled)
            self._count(t, text, settled, t.delta.get(text, 0) + 1)
        pending, self._pending = self._pending, []
        for t, eid, row, where, written in pending:
            if eid in t.state and last.get((t.spec.name, eid)) == written:
                try:
                    t.state[eid] = (t.state[eid][0], self._row_form(t, row))
                except Unresolved as missing:
                    raise _missing(where, t, missing) from None
        whole, self._pending_whole = self._pending_whole, []
        for t, row, where in whole:
            try:
                form = self._row_form(t, row)
            except Unresolved as missing:
                raise _missing(where, t, missing) from None
            text = form_bytes(form)
            self._count(t, text, form, t.delta.get(text, 0) + 1)

    # --- the expected rows ---------------------------------------------------------------

    def expected_rows(self, table: str, snapshot: Iterable[Pair]) -> Iterator[Pair]:
        """The table at the end of the log, as (natural key, row): ``snapshot`` (the
        snapshot's rows of ``table``) streamed once, the log's changes laid over it.

        Raises ReplayError at the end when the snapshot contradicts a claim of the log
        (an update of a row it lacks, an insert of a row it has)."""
        t = self._tables[table]
        dirty = self._dirty()
        rewrite = any(r in dirty for r in (*t.key_refs.values(), *t.row_refs.values()))
        if t.spec.full_row_identity:
            yield from self._expected_multiset(t, snapshot, rewrite, dirty)
            return
        check = bool(t.present or t.absent or t.replaced or t.truncated)
        seen: set[bytes] = set()
        for key, row in snapshot:
            if check:
                text = form_bytes(key)
                if text in t.absent:
                    raise ReplayError(t.absent[text])
                if text in t.present:
                    seen.add(text)
                if t.truncated or text in t.replaced:
                    continue
            yield self._rerendered(t, key, row, dirty) if rewrite else (key, row)
        for text, message in t.present.items():
            if text not in seen:
                raise ReplayError(message)
        for key_form, row_form in t.state.values():
            yield self._render(t.key_refs, key_form), self._render(t.row_refs, row_form or {})

    def _expected_multiset(
        self, t: OverlayTable, snapshot: Iterable[Pair], rewrite: bool, dirty: set[str]
    ) -> Iterator[Pair]:
        short = {text: -n for text, n in t.delta.items() if n < 0}
        for _key, row in snapshot:
            if short:
                text = form_bytes(self._snapshot_form(t.row_refs, row))
                if short.get(text, 0) > 0:
                    short[text] -= 1
                    continue
            if not t.truncated:
                rendered = self._rerendered(t, row, row, dirty)[1] if rewrite else row
                yield rendered, rendered
        for text, n in short.items():
            if n > 0:
                raise ReplayError(t.short[text])
        for text, n in t.delta.items():
            rendered = self._render(t.row_refs, t.forms[text])
            for _ in range(max(0, n)):
                yield rendered, rendered

    def _snapshot_form(self, refs: Mapping[str, str], row: Mapping[str, Any]) -> Form:
        """A snapshot row's entity form (its references are snapshot rows)."""
        return {
            n: (["S", refs[n], v] if refs[n] in self._tables else ["K", v])
            if n in refs and v is not None
            else v
            for n, v in row.items()
        }

    def _dirty(self) -> set[str]:
        """Tables whose snapshot rows' keys may have changed (renamed, deleted, or a key
        that holds a reference to such a row): references to them are re-rendered."""
        if self._dirty_tables is not None:
            return self._dirty_tables
        dirty = {name for name, t in self._tables.items() if t.moved}
        grew = True
        while grew:
            more = {
                name
                for name, t in self._tables.items()
                if name not in dirty and any(r in dirty for r in t.key_refs.values())
            }
            dirty |= more
            grew = bool(more)
        self._dirty_tables = dirty
        return dirty

    def _rerendered(self, t: OverlayTable, key: Form, row: Form, dirty: set[str]) -> Pair:
        def now(refs: Mapping[str, str], form: Form) -> Form:
            return {
                n: self._now(refs[n], v, dirty)
                if n in refs and v is not None and refs[n] in dirty
                else v
                for n, v in form.items()
            }

        return now(t.key_refs, key), now(t.row_refs, row)

    def _now(self, table: str, key: Any, dirty: set[str]) -> Any:
        """The key now of the snapshot row whose snapshot key is ``key``."""
        t = self._tables[table]
        if t.truncated:
            return DANGLING
        if form_bytes(key) in t.replaced:
            found = t.state.get(form_bytes(["S", table, key]))
            return DANGLING if found is None else self._render(t.key_refs, found[0])
        return {
            p: self._now(t.key_refs[p], v, dirty)
            if p in t.key_refs and v is not None and t.key_refs[p] in dirty
            else v
            for p, v in key.items()
        }

    def _render(self, refs: Mapping[str, str], form: Form) -> Form:
        return {
            n: self._render_ref(v) if n in refs and v is not None else v for n, v in form.items()
        }

    def _render_ref(self, entity: list[Any]) -> Any:
        if entity[0] == "K":
            return entity[1]
        table = self._home[entity[1]] if entity[0] == "@" else entity[1]
        t = self._tables[table]
        found = t.state.get(form_bytes(entity))
        if found is not None:
            return self._render(t.key_refs, found[0])
        if entity[0] == "@":
            return DANGLING
        return self._now(table, entity[2], self._dirty())


def _missing(where: str, t: OverlayTable, missing: Unresolved) -> ReplayError:
    return ReplayError(f"{where}{t.spec.name} refers to {missing}, which does not exist")


def _given(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if value is None:
        raise ReplayError("an event lacks the key or row its operation requires")
    return value
