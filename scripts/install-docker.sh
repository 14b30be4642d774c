#!/usr/bin/env bash
# Unpacks Docker Engine for shimtrace's tests and lab on a Debian bookworm machine (run as root):
#   - Docker 26.1.x from trixie (what the Docker tests are written against) and 28.x from sid
#     (which can drive a containerd 2.x, for the Docker-to-shim trace), each `docker.io` + `docker-cli`
#     .deb unpacked (never installed) into /opt/shimtrace/docker/<upstream version>/usr/{sbin,bin}/.
# Nothing is installed system-wide and no daemon is started: the tests start a private dockerd
# with its own data-root, exec-root and socket, which runs its own containerd from the system's
# containerd package. The trixie and sid suites come from scripts/install-containerd-matrix.sh
# (copies of this machine's own apt source entry, pinned at priority 50); it is run first when
# they are missing. Idempotent; safe under CI=true with no tty.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly PREFIX="${SHIMTRACE_DOCKER_PREFIX:-/opt/shimtrace/docker}"
# The versions the tests were written against; another version in the suite is used with a warning.
readonly WANT_TRIXIE="26.1.5"
readonly WANT_SID="28.5.2"

readonly SCRIPT_NAME=install-docker
# shellcheck source=scripts/lib/apt-unpack.sh
source scripts/lib/apt-unpack.sh
require_root_and_apt "writes $PREFIX and may add apt sources"

for arg in "$@"; do
    case "$arg" in
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument '$arg' (accepted: --help)" ;;
    esac
done

# `apt-cache madison` takes seconds on a loaded machine: asked once per package.
madison_engine="" madison_cli=""
ask_apt() {
    madison_engine="$(apt-cache madison docker.io 2>/dev/null)"
    madison_cli="$(apt-cache madison docker-cli 2>/dev/null)"
}
# All versions of PACKAGE (docker.io or docker-cli) apt knows from SUITE, newest first.
suite_versions() {
    local table="$madison_engine"
    [[ $1 == docker-cli ]] && table="$madison_cli"
    awk -F' [|] ' -v suite="$2" 'index($3, " " suite "/") {print $2}' <<<"$table"
}

ask_apt
if [[ -z $(suite_versions docker.io trixie) || -z $(suite_versions docker.io sid) ]]; then
    log "apt knows no docker.io from trixie or sid: adding those suites (scripts/install-containerd-matrix.sh)"
    bash scripts/install-containerd-matrix.sh >/dev/null
    ask_apt
fi

# Upstream version of a Debian version string: "26.1.5+dfsg1-9+deb13u1+b1" -> "26.1.5".
upstream_version() { local v="${1#*:}"; v="${v%-*}"; printf '%s\n' "${v%%[~+]*}"; }

# Downloads docker.io and docker-cli from SUITE and unpacks both into $PREFIX/<upstream version>;
# prints that dir.
unpack_docker() {
    local suite="$1" want="$2" debver cli_debver upstream dir
    debver="$(pick_version docker.io "$suite" "$want" "$(suite_versions docker.io "$suite")")" || exit 1
    # The client is built from the same source package; take the same version when it exists.
    cli_debver="$(suite_versions docker-cli "$suite" | grep -Fx -- "$debver" || true)"
    [[ -n $cli_debver ]] || cli_debver="$(suite_versions docker-cli "$suite" | head -n1)"
    [[ -n $cli_debver ]] || die "apt knows no docker-cli in $suite"
    upstream="$(upstream_version "$debver")"
    dir="$PREFIX/$upstream"
    if [[ -x $dir/usr/sbin/dockerd && -x $dir/usr/bin/docker && -f $dir/DEBIAN-VERSION \
        && $(cat "$dir/DEBIAN-VERSION") == "$debver" ]]; then
        printf '%s\n' "$dir"
        return 0
    fi
    log "unpacking docker.io $debver and docker-cli $cli_debver from $suite into $dir"
    # Unpacked for its binaries only: the service files, init scripts and completions stay unused.
    unpack_debs "$dir" "$debver" "docker.io=$debver" "docker-cli=$cli_debver"
    printf '%s\n' "$dir"
}

dir_trixie="$(unpack_docker trixie "$WANT_TRIXIE")"
dir_sid="$(unpack_docker sid "$WANT_SID")"

echo "docker engines (unpacked, not installed):"
for dir in "$dir_trixie" "$dir_sid"; do
    printf '  %-45s %s\n' "$dir/usr/sbin/dockerd" "$("$dir/usr/sbin/dockerd" --version 2>&1 | head -n1)"
    printf '  %-45s %s\n' "$dir/usr/bin/docker" "$("$dir/usr/bin/docker" --version 2>&1 | head -n1)"
done
