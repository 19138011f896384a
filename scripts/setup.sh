#!/usr/bin/env bash
# Install everything the harness needs into ./.venv; quick when nothing changed.
#   - native libraries FFCV compiles against (apt, when root; otherwise a list to install)
#   - openssh-server and rsync for the cluster launch tests (apt, when root)
#   - a Python 3.10-3.12 virtual environment with the pinned packages of constraints.txt
set -euo pipefail
cd "$(dirname "$0")/.."

NATIVE_APT="libopencv-dev libturbojpeg0-dev pkg-config"

native_ok() {
    command -v pkg-config >/dev/null 2>&1 && pkg-config --exists opencv4 && pkg-config --exists libturbojpeg
}

if ! native_ok; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing native libraries for FFCV: $NATIVE_APT"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $NATIVE_APT >/dev/null
    else
        cat >&2 <<MSG
setup: FFCV needs native libraries that are not installed (pkg-config must find opencv4 and
libturbojpeg). Ask an administrator to install them, then run this again:
  Debian/Ubuntu:  apt-get install --no-install-recommends $NATIVE_APT
  Fedora/RHEL:    dnf install opencv-devel turbojpeg-devel pkgconf-pkg-config
  conda:          conda install -c conda-forge opencv libjpeg-turbo pkg-config
MSG
        exit 1
    fi
fi

# The cluster launch tests (tests/cluster/test_cluster.py) run their own sshd and ray up's rsync;
# without these (not root) they skip, saying so.
TEST_APT="openssh-server rsync"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
        ! { [ -x /usr/sbin/sshd ] && command -v rsync >/dev/null 2>&1; }; then
    echo "setup: installing packages for the cluster tests: $TEST_APT"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $TEST_APT >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)' || {
        echo "setup: need Python 3.10-3.12 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
        exit 1
    }
    "$PY" -m venv .venv
fi

# Reinstall only when the declared dependencies or their pins change.
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing Python packages (first time: a few minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
