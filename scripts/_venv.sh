# Sourced by scripts/serve and scripts/test: make .venv and install the project into it.
# $1 is the pip extra to install ("" or "test"). Reinstalls when pyproject.toml changes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
extra="${1:-}"
stamp=".venv/.installed${extra:+-$extra}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".${extra:+[$extra]}"
  touch "$stamp"
fi
# The web UI's browser tests drive Debian's chromium through Playwright (its own browser
# download cannot reach its host): install it when it is missing, as root.
if [ "$extra" = "test" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "note: /usr/bin/chromium is missing and this is not root: the browser tests will skip (and fail with CI=true); run: sudo apt-get install -y chromium" >&2
  fi
fi
