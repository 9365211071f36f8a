#!/usr/bin/env bash
# Sourced by scripts/serve and scripts/test, so that a fresh clone needs nothing but Python
# 3.11+: `segsvc_bootstrap server` makes sure .venv holds segsvc and the server's dependencies,
# `segsvc_bootstrap dev` also the test, lint and code-generation tools. It installs only when
# something is missing or pyproject.toml changed since, and says what it is doing on stderr.
#
# Runs started together (scripts/serve and scripts/test on a fresh clone) take turns under a
# lock: one installs, the others wait and then find the work done. Without it the second saw
# the first's half-made .venv ("No module named pip").

segsvc_bootstrap() {
  local want=$1 repo venv python
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  venv="$repo/.venv"
  python=${PYTHON:-python3}
  if _segsvc_installed "$venv" "$repo/pyproject.toml" "$want"; then
    return 0
  fi
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "segsvc needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2; exit 1; }
  # The lock is on this file, so no lock file is left behind. Python takes it on the shell's
  # descriptor 9: a flock belongs to the open file, so it stays held until the shell closes
  # 9 below (flock(1) would do the same, but is not on every system).
  exec 9<"$repo/scripts/bootstrap.sh"
  if ! "$python" -c 'import fcntl; fcntl.flock(9, fcntl.LOCK_EX | fcntl.LOCK_NB)' 2>/dev/null; then
    echo "segsvc: waiting for another scripts/serve or scripts/test to finish setting up .venv..." >&2
    "$python" -c 'import fcntl; fcntl.flock(9, fcntl.LOCK_EX)'
  fi
  # Whoever held the lock may have done it all meanwhile.
  if ! _segsvc_installed "$venv" "$repo/pyproject.toml" "$want"; then
    _segsvc_install "$repo" "$venv" "$python" "$want"
  fi
  exec 9<&-
}

# Whether .venv has what `want` needs, installed since pyproject.toml last changed.
_segsvc_installed() {
  local venv=$1 pyproject=$2 want=$3 stamp stamps
  # A dev install holds the server's too. (.segsvc-installed: a dev install by an older
  # version of this script.)
  stamps=".segsvc-dev .segsvc-installed"
  [ "$want" = server ] && stamps=".segsvc-server $stamps"
  for stamp in $stamps; do
    if [ -f "$venv/$stamp" ] && [ ! "$pyproject" -nt "$venv/$stamp" ]; then
      return 0
    fi
  done
  return 1
}

_segsvc_install() {
  local repo=$1 venv=$2 python=$3 want=$4 started=$SECONDS what target
  # A .venv without a working pip is what a run killed while creating it leaves.
  if ! "$venv/bin/python" -c 'import pip' >/dev/null 2>&1; then
    echo "segsvc: creating .venv with $("$python" --version 2>&1) (first run only)..." >&2
    "$python" -m venv --clear "$venv"
  fi
  case $want in
    server) what="segsvc and the server's dependencies" target="$repo[server]" ;;
    dev) what="segsvc, its dependencies and the test tools (about 300 MB)" target="$repo[dev]" ;;
    *) echo "segsvc_bootstrap: want server or dev, not '$want'" >&2; exit 2 ;;
  esac
  echo "segsvc: installing $what into .venv (first run, or pyproject.toml changed; about a minute)..." >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$target"
  touch "$venv/.segsvc-$want"
  echo "segsvc: .venv ready ($((SECONDS - started)) s)" >&2
}

# The NATS tests start their own nats-server processes (JetStream, loopback ports): install
# Debian's package when it is missing and we may (root with apt-get), else say what to do.
segsvc_nats_server() {
  if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "segsvc: installing nats-server for the NATS tests (apt-get, first run only)..." >&2
    apt-get install -y -qq nats-server >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq nats-server >/dev/null; }
    return 0
  fi
  echo "segsvc: the tests need nats-server 2.9+ (JetStream): install it, e.g. 'sudo apt install nats-server'" >&2
  exit 1
}
