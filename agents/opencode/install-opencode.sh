#!/bin/sh
# Init container entrypoint: installs /opencode into $TOOLS_DIR (default /tools), the
# volume the worker container shares. The copy is renamed into place, so a worker never
# sees a half-written binary.
set -eu
dir="${TOOLS_DIR:-/tools}"
name="${OPENCODE_BIN:-opencode}"
mkdir -p "${dir}"
tmp="${dir}/.${name}.$$"
cp /opencode "${tmp}"
chmod 0755 "${tmp}"
mv -f "${tmp}" "${dir}/${name}"
echo "[opencode-init] opencode $(cat /opencode.version) installed at ${dir}/${name}"
