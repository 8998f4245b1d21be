#!/usr/bin/env bash
# Builds shoal's test images from Debian's busybox-static, with no network and no Docker:
#   OUT/busybox-oci/          an OCI image layout (directory)
#   OUT/busybox-oci.tar       the same layout as a tar
#   OUT/unhealthy-oci/        the same image with a HEALTHCHECK that never passes
#   OUT/busybox-docker.tar    a `docker save` tarball (manifest.json + config + layer.tar)
#   OUT/blobs/                every blob, named by hex digest, for pushing to a registry
#   OUT/image.env             digests: CONFIG, LAYERS, MANIFEST, MANIFEST_SIZE ...
# The image has two layers: busybox with its applets, then an app layer that adds
# /etc/shoal-release and deletes /etc/removed-by-layer2 with a whiteout.
# Usage: scripts/fixtures.sh OUT
set -euo pipefail
out=${1:?usage: fixtures.sh OUT}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "fixtures: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
file "$busybox" 2>/dev/null | grep -q dynamic && { echo "fixtures: $busybox is not static" >&2; exit 1; }
rm -rf "$out"; mkdir -p "$out/blobs"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
tarit() { # DIR FILE: deterministic tar of DIR's contents
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C "$1" -cf "$2" .
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# layer 1: busybox and its applets
l1=$work/l1; mkdir -p "$l1"/{bin,etc,tmp,proc,sys,dev,root,var/log}
chmod 1777 "$l1/tmp"
cp "$busybox" "$l1/bin/busybox"
for a in $("$busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$l1/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$l1/etc/passwd"
echo 'nobody:x:65534:65534:nobody:/:/bin/false' >> "$l1/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$l1/etc/group"
echo 'gone' > "$l1/etc/removed-by-layer2"
# layer 2: a file and a whiteout
l2=$work/l2; mkdir -p "$l2/etc"
echo 'shoal-test 1' > "$l2/etc/shoal-release"
: > "$l2/etc/.wh.removed-by-layer2"

layers=(); diffs=(); sizes=()
for l in l1 l2; do
  tarit "$work/$l" "$work/$l.tar"
  diffs+=("sha256:$(sha "$work/$l.tar")")
  gzip -n -c "$work/$l.tar" > "$work/$l.tar.gz"
  d=$(sha "$work/$l.tar.gz"); layers+=("$d"); sizes+=("$(size "$work/$l.tar.gz")")
  cp "$work/$l.tar.gz" "$out/blobs/$d"
done

cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/","Labels":{"org.shoal.test":"busybox"}},"rootfs":{"type":"layers","diff_ids":["${diffs[0]}","${diffs[1]}"]},"history":[{"created_by":"busybox-static"},{"created_by":"app layer"}]}
JSON
cfg=$(sha "$work/config.json"); cfgsize=$(size "$work/config.json")
cp "$work/config.json" "$out/blobs/$cfg"

manifest() { # MEDIATYPE-OF-MANIFEST CONFIG-TYPE LAYER-TYPE
  printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","digest":"sha256:%s","size":%s},"layers":[' "$1" "$2" "$cfg" "$cfgsize"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%s},' "$3" "${layers[0]}" "${sizes[0]}"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}]}' "$3" "${layers[1]}" "${sizes[1]}"
}
manifest application/vnd.oci.image.manifest.v1+json application/vnd.oci.image.config.v1+json application/vnd.oci.image.layer.v1.tar+gzip > "$work/oci-manifest.json"
manifest application/vnd.docker.distribution.manifest.v2+json application/vnd.docker.container.image.v1+json application/vnd.docker.image.rootfs.diff.tar.gzip > "$work/docker-manifest.json"
om=$(sha "$work/oci-manifest.json"); omsize=$(size "$work/oci-manifest.json")
dm=$(sha "$work/docker-manifest.json"); dmsize=$(size "$work/docker-manifest.json")
cp "$work/oci-manifest.json" "$out/blobs/$om"; cp "$work/docker-manifest.json" "$out/blobs/$dm"

# a second, "arm64" variant so that a manifest list has something to choose from
sed 's/"architecture":"amd64"/"architecture":"arm64"/' "$work/config.json" > "$work/config-arm64.json"
acfg=$(sha "$work/config-arm64.json"); acfgsize=$(size "$work/config-arm64.json")
cp "$work/config-arm64.json" "$out/blobs/$acfg"
sed "s/$cfg/$acfg/; s/\"size\":$cfgsize,/\"size\":$acfgsize,/" "$work/docker-manifest.json" > "$work/arm64-manifest.json"
am=$(sha "$work/arm64-manifest.json"); amsize=$(size "$work/arm64-manifest.json")
cp "$work/arm64-manifest.json" "$out/blobs/$am"
printf '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"}}]}' \
  "$am" "$amsize" "$dm" "$dmsize" > "$work/list.json"
ml=$(sha "$work/list.json"); cp "$work/list.json" "$out/blobs/$ml"

# OCI image layout
o=$out/busybox-oci; mkdir -p "$o/blobs/sha256"
for b in "${layers[@]}" "$cfg" "$om"; do cp "$out/blobs/$b" "$o/blobs/sha256/$b"; done
echo '{"imageLayoutVersion":"1.0.0"}' > "$o/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest","io.containerd.image.name":"shoal-test/busybox:latest"}}]}' "$om" "$omsize" > "$o/index.json"
tar --owner=0 --group=0 --numeric-owner -C "$o" -cf "$out/busybox-oci.tar" .

# the same image with a HEALTHCHECK that never passes (the image's own check is used
# unless a service says --no-healthcheck): OUT/unhealthy-oci, shoal-test/unhealthy
sed 's|"Labels":{"org.shoal.test":"busybox"}|&,"Healthcheck":{"Test":["CMD","false"],"Interval":100000000,"Retries":1}|' "$work/config.json" > "$work/config-unhealthy.json"
grep -q Healthcheck "$work/config-unhealthy.json" || { echo "fixtures: no Healthcheck in the unhealthy image's config" >&2; exit 1; }
ucfg=$(sha "$work/config-unhealthy.json"); ucfgsize=$(size "$work/config-unhealthy.json")
sed "s/\"sha256:$cfg\",\"size\":$cfgsize/\"sha256:$ucfg\",\"size\":$ucfgsize/" "$work/oci-manifest.json" > "$work/unhealthy-manifest.json"
grep -q "$ucfg\",\"size\":$ucfgsize" "$work/unhealthy-manifest.json" || { echo "fixtures: the unhealthy manifest does not name its config" >&2; exit 1; }
um=$(sha "$work/unhealthy-manifest.json"); umsize=$(size "$work/unhealthy-manifest.json")
u=$out/unhealthy-oci; mkdir -p "$u/blobs/sha256"
cp "$work/config-unhealthy.json" "$u/blobs/sha256/$ucfg"; cp "$work/unhealthy-manifest.json" "$u/blobs/sha256/$um"
for b in "${layers[@]}"; do cp "$out/blobs/$b" "$u/blobs/sha256/$b"; done
echo '{"imageLayoutVersion":"1.0.0"}' > "$u/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest","io.containerd.image.name":"shoal-test/unhealthy:latest"}}]}' "$um" "$umsize" > "$u/index.json"

# docker save tarball: uncompressed layers in <id>/layer.tar
d=$work/docker; mkdir -p "$d"
cp "$work/config.json" "$d/$cfg.json"
paths=()
for i in 0 1; do
  id=${diffs[$i]#sha256:}; mkdir -p "$d/$id"; cp "$work/l$((i+1)).tar" "$d/$id/layer.tar"; paths+=("\"$id/layer.tar\"")
done
printf '[{"Config":"%s.json","RepoTags":["shoal-test/busybox:saved"],"Layers":[%s,%s]}]' "$cfg" "${paths[0]}" "${paths[1]}" > "$d/manifest.json"
tar --owner=0 --group=0 --numeric-owner -C "$d" -cf "$out/busybox-docker.tar" .

cat > "$out/image.env" <<ENV
CONFIG=sha256:$cfg
LAYER1=sha256:${layers[0]}
LAYER2=sha256:${layers[1]}
DIFF1=${diffs[0]}
DIFF2=${diffs[1]}
OCI_MANIFEST=sha256:$om
DOCKER_MANIFEST=sha256:$dm
ARM64_MANIFEST=sha256:$am
MANIFEST_LIST=sha256:$ml
ENV
echo "fixtures: images in $out"
