#!/usr/bin/env bash
# Install edge-agent as a systemd service on Raspberry Pi OS / Debian (deploy/README.md).
# Safe to run again: an upgrade reinstalls the package and the unit and keeps the configuration.
set -Eeuo pipefail

PROG=install.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Where things go on the target (before --root is prepended).
USER_NAME=edge-agent
PREFIX=/opt/edge-agent
VENV=$PREFIX/venv
ETC=/etc/edge-agent
CONFIG=$ETC/edge-agent.toml
KEYS=$ETC/trusted-keys
TLS=$ETC/tls
STATE=/var/lib/edge-agent
UNIT_DIR=/etc/systemd/system
UNIT=edge-agent.service
LINK=/usr/local/bin/edge-agent
MODELS=$PREFIX/models
PACK=$MODELS/default.pack

ROOT=""
SOURCE=""
PYTHON=python3
MAKE_VENV=1
FIND_LINKS=""
ENABLE=1
START=0

usage() {
    cat <<EOF
Usage: deploy/install.sh [OPTIONS] [SOURCE]

Install edge-agent as the systemd service edge-agent.service (Raspberry Pi OS / Debian, as root):

  $VENV            virtual environment with the package (pip install SOURCE)
  $LINK   -> $VENV/bin/edge-agent
  $PACK   the default model pack (models/default.pack), replaced on upgrade
  $CONFIG   from deploy/edge-agent.toml, only if absent (never overwritten), 0640 root:$USER_NAME
  $KEYS/      the operators' *.pub keys model packs must be signed by (0750 root:$USER_NAME)
  $TLS/                the gateway's broker certificate, key and CA (0750 root:$USER_NAME)
  $STATE/            outbox, alert log, model packs (0750 $USER_NAME:$USER_NAME)
  $UNIT_DIR/$UNIT
  system user $USER_NAME (useradd --system, groups $USER_NAME and dialout for serial sensors);
  then systemctl daemon-reload and enable, when systemd is running. It does not start the
  service unless --start is given: edit $CONFIG first ([device], [broker], [[source]]).

SOURCE is the edge-agent source tree (a directory with pyproject.toml; building it needs
python3-dev and a C compiler) or a built wheel (.whl). Default: the tree this script is in.

Options:
  --root DIR        install into DIR instead of / (an image, or a test): every path is
                    prefixed with DIR, and nothing outside it is touched: no useradd, chown or
                    systemctl; each of those is printed as "would run: COMMAND" instead
                    (with the target's paths), to run on the target later.
                    Note: a venv made under DIR refers to DIR in its paths; for an image use
                    --no-venv and make the venv on the target.
  --no-venv         skip making the venv and pip install (the package is installed some other
                    way, or a test); everything else is done
  --python PY       interpreter for the venv (default python3; needs Python >= 3.11)
  --find-links DIR  install offline: pip install --no-index --find-links DIR (wheels of the
                    package and its dependencies)
  --no-enable       install the unit but do not enable it
  --start           also (re)start the service now
  -h, --help        this text

Exit status: 0 when done; 1 on an error, with one line saying what failed.
EOF
}

say() { printf '%s\n' "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
# shellcheck disable=SC2154  # rc is assigned inside the trap
trap 'rc=$?; printf "%s: error: command failed (exit %s) at line %s: %s\n" "$PROG" "$rc" "$LINENO" "$BASH_COMMAND" >&2' ERR

while (($#)); do
    case $1 in
        --root) [[ $# -ge 2 && -n $2 ]] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; [[ -n $ROOT ]] || die "--root needs a directory"; shift ;;
        --no-venv) MAKE_VENV=0; shift ;;
        --python) [[ $# -ge 2 ]] || die "--python needs an interpreter"; PYTHON=$2; shift 2 ;;
        --find-links) [[ $# -ge 2 && -d $2 ]] || die "--find-links needs a directory of wheels"; FIND_LINKS=$(cd "$2" && pwd); shift 2 ;;
        --no-enable) ENABLE=0; shift ;;
        --start) START=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *) [[ -z $SOURCE ]] || die "more than one SOURCE given: $SOURCE and $1"; SOURCE=$1; shift ;;
    esac
done
(($# == 0)) || { [[ -z $SOURCE && $# -eq 1 ]] || die "more than one SOURCE given"; SOURCE=$1; }

# --- checks before anything is changed
if [[ -n $ROOT ]]; then
    [[ -d $ROOT ]] || die "--root $ROOT: no such directory"
    ROOT=$(cd "$ROOT" && pwd)
    [[ $ROOT != / ]] || ROOT=""
fi
if [[ -z $ROOT && $(id -u) -ne 0 ]]; then
    die "must run as root to install into / (sudo $0 ...), or give --root DIR"
fi
TEMPLATE=$HERE/edge-agent.toml
UNIT_SRC=$HERE/$UNIT
PACK_SRC=$(dirname "$HERE")/models/default.pack
[[ -f $TEMPLATE ]] || die "missing $TEMPLATE (run the script from an edge-agent source tree)"
[[ -f $UNIT_SRC ]] || die "missing $UNIT_SRC (run the script from an edge-agent source tree)"
if ((MAKE_VENV)); then
    SOURCE=${SOURCE:-$(dirname "$HERE")}
    if [[ -d $SOURCE ]]; then
        [[ -f $SOURCE/pyproject.toml ]] || die "SOURCE $SOURCE has no pyproject.toml: not an edge-agent source tree"
        SOURCE=$(cd "$SOURCE" && pwd)
    elif [[ -f $SOURCE ]]; then
        [[ $SOURCE == *.whl ]] || die "SOURCE $SOURCE is neither a source directory nor a wheel (.whl)"
        SOURCE=$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")
    else
        die "SOURCE $SOURCE: no such file or directory"
    fi
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (apt-get install python3)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); edge-agent needs 3.11 or newer"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
        || die "$PYTHON cannot make a venv: apt-get install python3-venv"
elif [[ -n $SOURCE ]]; then
    die "SOURCE $SOURCE given with --no-venv: nothing would install it"
fi

# --- helpers
p() { printf '%s%s' "$ROOT" "$1"; }   # a target path under --root

# Run a command that acts on the system itself (users, ownership, services); under --root
# print it instead, with the target's paths.
system() {
    local line
    printf -v line '%q ' "$@"
    if [[ -n $ROOT ]]; then
        say "would run: ${line% }"
    else
        say "run: ${line% }"
        "$@"
    fi
}

# One of our directories: made if missing, and its mode and owner set every time (the mode
# under --root too, the owner only on the real system).
make_dir() {  # path mode owner:group
    if [[ -d $(p "$1") ]]; then say "exists: $1"; else mkdir -p "$(p "$1")"; say "created: $1"; fi
    chmod "$2" "$(p "$1")"
    own "$3" "$1"
}
# A system directory (/etc/systemd/system, /usr/local/bin): made if missing, otherwise left as it is.
system_dir() {  # path
    [[ -d $(p "$1") ]] || { mkdir -p "$(p "$1")"; chmod 0755 "$(p "$1")"; say "created: $1"; }
}
own() {  # owner:group path
    if [[ -n $ROOT ]]; then say "would run: chown $1 $2"; else chown "$1" "$2"; fi
}

user_exists() {
    if [[ -n $ROOT ]]; then
        [[ -f $ROOT/etc/passwd ]] && grep -q "^$USER_NAME:" "$ROOT/etc/passwd"
    else
        getent passwd "$USER_NAME" >/dev/null
    fi
}
in_dialout() {
    if [[ -n $ROOT ]]; then
        [[ -f $ROOT/etc/group ]] && grep -Eq "^dialout:[^:]*:[^:]*:(.*,)?$USER_NAME(,|$)" "$ROOT/etc/group"
    else
        id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx dialout
    fi
}

say "edge-agent install into ${ROOT:-/}$( [[ -n $ROOT ]] && printf ' (--root: users, ownership and services are only printed)')"

# --- 1. the system user: its own group, and dialout for the serial sensors
if user_exists; then
    say "exists: user $USER_NAME"
    in_dialout || system usermod -a -G dialout "$USER_NAME"
else
    system useradd --system --user-group --groups dialout --no-create-home \
        --home-dir "$STATE" --shell /usr/sbin/nologin --comment "edge-agent daemon" "$USER_NAME"
fi

# --- 2. directories
make_dir "$PREFIX" 0755 root:root
make_dir "$MODELS" 0755 root:root
make_dir "$ETC" 0750 "root:$USER_NAME"
make_dir "$KEYS" 0750 "root:$USER_NAME"
make_dir "$TLS" 0750 "root:$USER_NAME"
make_dir "$STATE" 0750 "$USER_NAME:$USER_NAME"
system_dir "$UNIT_DIR"
system_dir "$(dirname "$LINK")"

# --- 3. the default model pack (part of the release, like the package: always replaced)
if [[ -f $PACK_SRC ]]; then
    install -m 0644 "$PACK_SRC" "$(p "$PACK")"
    say "installed: $PACK"
else
    say "skipped: $PACK (no models/default.pack beside deploy/)"
fi

# --- 4. the configuration: only when absent; an existing one is never touched
if [[ -e $(p "$CONFIG") || -L $(p "$CONFIG") ]]; then
    say "kept: $CONFIG (exists; not overwritten)"
else
    tmp=$(mktemp "$(p "$ETC")/.edge-agent.toml.XXXXXX")
    # the template, with the trusted keys directory made above and the default pack
    pack_edit=""
    if [[ -f $(p "$PACK") ]]; then pack_edit="s|^pack = \"\"|pack = \"$PACK\"|"; fi
    sed -e "s|^trusted_keys_dir = \"\"|trusted_keys_dir = \"$KEYS\"|" -e "$pack_edit" "$TEMPLATE" > "$tmp"
    chmod 0640 "$tmp"
    mv "$tmp" "$(p "$CONFIG")"
    say "installed: $CONFIG (from deploy/edge-agent.toml; edit [device], [broker] and [[source]])"
    own "root:$USER_NAME" "$CONFIG"
fi

# --- 5. the package in its venv
if ((MAKE_VENV)); then
    [[ -z $ROOT ]] || say "warning: the venv under --root refers to $(p "$VENV") in its paths"
    if [[ -x $(p "$VENV")/bin/python ]] && "$(p "$VENV")/bin/python" -c '' 2>/dev/null; then
        say "exists: $VENV"
    else
        "$PYTHON" -m venv "$(p "$VENV")" || die "could not make the venv $(p "$VENV") with $PYTHON"
        say "created: $VENV"
    fi
    pip_args=(install --upgrade --quiet --disable-pip-version-check)
    [[ -z $FIND_LINKS ]] || pip_args+=(--no-index --find-links "$FIND_LINKS")
    say "pip install $SOURCE (builds the compiled extension from a source tree; takes minutes on a Pi)"
    "$(p "$VENV")/bin/python" -m pip "${pip_args[@]}" "$SOURCE" \
        || die "pip install $SOURCE failed (from a source tree it needs python3-dev and gcc: apt-get install python3-dev build-essential)"
    [[ -x $(p "$VENV")/bin/edge-agent ]] || die "$VENV/bin/edge-agent is missing after pip install"
    say "installed: edge-agent $("$(p "$VENV")/bin/python" -c 'from importlib.metadata import version; print(version("edge-agent"))') in $VENV"
    ln -sfn "$VENV/bin/edge-agent" "$(p "$LINK")"
    say "linked: $LINK -> $VENV/bin/edge-agent"
else
    say "skipped: venv and pip install (--no-venv)"
fi

# --- 6. the unit (always replaced: local changes belong in a drop-in, systemctl edit)
install -m 0644 "$UNIT_SRC" "$(p "$UNIT_DIR/$UNIT")"
say "installed: $UNIT_DIR/$UNIT"

# --- 7. systemd: only on the real system, and only when systemd is running
# (under --root, system() only prints)
if [[ -n $ROOT || -d /run/systemd/system ]]; then
    system systemctl daemon-reload
    if ((ENABLE)); then system systemctl enable "$UNIT"; fi
    if ((START)); then system systemctl restart "$UNIT"; fi
else
    say "skipped: systemctl (systemd is not running here); on the target: systemctl daemon-reload && systemctl enable --now $UNIT"
fi

# --- 8. a check of the configuration (not under --root: its paths are the target's)
if [[ -z $ROOT && -x $VENV/bin/edge-agent ]]; then
    if out=$("$VENV/bin/edge-agent" config check "$CONFIG" 2>&1); then
        say "config check: $out"
    else
        say "config check: $CONFIG needs editing before the service can start:"
        say "$out"
    fi
fi
say "done"
