#!/usr/bin/env bash
# One-time (idempotent) set-up: Debian packages for the MIDI renderer, a virtualenv in
# .venv, and this package with its dev extras. Called by `make demo` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=()
command -v fluidsynth >/dev/null 2>&1 || PACKAGES+=(fluidsynth)
[ -e /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || PACKAGES+=(fluid-soundfont-gm)
if [ ${#PACKAGES[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "setup: installing Debian packages: ${PACKAGES[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        echo "setup: installing Debian packages with sudo: ${PACKAGES[*]}"
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    else
        echo "setup: error: the MIDI renderer needs the Debian packages: ${PACKAGES[*]}" >&2
        echo "setup: install them as root:  apt-get install ${PACKAGES[*]}" >&2
        exit 1
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi

# Reinstall only when the dependency declarations or the lock change. The lock
# (requirements.lock, refreshed by `make lock`) holds the exact versions CI tested, so a
# fresh machine gets the same set; the package itself goes on top without resolving again.
STAMP=.venv/.sep-installed
WANT=$(cat pyproject.toml requirements.lock | sha1sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "setup: installing Python packages from requirements.lock (a few minutes the first time)"
    set +e
    {
        .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock \
            && .venv/bin/pip install -q --disable-pip-version-check --no-deps -e ".[dev]"
    } 2>&1 | grep -v "is ignored: it is neither a file nor a directory"
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        echo "setup: error: pip failed (exit $status)" >&2
        exit 1
    fi
    .venv/bin/python -c "import sepcore, ray_jobs, ray, torch, tqdm, pytest_timeout" # fail here, not later
    echo "$WANT" > "$STAMP"
fi
