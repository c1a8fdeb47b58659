# Sourced by scripts/run and scripts/test: make sure .venv exists and is current.
# Rebuilds when pyproject.toml is newer than the last install, so a pull that
# adds a dependency needs no manual step.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TRADING_VENV:-$root/.venv}"
stamp="$venv/.installed-$1"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "scripts: creating virtual environment in $venv" >&2
    "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    echo "scripts: installing trading-daemon ($1) into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    if [ "$1" = "test" ]; then
        "$venv/bin/python" -m pip install --quiet -e "$root[test]" >&2
    else
        "$venv/bin/python" -m pip install --quiet -e "$root" >&2
    fi
    touch "$stamp"
fi
