# Sourced by scripts/test and scripts/demo: make .venv if there is none, install the project
# into it (pip install -e '.[dev]') when pyproject.toml is newer than the last install, and
# put the venv's python, ray and ray-migrate first on PATH.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.ray_migrate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
export VIRTUAL_ENV="$PWD/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export RAY_USAGE_STATS_ENABLED=0
