#!/usr/bin/env bash
# deploy/images/build.sh: builds one OCI image per service from deploy/images/Containerfile
# with buildah (`./dev images` calls it). No registry is needed: when debian:bookworm-slim is
# not in local storage it is made with debootstrap from this machine's Debian mirror and
# stored under the very name a registry pull would give, so the Containerfile is unchanged
# where a registry exists.
#   build.sh [--no-test] [SERVICE...]     (default: broker saga projector)
# Then runs each built image (test.sh: --help and /readyz as uid 65532, sizes) unless
# --no-test. Environment:
#   BATON_IMAGE_TAG     tag of the built images (default: dev)
#   BATON_IMAGE_MIRROR  Debian mirror for debootstrap (default: the first one apt uses)
#   BATON_IMAGE_MAX_MB  size budget per image, checked by the test (default 35)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/../.." && pwd -P)
BASE=docker.io/library/debian:bookworm-slim
TAG=${BATON_IMAGE_TAG:-dev}
ISOLATION=(--isolation chroot) # podman's OCI runtime does not work on these machines

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }

# The first deb mirror apt is configured with (deb822 .sources or one-line sources.list).
apt_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    uri=$(awk '/^URIs:/ && !done { print $2; done = 1 }' "$f")
    [[ -n $uri && $uri != *security* ]] && { printf '%s\n' "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' "$f")
    [[ -n $uri ]] && { printf '%s\n' "$uri"; return; }
  done
  printf '%s\n' http://deb.debian.org/debian
}

# debian:bookworm-slim from debootstrap when local storage lacks it.
ensure_base() {
  if buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    return 0
  fi
  command -v debootstrap >/dev/null || die "debootstrap not found: run ./dev deps"
  local mirror tmp ctr
  mirror=${BATON_IMAGE_MIRROR:-$(apt_mirror)}
  tmp=$(mktemp -d /var/tmp/baton-rootfs.XXXXXX)
  trap 'rm -rf "$tmp"' RETURN
  say "images: $BASE is not in local storage; debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -n 20 "$tmp/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  # As slim as the registry image: no apt lists, caches or docs.
  rm -rf "$tmp"/rootfs/var/lib/apt/lists/* "$tmp"/rootfs/var/cache/apt/*.bin \
    "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/usr/share/doc/* \
    "$tmp"/rootfs/usr/share/man/* "$tmp"/rootfs/usr/share/locale/*
  tar -C "$tmp/rootfs" --numeric-owner -cf "$tmp/rootfs.tar" .
  ctr=$(buildah from scratch)
  buildah add "$ctr" "$tmp/rootfs.tar" / >/dev/null
  buildah config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  buildah commit --rm "$ctr" "$BASE" >/dev/null
  say "images: made $BASE ($(image_size "$BASE"))"
}

# Uncompressed size, as `buildah images` reports it (e.g. "21.3 MB").
image_size() {
  buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | awk -v n="$1" '$1 == n { $1 = ""; print substr($0, 2); exit }'
}

build_one() {
  local svc=$1 name="localhost/baton-$1:$TAG"
  say "images: building $name"
  buildah bud "${ISOLATION[@]}" --pull-never --layers \
    --build-arg "SERVICE=$svc" -f "$HERE/Containerfile" -t "$name" "$ROOT"
  say "images: $name is $(image_size "$name")"
}

main() {
  local test=1 svcs=()
  for a in "$@"; do
    case $a in
      --test) test=1 ;;
      --no-test) test=0 ;;
      broker | saga | projector) svcs+=("$a") ;;
      *) die "unknown argument '$a' (usage: build.sh [--no-test] [broker|saga|projector...])" ;;
    esac
  done
  [[ ${#svcs[@]} -gt 0 ]] || svcs=(broker saga projector)
  command -v buildah >/dev/null || die "buildah not found: run ./dev deps"
  [[ $EUID -eq 0 ]] || die "buildah --isolation chroot needs root here (run as root or with sudo)"
  ensure_base
  for s in "${svcs[@]}"; do build_one "$s"; done
  if [[ $test == 1 ]]; then
    "$HERE/test.sh" "${svcs[@]}"
  fi
}

main "$@"
