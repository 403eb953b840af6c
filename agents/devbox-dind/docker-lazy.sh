#!/bin/sh
# `docker`, lazily: the first call starts the daemon, every call then runs the real client.
# As root it starts dockerd; as any other UID, rootless dockerd (devbox-dind-rootless).
#
# Knobs (environment):
#   DOCKER_DATA_ROOT        daemon data; as root a tmpfs is mounted there unless something
#                           already is (a PVC). Default /var/lib/docker, rootless /tmp/.docker/data.
#   DOCKER_REGISTRY_MIRROR  a registry mirror URL for the daemon.
#   DOCKERD_START_TIMEOUT   seconds to wait for the daemon (default 30).
set -eu

real=/usr/bin/docker.real
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

start_rootful() {
  data_root="${DOCKER_DATA_ROOT:-/var/lib/docker}"
  mkdir -p "${data_root}"
  if ! mountpoint -q "${data_root}"; then
    mount -t tmpfs -o mode=0711 tmpfs "${data_root}" \
      || { echo "docker: cannot mount a tmpfs at ${data_root}; run the container with --privileged, or mount a volume there" >&2; exit 1; }
  fi
  # shellcheck disable=SC2046 # the mirror flag is one word or none
  # 9>&-: the daemon must not inherit the start lock, or later first calls wait forever.
  nohup dockerd --data-root="${data_root}" $(mirror_args) >"${log}" 2>&1 9>&- &
}

# An arbitrary UID (OpenShift) has neither a passwd entry nor subordinate IDs; the image
# makes those files writable by group 0 so the first call can add them.
ensure_identity() {
  if ! grep -q "^[^:]*:[^:]*:${uid}:" /etc/passwd; then
    printf 'agent-%s:x:%s:0:agent:/tmp:/bin/zsh\n' "${uid}" "${uid}" >>/etc/passwd \
      || { echo "docker: UID ${uid} has no /etc/passwd entry and cannot add one" >&2; exit 1; }
  fi
  name="$(id -un)"
  for file in /etc/subuid /etc/subgid; do
    if ! grep -q -e "^${uid}:" -e "^${name}:" "${file}"; then
      printf '%s:100000:65536\n' "${name}" >>"${file}" \
        || { echo "docker: UID ${uid} has no ${file} entry and cannot add one" >&2; exit 1; }
    fi
  done
}

start_rootless() {
  : >"${log}"
  ensure_identity
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
  # shellcheck disable=SC2046 # the mirror flag is one word or none
  XDG_RUNTIME_DIR="${runtime_dir}" nohup dockerd-rootless.sh --data-root="${data_root}" "$@" $(mirror_args) >>"${log}" 2>&1 9>&- &
}

if ! answers; then
  mkdir -p /tmp/.docker
  exec 9>/tmp/.docker/start.lock
  flock -w "$((timeout + 10))" 9 \
    || { echo "docker: another first call has held /tmp/.docker/start.lock too long; see ${log}" >&2; exit 1; }
  if ! answers; then
    if [ "${uid}" = 0 ]; then
      start_rootful
      needs="it needs --privileged, or a volume at the data root and the DinD guide's capabilities"
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
