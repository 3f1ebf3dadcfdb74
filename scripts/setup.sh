#!/usr/bin/env bash
# One-time (idempotent) set-up: Debian packages for the MIDI renderer and its SoundFonts, a virtualenv in
# .venv, and this package with its dev extras. Called by `make demo` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=()
# libfluidsynth3 is the in-process renderer (sepcore/data/synth.py); the SoundFonts are
# sepcore/data/soundfonts.py's registry (MuseScore's renders held-out test sets only).
ldconfig -p 2>/dev/null | grep -q 'libfluidsynth\.so\.3 ' || PACKAGES+=(libfluidsynth3)
[ -e /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || PACKAGES+=(fluid-soundfont-gm)
[ -e /usr/share/sounds/sf3/FluidR3Mono_GM.sf3 ] || PACKAGES+=(fluidr3mono-gm-soundfont)
[ -e /usr/share/sounds/sf2/TimGM6mb.sf2 ] || PACKAGES+=(timgm6mb-soundfont)
[ -e /usr/share/sounds/sf2/OPL-3_FM_128M.sf2 ] || PACKAGES+=(opl3-soundfont)
[ -e /usr/share/sounds/sf3/MuseScore_General_Full.sf3 ] || PACKAGES+=(musescore-general-soundfont)
# the serve browser test (tests/test_serve_browser.py) drives Debian's headless chromium
# through /usr/bin/chromedriver (Selenium's driver manager would try to download one).
[ -x /usr/bin/chromium ] || PACKAGES+=(chromium)
[ -x /usr/bin/chromedriver ] || PACKAGES+=(chromium-driver)
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
        echo "setup: error: the MIDI renderer and the browser test need the Debian packages: ${PACKAGES[*]}" >&2
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
            && .venv/bin/pip install -q --disable-pip-version-check --no-deps -e ".[dev,demucs]"
    } 2>&1 | grep -v "is ignored: it is neither a file nor a directory"
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        echo "setup: error: pip failed (exit $status)" >&2
        exit 1
    fi
    .venv/bin/python -c "import sepcore, ray_jobs, ray, torch, tqdm, pytest_timeout, demucs.apply" # fail here, not later
    echo "$WANT" > "$STAMP"
fi
