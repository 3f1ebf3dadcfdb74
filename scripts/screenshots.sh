#!/usr/bin/env bash
# Refreshes the serve app's screenshots in docs/img by running the real-browser test
# (tests/test_serve_browser.py) with SEP_SCREENSHOTS=docs/img: serve-separate.png (the Separate
# page with a song chosen) and serve-result.png (the result page: players, spectrograms, downloads).
# Needs the set-up of scripts/setup.sh (.venv, Debian's chromium and chromium-driver).
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p docs/img
started=$(mktemp)
trap 'rm -f "$started"' EXIT
# the demo's trained hourglass when there is one (make demo), so the pictures show a real
# separation; else the test's untrained model
if [ -z "${SEP_SERVE_TEST_CHECKPOINT:-}" ] && [ -e out/demo/train_hourglass/best/meta.json ]; then
    export SEP_SERVE_TEST_CHECKPOINT=out/demo/train_hourglass
fi
SEP_SCREENSHOTS=docs/img .venv/bin/pytest -q tests/test_serve_browser.py "$@"
for name in serve-separate.png serve-result.png; do
    # a skipped test (no chromium) exits 0 but writes nothing
    if [ ! "docs/img/$name" -nt "$started" ]; then
        echo "screenshots: error: docs/img/$name was not refreshed (was the browser test skipped?)" >&2
        exit 1
    fi
done
# 256-colour palettes: the same pictures at about half the bytes in git
.venv/bin/python - <<'PY'
from PIL import Image

for name in ("serve-separate.png", "serve-result.png"):
    path = f"docs/img/{name}"
    image = Image.open(path).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
PY
echo "screenshots: refreshed docs/img/serve-separate.png and docs/img/serve-result.png"
