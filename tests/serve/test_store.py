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
    assert store.version == len(MIGRATIONS) == 3
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
