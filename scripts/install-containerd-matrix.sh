#!/usr/bin/env bash
# Installs the containerd test matrix side by side on a Debian bookworm machine (run as root):
#   - containerd 1.6.20 (bookworm, system-wide via apt) with runc, runsc, crun, busybox-static;
#   - containerd 1.7.x from trixie and 2.x from sid, unpacked (never installed) into
#     /opt/shimtrace/containerd/<upstream version>/usr/bin/.
# The trixie and sid suites are added by copying this machine's own apt source entry with only the
# suite changed, pinned at priority 50 so that nothing installed ever upgrades from them.
# Idempotent; safe under CI=true with no tty. `--verify` also starts each containerd privately and
# runs a busybox container through its own runc shim. `--with-rust-runc-shim` also builds crates.io's
# containerd-runc-shim 0.2.0 (binary containerd-shim-runc-v2-rs, a second task-v3 / 2.3-bootstrap
# inner shim) into /opt/shimtrace/rust-runc-shim/bin/ (about 10-18 min of release build, once).
set -euo pipefail

readonly PREFIX="${SHIMTRACE_CONTAINERD_PREFIX:-/opt/shimtrace/containerd}"
# The versions the tests were written against; another version in the suite is used with a warning.
readonly WANT_TRIXIE="1.7.24"
readonly WANT_SID="2.1.9"

readonly SCRIPT_NAME=install-containerd-matrix
# shellcheck source=scripts/lib/apt-unpack.sh
source "$(dirname "$0")/lib/apt-unpack.sh"
require_root_and_apt "installs apt packages and writes /etc/apt and $PREFIX"

verify=false
rust_runc_shim=false
for arg in "$@"; do
    case "$arg" in
        --verify) verify=true ;;
        --with-rust-runc-shim) rust_runc_shim=true ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown argument '$arg' (accepted: --verify, --with-rust-runc-shim, --help)" ;;
    esac
done

apt_updated=false
apt_update() {
    local attempt
    for attempt in 1 2 3; do
        if apt-get "${APT_LOCK_WAIT[@]}" update -qq; then
            apt_updated=true
            return 0
        fi
        log "apt-get update failed (attempt $attempt), retrying"
        sleep 5
    done
    die "apt-get update failed three times; check the apt sources and the network"
}

# --- 1. bookworm's own packages ----------------------------------------------------------------
readonly SYSTEM_PACKAGES=(containerd runc runsc crun busybox-static)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing from bookworm: ${missing[*]}"
    apt_update
    apt-get "${APT_LOCK_WAIT[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    apt-get clean # the downloaded .debs are not needed again; disk is short on small CI machines
fi

# --- 2. trixie and sid as low-pinned copies of the machine's own source entry ------------------
# Prints the first deb822 stanza (or first `deb` line) of the machine's source list with the suite
# replaced; the host name therefore comes from the machine, never from this repository.
source_entry_for_suite() {
    local suite="$1" deb822=/etc/apt/sources.list.d/debian.sources legacy=/etc/apt/sources.list
    if [[ -s $deb822 ]]; then
        awk -v suite="$suite" '
            /^[[:space:]]*$/ { if (started) exit; next }
            { started = 1 }
            /^Suites:/ { print "Suites: " suite; next }
            /^Types:/ { print "Types: deb"; next }
            { print }
        ' "$deb822"
    elif [[ -s $legacy ]]; then
        # "deb [options] URI SUITE COMPONENTS..." -> deb822 stanza with our suite.
        awk -v suite="$suite" '
            $1 == "deb" {
                i = 2; opts = ""
                if ($i ~ /^\[/) { while ($i !~ /\]$/) { opts = opts " " $i; i++ } opts = opts " " $i; i++ }
                uri = $i; comps = ""
                for (j = i + 2; j <= NF; j++) comps = comps " " $j
                print "Types: deb"; print "URIs: " uri; print "Suites: " suite
                print "Components:" comps
                gsub(/[\[\]]/, "", opts)
                n = split(opts, o, " ")
                for (k = 1; k <= n; k++) if (o[k] ~ /^signed-by=/) { sub(/^signed-by=/, "", o[k]); print "Signed-By: " o[k] }
                exit
            }' "$legacy"
    fi
}

sources_changed=false
add_suite() {
    local suite="$1" entry list="/etc/apt/sources.list.d/shimtrace-$1.sources" pin="/etc/apt/preferences.d/shimtrace-$1"
    entry="$(source_entry_for_suite "$suite")"
    [[ -n $entry ]] || die "no apt source entry found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list to copy for $suite"
    entry="# Added by shimtrace scripts/install-containerd-matrix.sh: only for 'apt-get download containerd/$suite'.
$entry"
    local pin_text="# Added by shimtrace: never install or upgrade anything from $suite.
Package: *
Pin: release n=$suite
Pin-Priority: 50"
    if [[ ! -f $list ]] || [[ $(cat "$list") != "$entry" ]]; then
        printf '%s\n' "$entry" >"$list"
        sources_changed=true
    fi
    if [[ ! -f $pin ]] || [[ $(cat "$pin") != "$pin_text" ]]; then
        printf '%s\n' "$pin_text" >"$pin"
    fi
}
add_suite trixie
add_suite sid

suite_lists_present() {
    compgen -G "/var/lib/apt/lists/*_dists_$1_InRelease" >/dev/null
}
if $sources_changed || ! suite_lists_present trixie || ! suite_lists_present sid; then
    log "adding suites trixie and sid (pinned at 50)"
    apt_update
fi

# Upstream version of a Debian version string: "1.7.24~ds1-6+b4" -> "1.7.24".
upstream_version() { local v="${1#*:}"; v="${v%%-*}"; printf '%s\n' "${v%%[~+]*}"; }

# Downloads containerd from SUITE and unpacks it into $PREFIX/<upstream version>; prints that dir.
unpack_containerd() {
    local suite="$1" want="$2" candidates debver upstream dir
    # All versions apt knows from this suite; prefer the one the tests were written against.
    candidates="$(apt-cache madison containerd | awk -F' [|] ' -v suite="$suite" 'index($3, " " suite "/") {print $2}')"
    debver="$(pick_version containerd "$suite" "$want" "$candidates")" || exit 1
    upstream="$(upstream_version "$debver")"
    dir="$PREFIX/$upstream"
    if [[ -x $dir/usr/bin/containerd && -f $dir/DEBIAN-VERSION && $(cat "$dir/DEBIAN-VERSION") == "$debver" ]]; then
        printf '%s\n' "$dir"
        return 0
    fi
    unpack_debs "$dir" "$debver" "containerd=$debver"
    printf '%s\n' "$dir"
}

dir_trixie="$(unpack_containerd trixie "$WANT_TRIXIE")"
dir_sid="$(unpack_containerd sid "$WANT_SID")"

readonly RUST_RUNC_SHIM_ROOT="${SHIMTRACE_RUST_RUNC_SHIM_ROOT:-/opt/shimtrace/rust-runc-shim}"
readonly RUST_RUNC_SHIM_VERSION="0.2.0"
if $rust_runc_shim; then
    rust_shim="$RUST_RUNC_SHIM_ROOT/bin/containerd-shim-runc-v2-rs"
    if [[ -x $rust_shim && -f $RUST_RUNC_SHIM_ROOT/VERSION && $(cat "$RUST_RUNC_SHIM_ROOT/VERSION") == "$RUST_RUNC_SHIM_VERSION" ]]; then
        log "containerd-runc-shim $RUST_RUNC_SHIM_VERSION already at $rust_shim"
    else
        command -v cargo >/dev/null || die "cargo not found: install Rust or drop --with-rust-runc-shim"
        build_dir="$(mktemp -d)"
        log "building containerd-runc-shim $RUST_RUNC_SHIM_VERSION (release; takes minutes)"
        CARGO_TARGET_DIR="$build_dir" cargo install --quiet --locked containerd-runc-shim \
            --version "$RUST_RUNC_SHIM_VERSION" --root "$RUST_RUNC_SHIM_ROOT" \
            || die "cargo install containerd-runc-shim $RUST_RUNC_SHIM_VERSION failed"
        rm -rf "$build_dir"
        printf '%s\n' "$RUST_RUNC_SHIM_VERSION" >"$RUST_RUNC_SHIM_ROOT/VERSION"
    fi
fi

report() {
    local bin="$1"
    printf '  %-60s %s\n' "$bin" "$("$bin" --version 2>&1 | head -n1)"
}
echo "containerd matrix:"
report /usr/bin/containerd
report "$dir_trixie/usr/bin/containerd"
report "$dir_sid/usr/bin/containerd"
echo "runc shims:"
for d in /usr/bin "$dir_trixie/usr/bin" "$dir_sid/usr/bin"; do
    echo "  $d/containerd-shim-runc-v2"
done
echo "ctr: /usr/bin/ctr, $dir_trixie/usr/bin/ctr, $dir_sid/usr/bin/ctr"
echo "runtimes: $(command -v runc) ($(runc --version | head -n1)), $(command -v runsc), $(command -v crun)"
echo "busybox: /bin/busybox"
$rust_runc_shim && echo "rust runc shim: $RUST_RUNC_SHIM_ROOT/bin/containerd-shim-runc-v2-rs (containerd-runc-shim $RUST_RUNC_SHIM_VERSION)"

$verify || exit 0

# --- 3. verification: each containerd privately, side by side, running busybox via its own shim -
work="$(mktemp -d /tmp/shimtrace-matrix-verify.XXXXXX)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,proc,sys,dev,tmp,etc}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in sh echo true false sleep cat uname; do ln -s busybox "$rootfs/bin/$applet"; done

start_private() {
    local name="$1" bindir="$2" config_version="$3" dir="$work/$1"
    mkdir -p "$dir"
    local disabled='"io.containerd.grpc.v1.cri"'
    [[ $config_version == 3 ]] && disabled='"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"'
    cat >"$dir/config.toml" <<EOF
version = $config_version
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [$disabled]
[grpc]
  address = "$dir/c.sock"
[ttrpc]
  address = "$dir/c.sock.ttrpc"
EOF
    # The shim is found next to containerd first only when not on PATH: put its own dir first.
    PATH="$bindir:$PATH" "$bindir/containerd" --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
    pids+=("$!")
    local deadline=$((SECONDS + 20))
    until "$bindir/ctr" --address "$dir/c.sock" version >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { cat "$dir/containerd.log" >&2; die "$name did not answer 'ctr version' within 20 s"; }
        sleep 0.1
    done
}

start_private v1.6 /usr/bin 2
start_private v1.7 "$dir_trixie/usr/bin" 2
start_private v2 "$dir_sid/usr/bin" 3
status=0
for entry in "v1.6:/usr/bin" "v1.7:$dir_trixie/usr/bin" "v2:$dir_sid/usr/bin"; do
    name="${entry%%:*}" bindir="${entry#*:}"
    server="$("$bindir/ctr" --address "$work/$name/c.sock" version | awk '/Server:/{s=1} s && /Version:/{print $2; exit}')"
    out="$("$bindir/ctr" --address "$work/$name/c.sock" run --rm --rootfs "$rootfs" "verify-$name" /bin/echo hi 2>&1)" || true
    if [[ $out == hi ]]; then
        echo "verify: containerd $server ($name) ran busybox echo through $bindir/containerd-shim-runc-v2: ok"
    else
        echo "verify: containerd $server ($name) FAILED: $out" >&2
        cat "$work/$name/containerd.log" >&2
        status=1
    fi
done
exit "$status"
