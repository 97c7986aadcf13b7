"""The store's schema: a store written by an earlier version opens migrated, nothing lost."""

from __future__ import annotations

import json
import sqlite3

from zsad.serve.store import MIGRATIONS, Store


def test_a_version_2_store_opens_with_its_product_as_revision_1(tmp_path):
    db = sqlite3.connect(tmp_path / "zsad.sqlite3")
    for number, migration in enumerate(MIGRATIONS[:2]):
        db.executescript(f"BEGIN; {migration} PRAGMA user_version = {number + 1}; COMMIT;")
    thresholds = {"image": 0.3, "pixel": 0.5, "image_source": "auto: max of reference scores",
                  "pixel_source": "auto: q0.999 of reference pixels", "colour_range": [0.1, 0.9],
                  "reference_scores": [0.2, 0.3], "calibration": {}}
    db.execute("INSERT INTO products (name, class_name, created, thresholds) VALUES ('bracket', 'bracket', 1.0, ?)",
               (json.dumps(thresholds),))
    for i in range(2):
        (tmp_path / "products" / "bracket" / "references").mkdir(parents=True, exist_ok=True)
        (tmp_path / "products" / "bracket" / "references" / f"00{i}.png").write_bytes(b"png")
        db.execute("INSERT INTO reference_images (product_id, filename, path) VALUES (1, ?, ?)",
                   (f"ref{i}.png", f"products/bracket/references/00{i}.png"))
    db.execute("INSERT INTO inspections (product_id, filename, created, width, height, score, decision, "
               "image_threshold, pixel_threshold, regions, overlay) VALUES (1, 'a.png', 2.0, 8, 8, 0.4, 'anomalous', "
               "0.3, 0.5, ?, 'inspections/1.png')", (json.dumps([{"x": 1, "y": 2, "width": 3, "height": 4,
                                                                   "peak": 0.9}]),))
    db.commit()
    db.close()

    store = Store(tmp_path)
    assert store.version == len(MIGRATIONS) == 4
    product = store.product("BRACKET")  # names now ignore case
    assert (product.revision, product.display_name, product.target_fpr) == (1, "bracket", 0.05)
    assert product.thresholds.image == 0.3 and product.thresholds.colour_range == (0.1, 0.9)
    assert [i.filename for i in product.references] == ["ref0.png", "ref1.png"]
    assert [r.reason for r in store.revisions(product)] == ["created"]
    record = store.inspection(1)
    assert record["revision"] == 1 and record["review"] is None and record["image_url"] is None
    assert record["regions"] == [{"box": [1, 2, 3, 4], "peak": 0.9, "peak_at": None, "area": None, "mean": None}]
    assert store._db.execute("PRAGMA foreign_key_check").fetchall() == []
    store.close()


def _inspection(score: float):
    import numpy as np

    from zsad.inference.inspection import Inspection, Thresholds

    return Inspection("part.png", score, "normal", np.zeros((4, 4), np.float32), [], Thresholds(image=0.5))


def test_several_images_commit_together_with_their_idempotent_response(tmp_path, monkeypatch):
    """An inspection request of several images records all of them or none, and an Idempotency-Key's response
    commits in the same transaction; a key left claimed by a process that died is free again on reopening."""
    import pytest

    from zsad.errors import ConfigError
    from zsad.inference.inspection import Thresholds
    from zsad.serve.store import Conflict

    store = Store(tmp_path)
    product = store.add_product("bracket", "bracket", [], Thresholds(image=0.5))
    assert store.claim_request("k1", "fingerprint-1") is None
    with pytest.raises(Conflict, match="still being served"):
        store.claim_request("k1", "fingerprint-1")
    with pytest.raises(ConfigError, match="was used for another request"):
        store.claim_request("k1", "fingerprint-2")
    real, written = store.write_file, []

    def failing(relative: str, data: bytes) -> str:
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(relative)
        return real(relative, data)

    monkeypatch.setattr(store, "write_file", failing)
    records = [("a.png", _inspection(0.1), b"overlay", b"image"), ("b.png", _inspection(0.2), b"overlay", b"")]
    with pytest.raises(OSError):
        store.add_inspections(product, records, request="k1")
    assert store.count_inspections() == 0  # the first image's row went with the second's failure
    monkeypatch.setattr(store, "write_file", real)
    recorded = store.add_inspections(product, records, request="k1")
    assert [r["filename"] for r in recorded] == ["a.png", "b.png"] and store.count_inspections() == 2
    assert store.claim_request("k1", "fingerprint-1") == (200, json.dumps(recorded))

    assert store.claim_request("k2", "fingerprint-3") is None  # claimed, then the process dies
    store.close()
    reopened = Store(tmp_path)
    assert reopened.claim_request("k2", "fingerprint-3") is None
    assert reopened.claim_request("k1", "fingerprint-1")[0] == 200
