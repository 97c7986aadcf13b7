"""The service's records: SQLite for products, revisions, images and inspections; files for the images.

A product's state is a numbered **revision**: its thresholds and the set of images it rests on (normal
references — the few-shot memory and the calibration set — and labelled defects). Reviews that teach the
product, added or removed references and a new target false-alarm rate each write a new revision;
restoring an old one writes a copy of it. Images are never changed or deleted, so every revision stays
complete. Every inspection records the revision it was scored under.

Layout under the store folder::

    zsad.sqlite3                           products, revisions, images, inspections (schema versioned)
    products/<product id>/<image id>.<ext> reference and defect images, as uploaded (older stores:
                                           products/<name>/references/<n>.<ext>)
    inspections/<id>.png                   each inspection's overlay (image beside its heatmap)
    inspections/<id>-image.<ext>           the inspected image as uploaded (a review can teach it)

Every file is written atomically before the row that names it is committed, and a revision with its new
images is one transaction, so a record never points to a missing file and a kill leaves the old revision
or the new one, never a mix. Schema changes are numbered migrations applied in order at start-up; the
database records the version it is at and a newer one is refused.
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
    # 3: revisions (thresholds + the images they rest on), images of two kinds, reviews, the inspected image
    # kept for learning, display names, a target false-alarm rate, names unique ignoring case among live
    # products, deletion that keeps the history.
    """
    CREATE TABLE revisions (
        id INTEGER PRIMARY KEY,
        product_id INTEGER NOT NULL REFERENCES products(id),
        number INTEGER NOT NULL,
        created REAL NOT NULL,
        thresholds TEXT NOT NULL,
        images TEXT NOT NULL,
        reason TEXT NOT NULL,
        UNIQUE (product_id, number)
    );
    INSERT INTO revisions (product_id, number, created, thresholds, images, reason)
        SELECT p.id, 1, p.created, p.thresholds,
               (SELECT json_group_array(r.id) FROM reference_images r WHERE r.product_id = p.id), 'created'
        FROM products p;
    CREATE TABLE products_v3 (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        display_name TEXT NOT NULL,
        class_name TEXT NOT NULL,
        created REAL NOT NULL,
        target_fpr REAL NOT NULL,
        revision INTEGER NOT NULL,
        deleted REAL
    );
    INSERT INTO products_v3 SELECT id, name, name, class_name, created, 0.05, 1, NULL FROM products;
    DROP TABLE products;
    ALTER TABLE products_v3 RENAME TO products;
    CREATE UNIQUE INDEX products_live_name ON products(lower(name)) WHERE deleted IS NULL;
    ALTER TABLE reference_images ADD COLUMN kind TEXT NOT NULL DEFAULT 'normal';
    ALTER TABLE reference_images ADD COLUMN added REAL NOT NULL DEFAULT 0;
    ALTER TABLE reference_images ADD COLUMN inspection_id INTEGER;
    ALTER TABLE inspections ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE inspections ADD COLUMN image TEXT NOT NULL DEFAULT '';
    ALTER TABLE inspections ADD COLUMN review TEXT;
    CREATE INDEX inspections_by_time ON inspections(created);
    """,
    # 4: idempotent writes: the first response to each Idempotency-Key, so that a retry gets it again
    # (status NULL while the first request is still being served).
    """
    CREATE TABLE requests (
        key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        created REAL NOT NULL,
        status INTEGER,
        body TEXT
    );
    """,
]
NORMAL, DEFECT = "normal", "defect"
MAX_TARGET_FPR = 0.5


class NotFound(ConfigError):
    """An unknown product, revision, image or inspection (HTTP 404)."""


class Conflict(ConfigError):
    """A live product of that name exists already, ignoring case (HTTP 409)."""


def check_name(name: str) -> str:
    """Product names become part of URLs: letters, digits, ``.``, ``_`` and ``-`` only, no leading dot."""
    if not NAME.fullmatch(name or ""):
        raise ConfigError(f"product name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                          f"starting with a letter or digit")
    return name


def clean_filename(filename: str) -> str:
    """An uploaded file's name as shown in the history: its last path part, control characters and
    separators dropped, at most 120 characters; ``image`` when nothing is left."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(c for c in name if c.isprintable()).strip()
    return name[:120] or "image"


def _suffix(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".img"


@dataclass(frozen=True)
class NewImage:
    """An image to store with a revision: its upload name and bytes, its kind, and the inspection it
    came from when a review taught it."""

    filename: str
    data: bytes
    kind: str = NORMAL
    inspection_id: int | None = None


@dataclass(frozen=True)
class StoredImage:
    id: int
    kind: str  # "normal" (reference) or "defect" (labelled by a review)
    filename: str
    path: str  # relative to the store
    added: float
    inspection_id: int | None

    def public(self, product: str) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "filename": self.filename, "added": self.added,
                "inspection": self.inspection_id, "url": f"/products/{product}/references/{self.id}/image"}


@dataclass
class Product:
    id: int
    name: str
    display_name: str
    class_name: str
    created: float
    target_fpr: float
    revision: int  # the current revision's number
    deleted: float | None
    thresholds: Thresholds  # of the current revision
    images: list[StoredImage]  # of the current revision

    @property
    def references(self) -> list[StoredImage]:
        return [i for i in self.images if i.kind == NORMAL]

    @property
    def defects(self) -> list[StoredImage]:
        return [i for i in self.images if i.kind == DEFECT]

    def public(self) -> dict[str, Any]:
        t = self.thresholds
        return {"name": self.name, "display_name": self.display_name, "class_name": self.class_name,
                "created": self.created, "revision": self.revision, "target_fpr": self.target_fpr,
                "references": len(self.references), "defects": len(self.defects),
                "thresholds": {"image": t.image, "pixel": t.pixel, "image_source": t.image_source,
                               "pixel_source": t.pixel_source},
                "calibration": t.calibration, "reference_scores": t.reference_scores}


@dataclass(frozen=True)
class Revision:
    number: int
    created: float
    reason: str
    thresholds: Thresholds
    image_ids: tuple[int, ...]

    def public(self) -> dict[str, Any]:
        return {"number": self.number, "created": self.created, "reason": self.reason,
                "images": list(self.image_ids), "thresholds": {"image": self.thresholds.image,
                                                               "pixel": self.thresholds.pixel},
                "calibration": self.thresholds.calibration}


@dataclass(frozen=True)
class InspectionFilter:
    """What ``GET /inspections`` selects: each field None for "any"."""

    product: str | None = None  # name, ignoring case (deleted products' history included)
    decision: str | None = None
    reviewed: bool | None = None
    filename: str | None = None  # substring, ignoring case
    since: float | None = None  # Unix seconds
    until: float | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses, values = [], []
        for clause, value in (("lower(p.name) = lower(?)", self.product), ("i.decision = ?", self.decision),
                              ("instr(lower(i.filename), lower(?)) > 0", self.filename),
                              ("i.created >= ?", self.since), ("i.created <= ?", self.until)):
            if value is not None:
                clauses.append(clause)
                values.append(value)
        if self.reviewed is not None:
            clauses.append("i.review IS NOT NULL" if self.reviewed else "i.review IS NULL")
        return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), values


class Store:
    """Thread-safe access to one store folder (one connection, serialised by a lock)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / DATABASE, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL never corrupts the database; a power cut may lose the last commits, not a crash.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.migrate()
        self._db.execute("PRAGMA foreign_keys=ON")
        # A request that was being served when the process died committed nothing (its records and its
        # response commit together): its key is free for the retry.
        self._db.execute("DELETE FROM requests WHERE status IS NULL")

    @property
    def version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Apply the pending migrations, each in one transaction (foreign keys are checked after each, as
        a table rebuild needs them off while it runs)."""
        version = self.version
        if version > len(MIGRATIONS):
            raise ConfigError(f"{self.root / DATABASE}: schema version {version} is newer than this zsad's "
                              f"{len(MIGRATIONS)}; upgrade zsad to open this store")
        with self._lock:
            self._db.execute("PRAGMA foreign_keys=OFF")
            for number in range(version, len(MIGRATIONS)):
                self._db.executescript(f"BEGIN; {MIGRATIONS[number]} PRAGMA user_version = {number + 1}; COMMIT;")
                if self._db.execute("PRAGMA foreign_key_check").fetchall():
                    raise ConfigError(f"{self.root / DATABASE}: migration {number + 1} left dangling references")

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
    def add_product(self, name: str, class_name: str, images: list[NewImage], thresholds: Thresholds,
                    display_name: str | None = None, target_fpr: float = 0.05) -> Product:
        """The product, its images and revision 1, in one transaction; a live product of the same name
        (ignoring case) is a :class:`Conflict`."""
        with self._transaction() as db:
            if self._live_id(name) is not None:
                raise Conflict(f"a product named {self._live_name(name)!r} exists already (names ignore case)")
            cursor = db.execute(
                "INSERT INTO products (name, display_name, class_name, created, target_fpr, revision) "
                "VALUES (?, ?, ?, ?, ?, 0)", (name, display_name or name, class_name, time.time(), target_fpr))
            self._commit_revision(cursor.lastrowid, images, [], thresholds, "created")
        return self.product(name)

    def commit_revision(self, product: Product, thresholds: Thresholds, reason: str, add: list[NewImage] = (),
                        keep: list[int] | None = None, target_fpr: float | None = None,
                        review: tuple[int, dict[str, Any]] | None = None) -> Product:
        """A new revision of ``product``: the images ``keep`` (default: the current ones) plus ``add``, under
        ``thresholds``; with ``target_fpr``, the product's new rate; with ``review``, an inspection's review
        (its ``revision`` set to the new number). Files, rows and the revision pointer in one transaction."""
        with self._transaction() as db:
            number = self._commit_revision(product.id, list(add), [i.id for i in product.images] if keep is None
                                           else keep, thresholds, reason)
            if target_fpr is not None:
                db.execute("UPDATE products SET target_fpr = ? WHERE id = ?", (target_fpr, product.id))
            if review is not None:
                inspection, verdict = review
                db.execute("UPDATE inspections SET review = ? WHERE id = ?",
                           (json.dumps({**verdict, "revision": number}), inspection))
        return self._product_by_id(product.id)

    def _commit_revision(self, product_id: int, add: list[NewImage], keep: list[int], thresholds: Thresholds,
                         reason: str) -> int:
        db = self._db
        ids = list(keep)
        for image in add:
            cursor = db.execute("INSERT INTO reference_images (product_id, filename, path, kind, added, "
                                "inspection_id) VALUES (?, ?, '', ?, ?, ?)",
                                (product_id, clean_filename(image.filename), image.kind, time.time(),
                                 image.inspection_id))
            path = self.write_file(f"products/{product_id}/{cursor.lastrowid}{_suffix(image.filename)}", image.data)
            db.execute("UPDATE reference_images SET path = ? WHERE id = ?", (path, cursor.lastrowid))
            ids.append(cursor.lastrowid)
        number = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM revisions WHERE product_id = ?",
                            (product_id,)).fetchone()[0]
        db.execute("INSERT INTO revisions (product_id, number, created, thresholds, images, reason) "
                   "VALUES (?, ?, ?, ?, ?, ?)", (product_id, number, time.time(), json.dumps(thresholds.to_dict()),
                                                 json.dumps(ids), reason))
        db.execute("UPDATE products SET revision = ? WHERE id = ?", (number, product_id))
        return number

    def restore(self, product: Product, number: int) -> Product:
        """A new revision that is a copy of revision ``number`` (history stays linear)."""
        old = self.revision(product, number)
        return self.commit_revision(product, old.thresholds, f"restored revision {number}", keep=list(old.image_ids))

    def update_product(self, product: Product, display_name: str | None = None) -> Product:
        with self._transaction() as db:
            if display_name is not None:
                db.execute("UPDATE products SET display_name = ? WHERE id = ?", (display_name, product.id))
        return self._product_by_id(product.id)

    def delete_product(self, product: Product) -> None:
        """Mark the product deleted: it leaves the live names (the name can be used again); its history,
        revisions and images stay."""
        with self._transaction() as db:
            db.execute("UPDATE products SET deleted = ? WHERE id = ?", (time.time(), product.id))

    def _live_id(self, name: str) -> int | None:
        row = self._db.execute("SELECT id FROM products WHERE lower(name) = lower(?) AND deleted IS NULL",
                               (name,)).fetchone()
        return None if row is None else row["id"]

    def _live_name(self, name: str) -> str:
        return self._db.execute("SELECT name FROM products WHERE lower(name) = lower(?) AND deleted IS NULL",
                                (name,)).fetchone()["name"]

    def has_product(self, name: str) -> bool:
        with self._lock:
            return self._live_id(name) is not None

    def product(self, name: str) -> Product | None:
        """The live product of that name, ignoring case."""
        with self._lock:
            number = self._live_id(name)
            return None if number is None else self._product_by_id(number)

    def product_at(self, product_id: int, revision: int) -> Product:
        """A product (live or not) as it was at one of its revisions."""
        return self._product_by_id(product_id, revision)

    def _product_by_id(self, number: int, revision: int | None = None) -> Product:
        with self._lock:
            row = dict(self._db.execute("SELECT * FROM products WHERE id = ?", (number,)).fetchone())
            if revision is not None:
                row["revision"] = revision
            revision = self._db.execute("SELECT * FROM revisions WHERE product_id = ? AND number = ?",
                                        (number, row["revision"])).fetchone()
            ids = json.loads(revision["images"])
            images = {r["id"]: _image(r) for r in self._db.execute(
                f"SELECT * FROM reference_images WHERE id IN ({','.join('?' * len(ids))})", ids)}
        thresholds = Thresholds.from_dict(json.loads(revision["thresholds"]), f"product {row['name']!r}: thresholds")
        return Product(**row, thresholds=thresholds, images=[images[i] for i in ids])

    def products(self) -> list[Product]:
        with self._lock:
            ids = [r["id"] for r in self._db.execute("SELECT id FROM products WHERE deleted IS NULL ORDER BY name")]
            return [self._product_by_id(i) for i in ids]

    def revision(self, product: Product, number: int) -> Revision:
        with self._lock:
            row = self._db.execute("SELECT * FROM revisions WHERE product_id = ? AND number = ?",
                                   (product.id, number)).fetchone()
        if row is None:
            raise NotFound(f"product {product.name!r} has no revision {number} (it is at {product.revision})")
        return _revision(row)

    def revisions(self, product: Product) -> list[Revision]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM revisions WHERE product_id = ? ORDER BY number",
                                    (product.id,)).fetchall()
        return [_revision(r) for r in rows]

    def image(self, product: Product, number: int) -> StoredImage:
        """One of the product's stored images (of any revision)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM reference_images WHERE id = ? AND product_id = ?",
                                   (number, product.id)).fetchone()
        if row is None:
            raise NotFound(f"product {product.name!r} has no image {number}")
        return _image(row)

    def known_name(self, name: str) -> bool:
        """Whether any product, live or deleted, had this name (its history can be asked for)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM products WHERE lower(name) = lower(?)",
                                    (name,)).fetchone() is not None

    # --- inspections ----------------------------------------------------------------------------------
    def add_inspections(self, product: Product, records: list[tuple[str, Inspection, bytes, bytes]],
                        request: str | None = None) -> list[dict[str, Any]]:
        """Each ``(filename, inspection, overlay, uploaded image)`` in one transaction: ids reserved, files
        written under them, rows committed together — all or none — with, for an idempotent ``request``, its
        response (the records), so a retry after any failure finds all of it or nothing."""
        with self._transaction() as db:
            numbers = []
            for filename, inspection, overlay, image in records:
                width, height = inspection.size
                cursor = db.execute(
                    "INSERT INTO inspections (product_id, filename, created, width, height, score, decision, "
                    "image_threshold, pixel_threshold, regions, overlay, revision) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', ?)",
                    (product.id, clean_filename(filename), time.time(), width, height, inspection.score,
                     inspection.decision, inspection.thresholds.image, inspection.thresholds.pixel,
                     json.dumps([r.to_dict() for r in inspection.regions]), product.revision))
                number = cursor.lastrowid
                overlay_path = self.write_file(f"inspections/{number}.png", overlay)
                image_path = self.write_file(f"inspections/{number}-image{_suffix(filename)}", image) if image else ""
                db.execute("UPDATE inspections SET overlay = ?, image = ? WHERE id = ?",
                           (overlay_path, image_path, number))
                numbers.append(number)
            recorded = [self.inspection(number) for number in numbers]
            if request is not None:
                db.execute("UPDATE requests SET status = 200, body = ? WHERE key = ?", (json.dumps(recorded), request))
        return recorded

    # --- idempotent requests --------------------------------------------------------------------------
    def claim_request(self, key: str, fingerprint: str) -> tuple[int, str] | None:
        """The stored ``(status, body)`` of an earlier request with ``key``, or None after claiming the key
        for this one. A key used for another request is refused; one still being served is busy."""
        with self._transaction() as db:
            row = db.execute("SELECT fingerprint, status, body FROM requests WHERE key = ?", (key,)).fetchone()
            if row is None:
                db.execute("INSERT INTO requests (key, fingerprint, created) VALUES (?, ?, ?)",
                           (key, fingerprint, time.time()))
                return None
        if row["fingerprint"] != fingerprint:
            raise ConfigError(f"Idempotency-Key {key!r} was used for another request: use a new key per request")
        if row["status"] is None:
            raise Conflict(f"a request with Idempotency-Key {key!r} is still being served: retry in a moment")
        return row["status"], row["body"]

    def finish_request(self, key: str, status: int, body: str) -> None:
        """Keep the response of a claimed request (unless it was kept with its records already)."""
        with self._transaction() as db:
            db.execute("UPDATE requests SET status = ?, body = ? WHERE key = ? AND status IS NULL", (status, body, key))

    def release_request(self, key: str) -> None:
        """Free the key of a request that failed, so that its retry runs again."""
        with self._transaction() as db:
            db.execute("DELETE FROM requests WHERE key = ? AND status IS NULL", (key,))

    def inspection_image(self, number: int) -> str:
        """The stored upload of an inspection, relative to the store ("" when it was not kept)."""
        with self._lock:
            return self._db.execute("SELECT image FROM inspections WHERE id = ?", (number,)).fetchone()["image"]

    def set_review(self, number: int, review: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute("UPDATE inspections SET review = ? WHERE id = ?", (json.dumps(review), number))

    def inspection(self, number: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(_INSPECTION_SELECT + " WHERE i.id = ?", (number,)).fetchone()
        return None if row is None else _inspection(row)

    def inspections(self, selection: InspectionFilter = InspectionFilter(), limit: int = 100,
                    offset: int = 0) -> list[dict[str, Any]]:
        """Newest first, as selected."""
        where, values = selection.where()
        with self._lock:
            rows = self._db.execute(f"{_INSPECTION_SELECT}{where} ORDER BY i.id DESC LIMIT ? OFFSET ?",
                                    (*values, limit, offset)).fetchall()
        return [_inspection(r) for r in rows]

    def count_inspections(self, selection: InspectionFilter = InspectionFilter()) -> int:
        where, values = selection.where()
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM inspections i JOIN products p ON p.id = i.product_id"
                                    f"{where}", values).fetchone()[0]


_INSPECTION_SELECT = ("SELECT i.*, p.name AS product, p.deleted AS product_deleted FROM inspections i "
                      "JOIN products p ON p.id = i.product_id")


def _image(row: sqlite3.Row) -> StoredImage:
    return StoredImage(row["id"], row["kind"], row["filename"], row["path"], row["added"], row["inspection_id"])


def _revision(row: sqlite3.Row) -> Revision:
    return Revision(row["number"], row["created"], row["reason"],
                    Thresholds.from_dict(json.loads(row["thresholds"])), tuple(json.loads(row["images"])))


def _inspection(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    return {"id": data["id"], "product": data["product"], "filename": data["filename"], "created": data["created"],
            "width": data["width"], "height": data["height"], "score": data["score"], "decision": data["decision"],
            "revision": data["revision"],
            "thresholds": {"image": data["image_threshold"], "pixel": data["pixel_threshold"]},
            "regions": [_region(r) for r in json.loads(data["regions"])], "overlay": data["overlay"],
            "overlay_url": f"/inspections/{data['id']}/overlay",
            "image_url": f"/inspections/{data['id']}/image" if data["image"] else None,
            "review": None if data["review"] is None else json.loads(data["review"]),
            "product_deleted": data["product_deleted"] is not None}


def _region(region: dict[str, Any]) -> dict[str, Any]:
    """A stored region in today's shape; stores written before regions had a box kept x/y/width/height."""
    if "box" in region:
        return region
    return {"box": [region["x"], region["y"], region["width"], region["height"]], "peak": region["peak"],
            "peak_at": None, "area": None, "mean": None}
