#!/usr/bin/env bash
# Builds the pinned Kubernetes binaries into a cache outside the checkout,
# keyed by the Kubernetes version and a hash of this module's sources, so a
# fresh clone reuses them and a change to them rebuilds. Prints the binary dir.
#   build.sh controlplane     -> <cache>/k8s/<version>-<hash>/controlplane
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${PROXYMODES_CACHE:-/var/cache/proxymodes}
version=v1.37.2
minor=${version#v1.}; minor=${minor%%.*}
hash=$(cd "$here" && cat go.mod go.sum $(find cmd -name '*.go' | sort) | sha256sum | cut -c1-12)
out="$cache/k8s/$version-$hash"
mkdir -p "$out"
# Runs at once (make test's lanes, a soak or a helper beside it) would
# build into the same temp file, and the first mv would leave the other
# failing on a missing file: it did, on a cold machine. The lock makes the
# later runs wait and then find the binary built.
exec 9>"$out/.lock"
flock 9
for bin in "$@"; do
  if [ -x "$out/$bin" ]; then
    continue
  fi
  echo "proxymodes: building $bin from k8s.io/kubernetes $version into $out" >&2
  echo "proxymodes: a cold build takes about 9 minutes on 2 cores; later runs reuse it" >&2
  start=$(date +%s)
  ld="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  (cd "$here" && go build -trimpath -ldflags "$ld" -o "$out/$bin.tmp" "./cmd/$bin")
  mv "$out/$bin.tmp" "$out/$bin"
  echo "proxymodes: built $bin in $(( $(date +%s) - start ))s" >&2
done
# Builds of older sources of this version are dead weight (135 MB and more
# each), but keep the three newest: branches and clones that differ in
# clusters/k8s would otherwise delete each other's builds and rebuild for
# minutes every time they alternate.
touch "$out"
ls -1dt "$cache/k8s/$version"-* | tail -n +4 | while read -r old; do
  [ "$old" = "$out" ] || rm -rf "$old"
done
echo "$out"
