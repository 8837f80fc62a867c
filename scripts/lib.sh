# Shared helpers of the project's scripts (sourced, not run).

# need_pkgs CMD:PKG ...: apt-get install PKG when CMD is missing. Waits for another dpkg user.
# A CMD that starts with / is a file that must exist (a header of a -dev package).
need_pkgs() {
  local missing=()
  for pair in "$@"; do
    local cmd=${pair%%:*} pkg=${pair#*:}
    if [[ $cmd == /* ]]; then
      [ -e "$cmd" ] || missing+=("$pkg")
    else
      command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "== installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  for attempt in 1 2 3 4 5 6; do
    if $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"; then
      return 0
    fi
    echo "apt-get failed (attempt $attempt; another process may hold the dpkg lock), retrying in 20 s"
    sleep 20
  done
  echo "could not install ${missing[*]}" >&2
  return 1
}

need_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
  fi
  for comp in rustfmt clippy; do
    if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
      rustup component add "$comp"
    fi
  done
}
