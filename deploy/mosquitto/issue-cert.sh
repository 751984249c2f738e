#!/usr/bin/env bash
# Issue the certificates of the central broker's mutual TLS with openssl (deploy/README.md,
# "Central broker"). Everything is written below --dir (default ./pki); nothing is overwritten.
set -euo pipefail

PROG=$(basename "$0")
DIR=./pki
DAYS_CA=3650
DAYS=825

usage() {
    cat <<EOF
Usage: $PROG [--dir DIR] [--days N] COMMAND ...

Certificates for edge-agent's central broker (mosquitto, deploy/mosquitto/). EC P-256 keys,
written below DIR (default ./pki); an existing file is never overwritten.

Commands:
  ca                      two CAs: edge-agent-ca (signs gateways and the broker) and
                          edge-agent-ops-ca (signs operators), 10 years
  broker NAME [NAME...]   the broker's certificate edge-agent-broker.{crt,key}; each NAME is a
                          DNS name or IP address the gateways connect to (subjectAltName)
  device SITE DEVICE      a gateway's certificate, CN "SITE/DEVICE" (its [device] site and id):
                          devices/SITE/DEVICE/{device.crt,device.key,ca.crt}
  operator [NAME]         an operator's certificate, CN NAME (default fleet-ops, the ACL's
                          user): operators/NAME.{crt,key}
  acl SITE DEVICE         print an explicit ACL block for one gateway (for brokers whose %u
                          cannot span two topic levels; see deploy/README.md)

Options:
  --dir DIR   where the CAs are and the certificates go (default ./pki)
  --days N    validity of a broker/device/operator certificate in days (default 825)
  -h, --help  this text
EOF
}

die() { echo "$PROG: $*" >&2; exit 1; }

SEG='^[A-Za-z0-9_.-]{1,64}$'   # edge_agent/config.py: an MQTT topic segment
check_segment() {  # what, value
    [[ $2 =~ $SEG ]] || die "$1 '$2' is not a topic segment (1 to 64 letters, digits, '_', '.' or '-')"
}

refuse_existing() {
    local f
    for f in "$@"; do
        [[ ! -e $f ]] || die "$f exists; not overwriting it (remove it first to issue a new one)"
    done
}

need_ca() {  # name
    [[ -f $DIR/$1.crt && -f $DIR/$1.key ]] || die "$DIR/$1.crt or .key missing: run '$PROG --dir $DIR ca' first"
}

new_ca() {  # name, common name
    refuse_existing "$DIR/$1.crt" "$DIR/$1.key"
    (umask 077 && openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$DIR/$1.key" -out "$DIR/$1.crt" -days "$DAYS_CA" -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null) \
        || die "openssl could not make the CA $1"
    chmod 0644 "$DIR/$1.crt"
    echo "$DIR/$1.crt (CA key: $DIR/$1.key; keep it offline)"
}

# issue CA OUT_BASE SUBJECT EXTENSIONS: OUT_BASE.key (0600) and OUT_BASE.crt signed by CA
issue() {
    local ca=$1 out=$2 subj=$3 ext=$4 csr extfile
    need_ca "$ca"
    refuse_existing "$out.crt" "$out.key"
    csr=$WORK/request.csr extfile=$WORK/extensions.cnf
    printf '%s\n' "$ext" > "$extfile"
    (umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$out.key" -out "$csr" -subj "$subj" 2>/dev/null) \
        || die "openssl could not make the key and request for $subj"
    openssl x509 -req -in "$csr" -CA "$DIR/$ca.crt" -CAkey "$DIR/$ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$DAYS" -sha256 -extfile "$extfile" \
        -out "$out.crt" 2>/dev/null || die "openssl could not sign $out.crt"
    chmod 0644 "$out.crt"
    rm -f "$csr" "$extfile"
}

LEAF='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature'

while (($#)); do
    case $1 in
        --dir) [[ $# -ge 2 ]] || die "--dir needs a directory"; DIR=$2; shift 2 ;;
        --days) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--days needs a positive number of days"; DAYS=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
(($#)) || { usage >&2; exit 2; }
command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl)"
cmd=$1; shift
mkdir -p "$DIR"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

case $cmd in
    ca)
        (($# == 0)) || die "ca takes no arguments"
        new_ca edge-agent-ca "edge-agent gateways CA"
        new_ca edge-agent-ops-ca "edge-agent operators CA"
        ;;
    broker)
        (($# >= 1)) || die "broker needs at least one DNS name or IP address"
        sans=()
        for name in "$@"; do
            if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then sans+=("IP:$name"); else sans+=("DNS:$name"); fi
        done
        san=$(IFS=,; echo "${sans[*]}")
        issue edge-agent-ca "$DIR/edge-agent-broker" "/CN=$1" "$LEAF
extendedKeyUsage=serverAuth
subjectAltName=$san"
        echo "$DIR/edge-agent-broker.crt ($san; key $DIR/edge-agent-broker.key)"
        ;;
    device)
        (($# == 2)) || die "device needs SITE and DEVICE"
        check_segment site "$1"; check_segment device "$2"
        mkdir -p "$DIR/devices/$1/$2"
        # the CN holds a "/", escaped for openssl's -subj
        issue edge-agent-ca "$DIR/devices/$1/$2/device" "/CN=$1\\/$2" "$LEAF
extendedKeyUsage=clientAuth"
        cp "$DIR/edge-agent-ca.crt" "$DIR/devices/$1/$2/ca.crt"
        echo "$DIR/devices/$1/$2/: device.crt (CN $1/$2), device.key, ca.crt -> the gateway's /etc/edge-agent/tls/"
        ;;
    operator)
        (($# <= 1)) || die "operator takes at most one NAME"
        name=${1:-fleet-ops}
        check_segment operator "$name"
        mkdir -p "$DIR/operators"
        issue edge-agent-ops-ca "$DIR/operators/$name" "/CN=$name" "$LEAF
extendedKeyUsage=clientAuth"
        echo "$DIR/operators/$name.crt (CN $name), $DIR/operators/$name.key; trust $DIR/edge-agent-ca.crt for the broker"
        ;;
    acl)
        (($# == 2)) || die "acl needs SITE and DEVICE"
        check_segment site "$1"; check_segment device "$2"
        b="pdm/$1/$2"
        printf 'user %s\n' "$1/$2"
        for k in status alert summary ack model/request model/progress; do printf 'topic write %s/%s\n' "$b" "$k"; done
        for k in cmd/+ model/offer model/chunk/#; do printf 'topic read %s/%s\n' "$b" "$k"; done
        ;;
    *) die "unknown command '$cmd' (see --help)" ;;
esac
