"""Sweeps in the store: a sweep, its cells, and one row per (cell, seed) linking a stored run.

Tables (migration 0003): `sweeps` (name, the spec as JSON, when), `sweep_cells` (one decoding
configuration of a sweep, unique by key) and `sweep_runs` (one per (cell, seed): unique, so a
seed is counted once whatever retried it). A `sweep_runs` row is a claim with an attempt token:

    claim(cell, seed)        -> a fresh attempt token, or None when the seed is done already
    attach(attempt, run_id)  -> the run being decoded for it, linked in the run row's own transaction
    complete(attempt, ...)   -> done, with the run's metrics; False if another attempt took over

A task that dies leaves its row `running` with a partial run; the next claim of that seed (Ray's
retry, or `--resume`) deletes that run and takes the row over with a new token, so the dead
attempt can never mark it done. Summaries read only `done` rows.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from explorer.store.database import Base, Run, TrajectoryStore, readable_error

SWEEP_RUN_STATUSES = ("running", "done", "failed")


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    spec: Mapped[dict] = mapped_column(JSON)  # the validated spec (explorer/sweeps/spec.py), as JSON
    created_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))


class SweepCell(Base):
    __tablename__ = "sweep_cells"
    __table_args__ = (UniqueConstraint("sweep_id", "key", name="uq_sweep_cells_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)  # the cell's place in the spec's expansion
    key: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(Text)
    cell: Mapped[dict] = mapped_column(JSON)  # explorer.sweeps.spec.Cell as JSON


class SweepRun(Base):
    __tablename__ = "sweep_runs"
    __table_args__ = (UniqueConstraint("cell_id", "seed", name="uq_sweep_runs_cell_seed"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("sweep_cells.id", ondelete="CASCADE"))
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # running | done | failed
    attempt: Mapped[str] = mapped_column(String(32))  # the claim's token: only its holder may finish it
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    metrics: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))  # host:pid of the attempt that wrote it
    updated_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))


class SweepExists(ValueError):
    """A sweep of that name is in the store already (resume it, or give the new one another name)."""


# ---- sweeps and cells ---------------------------------------------------------------------------
def create_sweep(store: TrajectoryStore, name: str, spec: dict, cells: list[tuple[str, str, dict]]) -> int:
    """A new sweep with its cells ((key, label, cell JSON) in spec order); its id."""
    with store.session() as s, s.begin():
        sweep = Sweep(name=name, spec=spec)
        s.add(sweep)
        s.flush()
        s.add_all(
            SweepCell(sweep_id=sweep.id, index=i, key=key, label=label, cell=cell)
            for i, (key, label, cell) in enumerate(cells)
        )
        return sweep.id


def find_sweep(store: TrajectoryStore, name: str) -> dict | None:
    """The newest sweep called `name`, or None."""
    with store.session() as s:
        sweep = s.scalars(select(Sweep).where(Sweep.name == name).order_by(Sweep.id.desc()).limit(1)).first()
        return _sweep_dict(sweep) if sweep is not None else None


def get_sweep(store: TrajectoryStore, sweep_id: int) -> dict | None:
    with store.session() as s:
        sweep = s.get(Sweep, sweep_id)
        return _sweep_dict(sweep) if sweep is not None else None


def sweep_cells(store: TrajectoryStore, sweep_id: int) -> list[dict]:
    """The sweep's cells in spec order: id, index, key, label, cell."""
    with store.session() as s:
        rows = s.scalars(select(SweepCell).where(SweepCell.sweep_id == sweep_id).order_by(SweepCell.index))
        return [{"id": c.id, "index": c.index, "key": c.key, "label": c.label, "cell": c.cell} for c in rows]


def list_sweeps(store: TrajectoryStore, limit: int = 100) -> list[dict]:
    """Newest first, with progress: cells, seeds per cell, runs done / failed / running."""
    with store.session() as s:
        sweeps = s.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(limit)).all()
        ids = [sw.id for sw in sweeps]
        cells = dict(
            s.execute(
                select(SweepCell.sweep_id, func.count()).where(SweepCell.sweep_id.in_(ids)).group_by(SweepCell.sweep_id)
            ).all()
        )
        counts: dict[tuple[int, str], int] = {
            (sweep_id, status): n
            for sweep_id, status, n in s.execute(
                select(SweepRun.sweep_id, SweepRun.status, func.count())
                .where(SweepRun.sweep_id.in_(ids))
                .group_by(SweepRun.sweep_id, SweepRun.status)
            ).all()
        }
    out = []
    for sw in sweeps:
        row = _sweep_dict(sw) | {"cells": cells.get(sw.id, 0)}
        row["planned"] = row["cells"] * len(sw.spec.get("seed_list", []))
        for status in SWEEP_RUN_STATUSES:
            row[status] = counts.get((sw.id, status), 0)
        out.append(row)
    return out


def delete_sweep(store: TrajectoryStore, sweep_id: int, with_runs: bool = True) -> int:
    """Delete a sweep, its cells and rows, and (`with_runs`) the stored runs it made; how many runs it had.
    The sweep goes first: a run it held is never left linked to a deleted row."""
    with store.session() as s:
        run_ids = [r for r in s.scalars(select(SweepRun.run_id).where(SweepRun.sweep_id == sweep_id)) if r is not None]
    with store.session() as s, s.begin():
        s.execute(delete(SweepRun).where(SweepRun.sweep_id == sweep_id))
        s.execute(delete(SweepCell).where(SweepCell.sweep_id == sweep_id))
        s.execute(delete(Sweep).where(Sweep.id == sweep_id))
    for run_id in run_ids if with_runs else ():
        store.delete_run(run_id)
    return len(run_ids)


# ---- one (cell, seed) ------------------------------------------------------------------------------
def claim(store: TrajectoryStore, sweep_id: int, cell_id: int, seed: int, worker: str) -> str | None:
    """Take (cell, seed) for a new attempt: its token, or None if the seed is done already.

    An earlier attempt's row (it died, or failed) is taken over and its partial run deleted."""
    token = uuid.uuid4().hex
    for _ in range(3):  # lost an insert race to another claimant: read again
        with store.session() as s:
            row = s.scalars(select(SweepRun).where(SweepRun.cell_id == cell_id, SweepRun.seed == seed)).first()
        if row is not None and row.status == "done":
            return None
        if row is not None:
            if row.run_id is not None:
                store.delete_run(row.run_id)
            with store.session() as s, s.begin():
                taken = s.execute(
                    update(SweepRun)
                    .where(SweepRun.id == row.id, SweepRun.attempt == row.attempt, SweepRun.status != "done")
                    .values(
                        status="running",
                        attempt=token,
                        attempts=SweepRun.attempts + 1,
                        run_id=None,
                        metrics=None,
                        error=None,
                        worker=worker,
                        updated_at=datetime.now(UTC),
                    )
                ).rowcount
            if taken:
                return token
            continue
        try:
            with store.session() as s, s.begin():
                s.add(SweepRun(sweep_id=sweep_id, cell_id=cell_id, seed=seed, status="running", attempt=token,
                               worker=worker))  # fmt: skip
            return token
        except IntegrityError:
            continue
    raise RuntimeError(f"could not claim seed {seed} of sweep cell {cell_id}: other attempts kept taking it")


class TakenOver(RuntimeError):
    """Another attempt holds this (cell, seed) now; this one must stop and leave nothing behind."""


def attach(session: Session, cell_id: int, seed: int, attempt: str, run_id: int) -> None:
    """Record the run an attempt decodes, in the transaction that inserts the run's row (so no run of a
    sweep exists unlinked, and a later claim can delete it if the attempt dies); TakenOver if not ours."""
    if not session.execute(_own(cell_id, seed, attempt, run_id=run_id)).rowcount:
        raise TakenOver(f"seed {seed} of sweep cell {cell_id} was taken over by another attempt")


def complete(store: TrajectoryStore, cell_id: int, seed: int, attempt: str, run_id: int | None, metrics: dict) -> bool:
    """Mark the seed done with its metrics; False (and the run deleted) if another attempt holds it."""
    if _update_own(store, cell_id, seed, attempt, status="done", run_id=run_id, metrics=metrics):
        return True
    if run_id is not None:
        store.delete_run(run_id)
    return False


def fail(store: TrajectoryStore, cell_id: int, seed: int, attempt: str, error: str) -> bool:
    """The attempt ended with an error (a bad config, out of memory): the seed is `failed`, retried on resume."""
    _, message = readable_error("failed", error)
    return _update_own(store, cell_id, seed, attempt, status="failed", error=message)


def _own(cell_id: int, seed: int, attempt: str, **values):
    """The UPDATE of (cell, seed) that only the attempt holding it, still running, may make."""
    return (
        update(SweepRun)
        .where(
            SweepRun.cell_id == cell_id,
            SweepRun.seed == seed,
            SweepRun.attempt == attempt,
            SweepRun.status == "running",
        )
        .values(updated_at=datetime.now(UTC), **values)
    )


def _update_own(store: TrajectoryStore, cell_id: int, seed: int, attempt: str, **values) -> bool:
    with store.session() as s, s.begin():
        return s.execute(_own(cell_id, seed, attempt, **values)).rowcount > 0


# ---- reading -----------------------------------------------------------------------------------------
def done_seeds(store: TrajectoryStore, sweep_id: int) -> dict[int, set[int]]:
    """cell id -> the seeds done."""
    with store.session() as s:
        rows = s.execute(
            select(SweepRun.cell_id, SweepRun.seed).where(SweepRun.sweep_id == sweep_id, SweepRun.status == "done")
        ).all()
    out: dict[int, set[int]] = {}
    for cell_id, seed in rows:
        out.setdefault(cell_id, set()).add(seed)
    return out


def sweep_rows(
    store: TrajectoryStore,
    sweep_id: int,
    cell_id: int | None = None,
    seed: int | None = None,
    run_id: int | None = None,
) -> list[dict]:
    """The (cell, seed) rows of the sweep (of one cell, one seed, or the one holding a run), with each
    run's final token ids, status and text."""
    query = (
        select(SweepRun, Run.final_token_ids, Run.status, Run.final_text)
        .outerjoin(Run, Run.id == SweepRun.run_id)
        .where(SweepRun.sweep_id == sweep_id)
        .order_by(SweepRun.cell_id, SweepRun.seed)
    )
    for column, value in ((SweepRun.cell_id, cell_id), (SweepRun.seed, seed), (SweepRun.run_id, run_id)):
        if value is not None:
            query = query.where(column == value)
    with store.session() as s:
        return [
            {
                "cell_id": row.cell_id,
                "seed": row.seed,
                "status": row.status,
                "attempts": row.attempts,
                "run_id": row.run_id,
                "metrics": row.metrics,
                "error": row.error,
                "worker": row.worker,
                "final_token_ids": token_ids,
                "run_status": run_status,
                "final_text": text,
            }
            for row, token_ids, run_status, text in s.execute(query).all()
        ]


def _sweep_dict(sweep: Sweep) -> dict:
    return {"id": sweep.id, "name": sweep.name, "spec": sweep.spec, "created_at": sweep.created_at}
