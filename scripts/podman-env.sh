# Source this (bash): a private podman/buildah configuration for tern's image
# builds (scripts/image.sh) and container tests (tests/e2e/compose_e2e.sh).
#
# Images, containers, volumes and networks live under $TERN_PODMAN_ROOT
# (default /var/tmp/tern-podman), not in the machine's default storage, and
# the settings that podman 4.3 needs on hosts with hybrid cgroups v1/v2 and no
# CAP_SYS_RESOURCE (the build machines) are set: runc instead of crun, the
# cgroupfs manager, and default rlimits at or below the hard nofile limit.
# Podman runs as root here; the private root is created on first use.
#
# Sets: tern_podman_root, and exports CONTAINERS_CONF and
# CONTAINERS_STORAGE_CONF (podman, buildah and podman-compose read both).

tern_podman_root="${TERN_PODMAN_ROOT:-/var/tmp/tern-podman}"
mkdir -p "$tern_podman_root/storage" "$tern_podman_root/run" "$tern_podman_root/networks" \
  "$tern_podman_root/tmp"

tern_podman_write_if_changed() {  # file, content
  if [[ ! -f "$1" || "$(cat "$1")" != "$2" ]]; then
    printf '%s\n' "$2" >"$1.tmp" && mv "$1.tmp" "$1"
  fi
}

# nofile may not exceed the hard limit podman itself runs under (20000 on the
# build machines): setrlimit would fail without CAP_SYS_RESOURCE.
tern_podman_nofile=$(ulimit -Hn)
[[ "$tern_podman_nofile" == unlimited || "$tern_podman_nofile" -gt 65536 ]] && tern_podman_nofile=65536

tern_podman_write_if_changed "$tern_podman_root/containers.conf" "# written by scripts/podman-env.sh
[containers]
default_ulimits = [\"nofile=$tern_podman_nofile:$tern_podman_nofile\", \"nproc=32768:32768\"]

[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
tmp_dir = \"$tern_podman_root/tmp\"

[network]
network_config_dir = \"$tern_podman_root/networks\""

tern_podman_write_if_changed "$tern_podman_root/storage.conf" "# written by scripts/podman-env.sh
[storage]
driver = \"overlay\"
graphroot = \"$tern_podman_root/storage\"
runroot = \"$tern_podman_root/run\""

export CONTAINERS_CONF="$tern_podman_root/containers.conf"
export CONTAINERS_STORAGE_CONF="$tern_podman_root/storage.conf"
unset tern_podman_nofile

# Removes what podman leaves outside its storage once nothing uses it: the
# empty libpod_parent cgroups (rmdir fails, harmlessly, while any container
# runs in them) and, when no podman bridge exists any more (no network of any
# podman user on this host is up), netavark's iptables chains and the rules
# jumping to them. Safe to call at any time (also under set -euo pipefail);
# tests call it when they end.
tern_podman_host_cleanup() {
  local dir table rule chain
  for dir in /sys/fs/cgroup/*/libpod_parent /sys/fs/cgroup/libpod_parent; do
    [[ -d "$dir" ]] || continue
    find "$dir" -depth -type d -delete 2>/dev/null || true
  done
  command -v iptables >/dev/null || return 0
  if ip -o link show 2>/dev/null | grep -qE '^[0-9]+: (podman|cni-podman)[0-9]+[:@]'; then
    return 0
  fi
  for table in filter nat mangle; do
    iptables -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j NETAVARK' | while read -r rule; do
      # The rule as iptables -S prints it, quotes included (comments).
      eval "iptables -t $table -D ${rule#-A }" 2>/dev/null || true
    done || true
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^NETAVARK/ {print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^NETAVARK/ {print $2}'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  return 0
}
