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

# unstable_fetch TMP DIR KIND ARGS...: runs `apt-get ARGS` in TMP/DIR against Debian unstable
# (KIND: deb or deb-src), on the mirror the system's sources name, retrying; the system's apt
# state (its sources, lists, cache, lock) is untouched: apt runs on a private sources list,
# lists and cache under TMP.
unstable_fetch() {
  local tmp=$1 dir=$2 kind=$3
  shift 3
  local mirror
  mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/$dir"
  echo "$kind [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror unstable main" >"$tmp/sources.list"
  local opts=(-qq -o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o Debug::NoLocking=1
    -o APT::Sandbox::User=root)
  for attempt in 1 2 3 4 5; do
    if apt-get "${opts[@]}" update && (cd "$tmp/$dir" && apt-get "${opts[@]}" "$@"); then
      return 0
    fi
    echo "apt-get $* from Debian unstable failed (attempt $attempt), retrying in 10 s"
    sleep 10
  done
  echo "could not apt-get $* from Debian unstable ($mirror)" >&2
  return 1
}

# need_unstable_deb PKG PREFIX: PKG's .deb from Debian's unstable suite, unpacked into PREFIX
# with dpkg-deb -x. Used for containerd 2.x and docker.io, which Debian 12 does not package.
need_unstable_deb() {
  local pkg=$1 prefix=$2
  [ -e "$prefix/.complete" ] && return 0
  echo "== fetching $pkg from Debian unstable into $prefix"
  local tmp
  tmp=$(mktemp -d)
  if ! unstable_fetch "$tmp" deb deb download "$pkg"; then
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$prefix"
  mkdir -p "$prefix"
  dpkg-deb -x "$tmp"/deb/*.deb "$prefix"
  basename "$tmp"/deb/*.deb >"$prefix/.complete"
  rm -rf "$tmp"
}

# need_erofs_utils PREFIX: erofs-utils (mkfs.erofs) 1.9 or later in PREFIX, which Debian 12 does
# not package (it has 1.5: no incremental build; 1.8 misreads a PAX mtime's fraction), built
# from Debian unstable's source package (upstream's tarball, no Debian patches needed), with
# only what the convertor uses (no compressors, no FUSE). Needs autoconf, automake, libtool.
need_erofs_utils() {
  local prefix=$1
  [ -e "$prefix/.complete" ] && return 0
  need_pkgs autoconf:autoconf automake:automake libtoolize:libtool make:make gcc:gcc \
    pkg-config:pkg-config
  echo "== building erofs-utils from Debian unstable's source into $prefix"
  local tmp
  tmp=$(mktemp -d)
  if ! unstable_fetch "$tmp" src deb-src source --download-only erofs-utils; then
    rm -rf "$tmp"
    return 1
  fi
  # One chain of &&: `set -e` does not hold in a subshell on the left of ||.
  (
    cd "$tmp/src" &&
      tar xf erofs-utils_*.orig.tar.* &&
      cd erofs-utils-*/ &&
      ./autogen.sh >build.log 2>&1 &&
      ./configure --prefix="$prefix" --disable-lz4 --disable-lzma --without-zstd \
        --without-libzstd --without-uuid --without-selinux --disable-fuse --without-libdeflate \
        --without-zlib --without-xxhash --disable-multithreading --without-libcurl \
        --without-openssl --without-libxml2 >>build.log 2>&1 &&
      make -j"$(nproc)" >>build.log 2>&1 &&
      rm -rf "$prefix" &&
      make install >>build.log 2>&1
  ) || {
    echo "building erofs-utils failed:" >&2
    tail -20 "$tmp"/src/erofs-utils-*/build.log >&2 || true
    rm -rf "$tmp"
    return 1
  }
  "$prefix/bin/mkfs.erofs" --version | head -1 >"$prefix/.complete"
  rm -rf "$tmp"
}

# Where the tests find containerd 2.x (OBD_CONTAINERD2 in the harness).
OBD_CONTAINERD2_DEFAULT=/opt/overlaybd-test/containerd-2
