# shellcheck shell=bash
# Sourced (not run) by the scripts that build as root: scripts/setup, test, bench and soak.
# `sudo` resets PATH, so root finds no cargo when the Rust toolchain is the calling user's (rustup
# puts it in ~/.cargo/bin). `use_callers_toolchain` then lets root build with that toolchain, and
# sets `give_back` to run on exit: it hands what root created in the user's cargo and rustup homes,
# and in the build directories of their own checkout, back to them, so that their own builds can
# replace it.

GIVE_BACK=()
# Made when root starts building: what root creates or changes after it (a later ctime; unpacked
# files keep older mtimes) is what this run made.
GIVE_BACK_SINCE=""

use_callers_toolchain() {
    command -v cargo >/dev/null && return 0
    [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]] || return 0
    local home path
    home="$(getent passwd "$SUDO_USER" | cut -d: -f6)"
    [[ -n $home && -x $home/.cargo/bin/cargo ]] || return 0
    export PATH="$home/.cargo/bin:$PATH"
    export CARGO_HOME="$home/.cargo"
    export RUSTUP_HOME="$home/.rustup"
    GIVE_BACK=("$CARGO_HOME" "$RUSTUP_HOME")
    # The build directories of a checkout of theirs, where they are inside it.
    if [[ $(stat -c %U .) == "$SUDO_USER" ]]; then
        for path in "${CARGO_TARGET_DIR:-target}" fuzz; do
            [[ $(realpath -m "$path") == "$(pwd -P)"/* ]] && GIVE_BACK+=("$path")
        done
    fi
    GIVE_BACK_SINCE="$(mktemp)"
    trap give_back EXIT
}

# Gives what root made or changed under GIVE_BACK's paths during this run to the user who called
# sudo. Called on exit, and by scripts that `exec` (which leaves no exit to trap) before they do.
give_back() {
    [[ -n $GIVE_BACK_SINCE ]] || return 0
    local path
    for path in "${GIVE_BACK[@]}"; do
        # A file that vanishes during the walk is no reason to fail the run that is ending.
        if [[ -e $path ]]; then
            find "$path" -user 0 -cnewer "$GIVE_BACK_SINCE" -exec chown -h "$SUDO_USER:" {} + 2>/dev/null || true
        fi
    done
    rm -f "$GIVE_BACK_SINCE"
    GIVE_BACK_SINCE=""
    return 0
}
