"""The service's records: SQLite for products and inspections, files for images and overlays.

Layout under the store folder::

    zsad.sqlite3                          products, their references, inspections (schema versioned)
    products/<name>/references/<n>.<ext>  the uploaded reference images, as uploaded
    inspections/<id>.png                  each inspection's overlay (image beside its heatmap)

Every file is written atomically before the row that names it is committed, so a record never points
to a missing file. Schema changes are numbered migrations applied in order at start-up; the database
records the version it is at and a newer one is refused.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsad.core import io
from zsad.errors import ConfigError
from zsad.inference.inspection import Inspection, Thresholds

DATABASE = "zsad.sqlite3"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# MIGRATIONS[i] takes the schema from version i to i + 1.
MIGRATIONS = [
    """
    CREATE TABLE products (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        class_name TEXT NOT NULL,
        created REAL NOT NULL,
        image_threshold REAL,
        pixel_threshold REAL,
        image_source TEXT NOT NULL,
        pixel_source TEXT NOT NULL,
        colour_low REAL,
        colour_high REAL,
        reference_scores TEXT NOT NULL
    );
    CREATE TABLE reference_images (
        id INTEGER PRIMARY KEY,
        product_id INTEGER NOT NULL REFERENCES products(id),
        filename TEXT NOT NULL,
        path TEXT NOT NULL
    );
    CREATE TABLE inspections (
        id INTEGER PRIMARY KEY,
        product_id INTEGER NOT NULL REFERENCES products(id),
        filename TEXT NOT NULL,
        created REAL NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        score REAL NOT NULL,
        decision TEXT NOT NULL,
        image_threshold REAL,
        pixel_threshold REAL,
        regions TEXT NOT NULL,
        overlay TEXT NOT NULL
    );
    CREATE INDEX inspections_by_product ON inspections(product_id, created);
    """,
    # 2: a product's thresholds as one JSON document (zsad.inference.inspection.Thresholds), the type that
    # checkpoints, exports and predict share, instead of seven columns converted by hand.
    """
    ALTER TABLE products ADD COLUMN thresholds TEXT NOT NULL DEFAULT '{}';
    UPDATE products SET thresholds = json_object(
        'image', image_threshold, 'pixel', pixel_threshold, 'image_source', image_source,
        'pixel_source', pixel_source,
        'colour_range', CASE WHEN colour_low IS NULL THEN NULL ELSE json_array(colour_low, colour_high) END,
        'reference_scores', json(reference_scores), 'calibration', json_object());
    ALTER TABLE products DROP COLUMN image_threshold;
    ALTER TABLE products DROP COLUMN pixel_threshold;
    ALTER TABLE products DROP COLUMN image_source;
    ALTER TABLE products DROP COLUMN pixel_source;
    ALTER TABLE products DROP COLUMN colour_low;
    ALTER TABLE products DROP COLUMN colour_high;
    ALTER TABLE products DROP COLUMN reference_scores;
    """,
]


def check_name(name: str) -> str:
    """Product names become folder names: letters, digits, ``.``, ``_`` and ``-`` only, no leading dot."""
    if not NAME.fullmatch(name or ""):
        raise ConfigError(f"product name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                          f"starting with a letter or digit")
    return name


@dataclass
class Product:
    id: int
    name: str
    class_name: str
    created: float
    thresholds: Thresholds
    references: list[str]  # stored reference files, relative to the store

    def public(self) -> dict[str, Any]:
        t = self.thresholds
        return {"name": self.name, "class_name": self.class_name, "created": self.created,
                "references": len(self.references),
                "thresholds": {"image": t.image, "pixel": t.pixel, "image_source": t.image_source,
                               "pixel_source": t.pixel_source, "calibration": t.calibration},
                "reference_scores": t.reference_scores}


class Store:
    """Thread-safe access to one store folder (one connection, serialised by a lock)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / DATABASE, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL never corrupts the database; a power cut may lose the last commits, not a crash.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    @property
    def version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        version = self.version
        if version > len(MIGRATIONS):
            raise ConfigError(f"{self.root / DATABASE}: schema version {version} is newer than this zsad's "
                              f"{len(MIGRATIONS)}; upgrade zsad to open this store")
        with self._lock:
            for number in range(version, len(MIGRATIONS)):
                self._db.executescript(f"BEGIN; {MIGRATIONS[number]} PRAGMA user_version = {number + 1}; COMMIT;")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # --- files ----------------------------------------------------------------------------------------
    def write_file(self, relative: str, data: bytes) -> str:
        io.write_bytes(self.root / relative, data)
        return relative

    def path(self, relative: str) -> Path:
        return self.root / relative

    # --- products -------------------------------------------------------------------------------------
    def add_product(self, name: str, class_name: str, references: list[tuple[str, bytes]],
                    thresholds: Thresholds) -> Product:
        """Write the reference files, then the product's row and its references' rows in one transaction."""
        paths = []
        for number, (filename, data) in enumerate(references):
            suffix = Path(filename).suffix.lower() if re.fullmatch(r"\.[a-z0-9]{1,5}", Path(filename).suffix.lower()) \
                else ".img"
            paths.append(self.write_file(f"products/{name}/references/{number:03d}{suffix}", data))
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO products (name, class_name, created, thresholds) VALUES (?, ?, ?, ?)",
                (name, class_name, time.time(), json.dumps(thresholds.to_dict())))
            db.executemany("INSERT INTO reference_images (product_id, filename, path) VALUES (?, ?, ?)",
                           [(cursor.lastrowid, f, p) for (f, _), p in zip(references, paths)])
        return self.product(name)

    def has_product(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM products WHERE name = ?", (name,)).fetchone() is not None

    def product(self, name: str) -> Product | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM products WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            refs = [r["path"] for r in self._db.execute(
                "SELECT path FROM reference_images WHERE product_id = ? ORDER BY id", (row["id"],))]
        data = dict(row)
        data["thresholds"] = Thresholds.from_dict(json.loads(data["thresholds"]), f"product {name!r}: thresholds")
        return Product(**data, references=refs)

    def products(self) -> list[Product]:
        with self._lock:
            names = [r["name"] for r in self._db.execute("SELECT name FROM products ORDER BY name")]
        return [self.product(n) for n in names]

    # --- inspections ----------------------------------------------------------------------------------
    def add_inspection(self, product: Product, filename: str, inspection: Inspection, overlay: bytes,
                       ) -> dict[str, Any]:
        """Reserve the id, write the overlay file under it, then commit the row: nothing half-recorded."""
        width, height = inspection.size
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO inspections (product_id, filename, created, width, height, score, decision, "
                "image_threshold, pixel_threshold, regions, overlay) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
                (product.id, filename, time.time(), width, height, inspection.score, inspection.decision,
                 inspection.thresholds.image, inspection.thresholds.pixel,
                 json.dumps([r.to_dict() for r in inspection.regions])))
            number = cursor.lastrowid
            overlay_path = self.write_file(f"inspections/{number}.png", overlay)
            db.execute("UPDATE inspections SET overlay = ? WHERE id = ?", (overlay_path, number))
        return self.inspection(number)

    def inspection(self, number: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(_INSPECTION_SELECT + " WHERE i.id = ?", (number,)).fetchone()
        return None if row is None else _inspection(row)

    def inspections(self, product: str | None = None, decision: str | None = None, since: float | None = None,
                    until: float | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first, filtered by product name, decision and creation time (Unix seconds)."""
        clauses, values = [], []
        for clause, value in (("p.name = ?", product), ("i.decision = ?", decision), ("i.created >= ?", since),
                              ("i.created <= ?", until)):
            if value is not None:
                clauses.append(clause)
                values.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(f"{_INSPECTION_SELECT}{where} ORDER BY i.id DESC LIMIT ? OFFSET ?",
                                    (*values, limit, offset)).fetchall()
        return [_inspection(r) for r in rows]

    def count_inspections(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM inspections").fetchone()[0]


_INSPECTION_SELECT = ("SELECT i.*, p.name AS product FROM inspections i JOIN products p ON p.id = i.product_id")


def _inspection(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    return {"id": data["id"], "product": data["product"], "filename": data["filename"], "created": data["created"],
            "width": data["width"], "height": data["height"], "score": data["score"], "decision": data["decision"],
            "thresholds": {"image": data["image_threshold"], "pixel": data["pixel_threshold"]},
            "regions": [_region(r) for r in json.loads(data["regions"])], "overlay": data["overlay"],
            "overlay_url": f"/inspections/{data['id']}/overlay"}


def _region(region: dict[str, Any]) -> dict[str, Any]:
    """A stored region in today's shape; stores written before regions had a box kept x/y/width/height."""
    if "box" in region:
        return region
    return {"box": [region["x"], region["y"], region["width"], region["height"]], "peak": region["peak"],
            "peak_at": None, "area": None, "mean": None}
