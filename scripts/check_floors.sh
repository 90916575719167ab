#!/usr/bin/env bash
# Do the lowest versions pyproject.toml allows still work? Installs every "pkg>=X" dependency (and test
# extra) as "pkg==X" in a separate virtual environment and runs the unit tests there.
# Optional CI job (slow: a fresh torch and transformers); .ci/run does not call it.
#   bash scripts/check_floors.sh [pytest args…]     FLOORS_VENV=dir (default: $TMPDIR/editaudit-floors)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FLOORS_VENV:-${TMPDIR:-/tmp}/editaudit-floors}
start=$(date +%s)

rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip

# "name>=floor" -> "name==floor"; a dependency without a floor is installed as written
mapfile -t pins < <("$VENV/bin/python" - <<'PYEOF'
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
with open("pyproject.toml", "rb") as fh:
    project = tomllib.load(fh)["project"]
for dep in project["dependencies"] + project.get("optional-dependencies", {}).get("test", []):
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*>=\s*([^,;\s]+)\s*$", dep.split(";")[0])
    print(f"{m.group(1)}=={m.group(2)}" if m else dep)
PYEOF
)
echo "floors: ${pins[*]}"
"$VENV/bin/python" -m pip install -q "${pins[@]}"
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -m pip freeze | grep -iE "^($(printf '%s|' "${pins[@]%%==*}" | sed 's/|$//'))==" || true

status=0
"$VENV/bin/python" -m pytest -q -m "not integration" -p no:cacheprovider "$@" || status=$?
echo "check_floors: pytest exit $status, $(( $(date +%s) - start )) s in all"
exit $status
