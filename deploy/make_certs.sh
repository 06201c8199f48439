#!/usr/bin/env bash
# Makes a throwaway CA and psd certificates with openssl, for a local cluster
# and for tests (production certificates come from your own CA, e.g.
# cert-manager: see docs/OPERATIONS.md "Transport security").
#
#   deploy/make_certs.sh [--days N] DIR [NAME...]
#
# Writes DIR/ca.pem (and DIR/ca.key), then for each NAME a certificate
# DIR/NAME.pem and key DIR/NAME.key. NAME is ROLE or ROLE-SUFFIX, ROLE one of
# coordinator, server, worker, user, viewer, admin, serve (psd_serve); its
# identity is the URI SAN
# spiffe://psd/ROLE[/SUFFIX] (users and admins need a SUFFIX: user-alice is
# spiffe://psd/user/alice). Default NAMEs: coordinator server worker
# user-alice admin-root serve. Every certificate also names 127.0.0.1 and
# localhost, so grpcurl's host name check passes on loopback, and the
# coordinator's its Kubernetes Service name psd-coordinator (deploy/k8s: the
# submit Job's grpcurl dials it). Valid N days
# (default 30; a negative N makes expired ones, for tests). An existing
# DIR/ca.pem is reused, so NAMEs can be added later.
set -euo pipefail
DAYS=30
if [ "${1:-}" = --days ]; then DAYS=$2; shift 2; fi
[ $# -ge 1 ] || { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
DIR=$1
shift
[ $# -gt 0 ] || set -- coordinator server worker user-alice admin-root serve
mkdir -p "$DIR"
umask 077
if [ ! -s "$DIR/ca.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$DIR/ca.key" -out "$DIR/ca.pem" -days 30 -subj "/CN=psd throwaway CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
for name in "$@"; do
  role=${name%%-*}
  suffix=${name#"$role"}
  suffix=${suffix#-}
  case "$role" in
    coordinator | server | worker | user | viewer | admin | serve) ;;
    *) echo "make_certs: $name: the role must be coordinator, server, worker, user, viewer, admin or serve" >&2; exit 2 ;;
  esac
  uri="spiffe://psd/$role${suffix:+/$suffix}"
  dns=DNS:localhost
  if [ "$role" = coordinator ]; then dns="$dns,DNS:psd-coordinator"; fi
  ext=$(mktemp)
  cat >"$ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=URI:$uri,IP:127.0.0.1,$dns
EOF
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$DIR/$name.key" -out "$DIR/$name.csr" -subj "/CN=psd $role${suffix:+ $suffix}" 2>/dev/null
  openssl x509 -req -in "$DIR/$name.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
    -CAcreateserial -days "$DAYS" -extfile "$ext" -out "$DIR/$name.pem" 2>/dev/null
  rm -f "$ext" "$DIR/$name.csr"
done
chmod 644 "$DIR"/*.pem
