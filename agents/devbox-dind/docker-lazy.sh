#!/bin/sh
# `docker`, lazily: the first call starts the daemon, every call then runs the real client
# (/usr/bin/docker.real). This wrapper is /usr/bin/docker, as the DinD guide has it.
# As root it starts dockerd; as any other UID, rootless dockerd (devbox-dind-rootless).
#
# Knobs (environment):
#   DOCKER_DATA_ROOT        daemon data. Default /var/lib/docker, rootless /tmp/.docker/data.
#                           As root, a tmpfs is mounted there only when it lies on the
#                           container's own root file system; on a volume (a PVC, a
#                           subdirectory of /workspace, Sysbox's mount) it is used as is.
#                           Rootless on the root file system with no /dev/fuse: vfs.
#   DOCKER_REGISTRY_MIRROR  a registry mirror URL for the daemon.
#   DOCKERD_START_TIMEOUT   seconds to wait for the daemon (default 30).
# The daemon's pid is in /tmp/dockerd.pid, its log in /tmp/dockerd.log
# (/tmp/dockerd-rootless.log when rootless).
set -eu

real=/usr/bin/docker.real
pidfile=/tmp/dockerd.pid
timeout="${DOCKERD_START_TIMEOUT:-30}"
uid="$(id -u)"
if [ "${uid}" = 0 ]; then
  log=/tmp/dockerd.log
else
  log=/tmp/dockerd-rootless.log
fi

answers() {
  "${real}" version >/dev/null 2>&1
}

mirror_args() {
  if [ -n "${DOCKER_REGISTRY_MIRROR:-}" ]; then
    case "${DOCKER_REGISTRY_MIRROR}" in
      http://*|https://*) printf '%s\n' "--registry-mirror=${DOCKER_REGISTRY_MIRROR}" ;;
      *) echo "docker: DOCKER_REGISTRY_MIRROR must be an http(s) URL" >&2; exit 1 ;;
    esac
  fi
}

# True when $1 (which exists) is on the file system mounted at /: the container's own
# writable layer, where dockerd's overlayfs cannot stack and data dies with the container.
on_root_fs() {
  [ "$(stat -c %d "$1")" = "$(stat -c %d /)" ]
}

start_rootful() {
  data_root="${DOCKER_DATA_ROOT:-/var/lib/docker}"
  mkdir -p "${data_root}"
  if on_root_fs "${data_root}"; then
    mount -t tmpfs -o mode=0711 tmpfs "${data_root}" \
      || { echo "docker: cannot mount a tmpfs at ${data_root}; run the container with --privileged or under Sysbox (runtimeClassName: sysbox-runc), or mount a volume there" >&2; exit 1; }
  fi
  # shellcheck disable=SC2046 # the mirror flag is one word or none
  # 9>&-: the daemon must not inherit the start lock, or later first calls wait forever.
  nohup dockerd --data-root="${data_root}" --pidfile="${pidfile}" $(mirror_args) >"${log}" 2>&1 9>&- &
}

# Rootless needs a name and subordinate IDs that the image assigned (root-owned
# /etc/passwd, /etc/subuid, /etc/subgid: files that setuid newuidmap trusts must not be
# writable by the user). A UID without them cannot be given any safely here.
check_identity() {
  name="$(id -un 2>/dev/null)" || {
    echo "docker: rootless Docker needs a UID with subordinate IDs and UID ${uid} has none; run as UID 1000 (runAsUser: 1000), or give the pod its own user namespace (hostUsers: false) with runAsUser: 1000" >&2
    exit 1
  }
  for file in /etc/subuid /etc/subgid; do
    grep -q -e "^${uid}:" -e "^${name}:" "${file}" || {
      echo "docker: rootless Docker needs subordinate IDs and ${name} (UID ${uid}) has no ${file} entry; run as UID 1000 (runAsUser: 1000), or add one in a derived image" >&2
      exit 1
    }
  done
}

start_rootless() {
  check_identity
  : >"${log}"
  runtime_dir="${XDG_RUNTIME_DIR:-/tmp/.docker/run}"
  data_root="${DOCKER_DATA_ROOT:-/tmp/.docker/data}"
  mkdir -p "${runtime_dir}" "${data_root}"
  chmod 0700 "${runtime_dir}"
  set --
  if ! { [ -c /dev/net/tun ] && [ -r /dev/net/tun ] && [ -w /dev/net/tun ]; }; then
    # slirp4netns needs /dev/net/tun, which the DinD guide's grants (SYS_ADMIN, NET_ADMIN,
    # seccomp unconfined) do not give. Share the pod's network instead: the daemon then
    # has no bridge, and containers run with --network host or none.
    echo "docker: no usable /dev/net/tun; rootless dockerd shares the pod network (no bridge)" >>"${log}"
    export DOCKERD_ROOTLESS_ROOTLESSKIT_NET=host DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER=none
    set -- --iptables=false --bridge=none
  fi
  if ! { [ -c /dev/fuse ] && [ -r /dev/fuse ] && [ -w /dev/fuse ]; } && on_root_fs "${data_root}"; then
    # fuse-overlayfs needs /dev/fuse, and overlayfs does not stack on the container's own
    # overlay: there only vfs (a full copy per layer) works. A volume gets overlay2.
    set -- "$@" --storage-driver=vfs
  fi
  # shellcheck disable=SC2046 # the mirror flag is one word or none
  XDG_RUNTIME_DIR="${runtime_dir}" nohup dockerd-rootless.sh --data-root="${data_root}" --pidfile="${pidfile}" "$@" $(mirror_args) >>"${log}" 2>&1 9>&- &
}

if ! answers; then
  mkdir -p /tmp/.docker
  exec 9>/tmp/.docker/start.lock
  flock -w "$((timeout + 10))" 9 \
    || { echo "docker: another first call has held /tmp/.docker/start.lock too long; see ${log}" >&2; exit 1; }
  if ! answers; then
    if [ "${uid}" = 0 ]; then
      start_rootful
      needs="it needs --privileged or the Sysbox runtime (runtimeClassName: sysbox-runc), or a volume at the data root and the DinD guide's capabilities"
    else
      start_rootless
      needs="it needs SYS_ADMIN, NET_ADMIN and seccomp unconfined"
    fi
    daemon=$!
    waited=0
    until answers; do
      if ! kill -0 "${daemon}" 2>/dev/null; then
        echo "docker: the daemon exited while starting (${needs}); see ${log}" >&2
        tail -n 5 "${log}" >&2 || true
        exit 1
      fi
      if [ "${waited}" -ge "${timeout}" ]; then
        echo "docker: the daemon did not answer within ${timeout} s; see ${log}" >&2
        tail -n 20 "${log}" >&2 || true
        exit 1
      fi
      sleep 1
      waited=$((waited + 1))
    done
  fi
  exec 9>&-
fi
exec "${real}" "$@"
