#!/usr/bin/env bash
# Runs Debian's docker-registry on loopback for tests and pushes the fixture images to it.
#   registry.sh start DIR FIXTURES   start two registries, state under DIR:
#        127.0.0.1:$SHOAL_TEST_REGISTRY_PORT (default 5055), anonymous
#        127.0.0.1:$SHOAL_TEST_AUTH_REGISTRY_PORT (default 5056), basic auth shoal/s3cret
#      and push: test/busybox:latest (Docker schema 2), test/busybox:oci (OCI manifest),
#      test/busybox:multi (manifest list: arm64 + amd64), test/busybox:liar (a manifest
#      that understates a layer's size), and private/busybox:latest on the auth registry
#   registry.sh stop DIR
set -euo pipefail
cmd=${1:?usage: registry.sh start DIR FIXTURES | stop DIR}; dir=${2:?DIR}
port=${SHOAL_TEST_REGISTRY_PORT:-5055}; aport=${SHOAL_TEST_AUTH_REGISTRY_PORT:-5056}

stop() {
  for p in "$dir"/*.pid; do
    [ -f "$p" ] || continue
    kill "$(cat "$p")" 2>/dev/null || true
    rm -f "$p"
  done
}

wait_up() { # PORT
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$1/v2/" && return 0
    sleep 0.1
  done
  echo "registry: nothing answers on 127.0.0.1:$1 (see $dir/*.log)" >&2; return 1
}

push_blob() { # PORT REPO FILE DIGEST [AUTH]
  local loc
  loc=$(curl -fsS ${5:+-u "$5"} -X POST -D - -o /dev/null "http://127.0.0.1:$1/v2/$2/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  case "$loc" in http*) ;; *) loc="http://127.0.0.1:$1$loc" ;; esac
  case "$loc" in *\?*) loc="$loc&digest=$4" ;; *) loc="$loc?digest=$4" ;; esac
  curl -fsS ${5:+-u "$5"} -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$3" "$loc" -o /dev/null
}

push_manifest() { # PORT REPO REF FILE MEDIATYPE [AUTH]
  curl -fsS ${6:+-u "$6"} -X PUT -H "Content-Type: $5" --data-binary @"$4" "http://127.0.0.1:$1/v2/$2/manifests/$3" -o /dev/null
}

push_image() { # PORT REPO FIXTURES [AUTH]
  local fx=$3
  # shellcheck disable=SC1091
  . "$fx/image.env"
  for d in "$CONFIG" "$LAYER1" "$LAYER2"; do push_blob "$1" "$2" "$fx/blobs/${d#sha256:}" "$d" "${4:-}"; done
  push_manifest "$1" "$2" latest "$fx/blobs/${DOCKER_MANIFEST#sha256:}" application/vnd.docker.distribution.manifest.v2+json "${4:-}"
}

start() {
  local fx=${1:?FIXTURES}
  stop; mkdir -p "$dir"
  for p in "$port" "$aport"; do
    if curl -s -o /dev/null "http://127.0.0.1:$p/v2/"; then
      echo "registry: something already answers on 127.0.0.1:$p; stop it or set SHOAL_TEST_REGISTRY_PORT / SHOAL_TEST_AUTH_REGISTRY_PORT" >&2
      exit 1
    fi
  done
  htpasswd -Bbn shoal s3cret > "$dir/htpasswd" 2>/dev/null
  for kind in open auth; do
    local p=$port extra=""
    if [ $kind = auth ]; then p=$aport; extra=$(printf 'auth:\n  htpasswd:\n    realm: shoal-test\n    path: %s/htpasswd\n' "$dir"); fi
    rm -rf "$dir/$kind"; mkdir -p "$dir/$kind"
    cat > "$dir/$kind.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/$kind
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$p
$extra
YML
    docker-registry serve "$dir/$kind.yml" > "$dir/$kind.log" 2>&1 &
    echo $! > "$dir/$kind.pid"
  done
  wait_up "$port"; wait_up "$aport"
  # shellcheck disable=SC1091
  . "$fx/image.env"
  push_image "$port" test/busybox "$fx"
  push_manifest "$port" test/busybox oci "$fx/blobs/${OCI_MANIFEST#sha256:}" application/vnd.oci.image.manifest.v1+json
  local acfg; acfg=$(grep -o '"config":{[^}]*}' "$fx/blobs/${ARM64_MANIFEST#sha256:}" | grep -o 'sha256:[0-9a-f]*')
  push_blob "$port" test/busybox "$fx/blobs/${acfg#sha256:}" "$acfg"
  push_manifest "$port" test/busybox "$ARM64_MANIFEST" "$fx/blobs/${ARM64_MANIFEST#sha256:}" application/vnd.docker.distribution.manifest.v2+json
  push_manifest "$port" test/busybox multi "$fx/blobs/${MANIFEST_LIST#sha256:}" application/vnd.docker.distribution.manifest.list.v2+json
  # a manifest that lies about a layer's size (one byte short), for the refusal tests
  local liar=$dir/liar.json
  sed "s/\"size\":\([0-9]*\)}]}\$/\"size\":LIAR}]}/" "$fx/blobs/${DOCKER_MANIFEST#sha256:}" > "$liar"
  local last; last=$(grep -o '"size":[0-9]*}]}$' "$fx/blobs/${DOCKER_MANIFEST#sha256:}" | grep -o '[0-9]*')
  sed -i "s/LIAR/$((last - 1))/" "$liar"
  push_manifest "$port" test/busybox liar "$liar" application/vnd.docker.distribution.manifest.v2+json
  push_image "$aport" private/busybox "$fx" shoal:s3cret
  echo "registry: 127.0.0.1:$port (open), 127.0.0.1:$aport (basic auth)"
}

case $cmd in
  start) start "${3:-}" ;;
  stop) stop ;;
  *) echo "usage: registry.sh start DIR FIXTURES | stop DIR" >&2; exit 2 ;;
esac
