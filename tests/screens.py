"""Screenshots for the docs. The browser tests call `doc_shot(page, name)` on the pages the docs show.

By default they go to `test-artifacts/` (git-ignored) like every other screenshot. With
PORTCULLIS_DOC_SCREENSHOTS=1 they are written to `docs/screenshots/` instead, as small PNGs (a
64-colour palette: the UI is flat colours and text, so this keeps them readable at ~10x smaller).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "screenshots"
ARTIFACTS = ROOT / "test-artifacts"
PHONE = {"width": 390, "height": 844}


def doc_shot(page, name: str, *, full_page: bool = True) -> Path:
    from PIL import Image

    to_docs = os.environ.get("PORTCULLIS_DOC_SCREENSHOTS") == "1"
    folder = DOCS if to_docs else ARTIFACTS
    folder.mkdir(parents=True, exist_ok=True)
    raw = page.screenshot(full_page=full_page)
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    if image.height > 2400:  # a very long page: keep its top, which is what the docs point at
        image = image.crop((0, 0, image.width, 2400))
    path = folder / f"{name}.png"
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    assert path.stat().st_size > 3_000  # a rendered page, not a blank one
    return path
