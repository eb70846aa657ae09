#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv.
#   ./bootstrap.sh         runtime dependencies
#   ./bootstrap.sh --dev   runtime + test dependencies
# Safe to run every time: it reinstalls only when a requirements file changed.
set -euo pipefail
cd "$(dirname "$0")"

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
  done
fi
[ -n "$python_bin" ] || { echo "bootstrap: no python3 found; install Python 3.11" >&2; exit 1; }

req_files=(requirements.txt)
[ "${1:-}" = "--dev" ] && req_files+=(requirements-dev.txt)

# Test tools from Debian: the browser test drives Chromium (a test tool's own browser download
# cannot work here); the collector tests run a real Prometheus scraping a real node_exporter; the
# Alertmanager tests push to a real Alertmanager; promtool (in prometheus) checks the shipped rules.
apt_install() {  # apt_install [apt options] packages...: as root only; otherwise say what to install
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing Debian packages for the tests: $*" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
  else
    echo "bootstrap: the tests need these Debian packages: sudo apt-get install $*" >&2
  fi
}
if [ "${1:-}" = "--dev" ]; then
  { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || apt_install chromium chromium-driver
  { command -v prometheus >/dev/null && command -v prometheus-node-exporter >/dev/null \
      && command -v prometheus-alertmanager >/dev/null; } \
    || apt_install --no-install-recommends prometheus prometheus-node-exporter prometheus-alertmanager
  command -v vmagent >/dev/null || apt_install --no-install-recommends victoria-metrics  # vmagent: shard routing
fi

[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
stamp=".venv/.requirements-$(IFS=_; echo "${req_files[*]}" | tr -c 'a-z_\n' '_').sha256"
wanted="$(cat "${req_files[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "bootstrap: installing ${req_files[*]} into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned, so no dependency resolves it to a CUDA build.
  .venv/bin/python -m pip install -q "$(grep -E '^torch==' requirements.txt)"
  args=()
  for f in "${req_files[@]}"; do args+=(-r "$f"); done
  .venv/bin/python -m pip install -q "${args[@]}"
  echo "$wanted" > "$stamp"
fi
