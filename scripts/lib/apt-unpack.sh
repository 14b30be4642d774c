# shellcheck shell=bash
# Sourced (not run) by scripts/install-containerd-matrix.sh and scripts/install-docker.sh: their
# preamble, and the unpacking of a Debian package version from a low-pinned suite into a directory
# of its own. The sourcing script sets SCRIPT_NAME (its log prefix) first, and defines
# upstream_version (Debian version -> upstream version) before it calls pick_version.

readonly APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=600)

export DEBIAN_FRONTEND=noninteractive

log() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Fails unless run as root on a machine with apt; WHAT says what the script writes.
require_root_and_apt() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it $1)"
    command -v apt-get >/dev/null || die "apt-get not found: this script is for Debian bookworm"
}

# Prints the Debian version of PACKAGE to take from SUITE among CANDIDATES (apt's, newest first,
# one a line): the one whose upstream version is WANT, else the newest, with a warning. Called in a
# command substitution, where `die` ends only that: follow it with `|| exit 1`.
pick_version() {
    local package="$1" suite="$2" want="$3" candidates="$4" v
    while read -r v; do
        [[ -n $v ]] || continue
        if [[ $(upstream_version "$v") == "$want" ]]; then
            printf '%s\n' "$v"
            return 0
        fi
    done <<<"$candidates"
    v="$(head -n1 <<<"$candidates")"
    [[ -n $v ]] || die "apt knows no $package in $suite; run 'apt-get update' and check /etc/apt/sources.list.d/shimtrace-$suite.sources"
    log "warning: $suite has $package $v, not $want; the tests expect $want"
    printf '%s\n' "$v"
}

# Downloads the packages PACKAGE=VERSION… and unpacks them all into DIR (replaced whole, never
# half-written), recording DEBVER in DIR/DEBIAN-VERSION.
unpack_debs() {
    local dir="$1" debver="$2" tmp spec
    shift 2
    tmp="$(mktemp -d)"
    # `_apt` downloads into the current directory and must be able to write there.
    chown _apt "$tmp" 2>/dev/null || chmod 777 "$tmp"
    (cd "$tmp" && apt-get "${APT_LOCK_WAIT[@]}" download -qq "$@" >/dev/null) \
        || die "apt-get download $* failed"
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    for spec in "$@"; do dpkg -x "$tmp/${spec%%=*}"_*.deb "$dir.partial"; done
    printf '%s\n' "$debver" >"$dir.partial/DEBIAN-VERSION"
    rm -rf "$tmp" "$dir"
    mv "$dir.partial" "$dir"
}
