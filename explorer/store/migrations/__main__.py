"""Upgrade a trajectory database to this program's schema: python -m explorer.store.migrations [--db URL]"""

from __future__ import annotations

import argparse
import sys

from explorer.store.database import StoreError, TrajectoryStore, resolve_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m explorer.store.migrations", description=__doc__)
    parser.add_argument("--db", help="SQLAlchemy URL (default: $EXPLORER_DB_URL or the data directory's SQLite file)")
    parser.add_argument("--data-dir", help="data directory of the default SQLite database")
    args = parser.parse_args(argv)
    url = resolve_url(args.db, args.data_dir)
    try:
        store = TrajectoryStore(url)  # a writable open applies every pending migration
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: schema at revision {store.schema_revision()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
