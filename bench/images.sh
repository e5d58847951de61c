#!/usr/bin/env bash
# Build time of every image profile from an empty cache (cold) and again
# (warm: the content-addressed output is found), and the sizes, against the
# old system's hand-edited 8 GB golden image. Prints a Markdown table.
#   ./bench/images.sh   (root; bench/run.sh calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /var/tmp/imagebench-XXXXXX)
trap 'rm -rf "$work"' EXIT
export HEARTH_STATE_DIR=$work/state HEARTH_CACHE_DIR=$work/cache HEARTH_IMAGE_DIR=$work/images HEARTH_CONFIG=
echo "## image builds (cold = the run starts from an empty cache; workspace and browser reuse the kernel and debootstrap base the earlier builds fetched)"
echo
echo "| profile | cold build | warm build | rootfs allocated | rootfs size | old golden image | smaller by |"
echo "|---|---|---|---|---|---|---|"
for p in minimal workspace browser; do
  t0=$(date +%s.%N)
  bin/hearth image build --local --profile "$p" --agent bin/hearth-agent >"$work/$p.cold.log" 2>&1
  t1=$(date +%s.%N)
  bin/hearth image build --local --profile "$p" --agent bin/hearth-agent >"$work/$p.warm.log" 2>&1
  t2=$(date +%s.%N)
  rootfs=$(ls "$work"/images/"$p"-*/rootfs.ext4)
  alloc=$(du -B1 "$rootfs" | cut -f1)
  apparent=$(stat -c %s "$rootfs")
  awk -v p="$p" -v c="$(echo "$t1 - $t0" | bc)" -v w="$(echo "$t2 - $t1" | bc)" -v a="$alloc" -v s="$apparent" 'BEGIN {
    old = 8 * 1024 * 1024 * 1024
    printf "| %s | %.1f s | %.1f s | %.0f MiB | %.0f MiB (sparse) | 8 GiB (full copy per VM) | %.0f× |\n", p, c, w, a/1048576, s/1048576, old/a }'
done
echo
echo "The old system copied its 8 GB image for every VM; hearth boots every VM from a qcow2 overlay"
echo "over the built image (see the disk table), so image size no longer costs per VM."
