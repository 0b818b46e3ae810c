#!/usr/bin/env bash
# Install smbdd as a systemd service on this machine (after ./dev.sh serve or
# deploy/install-deps.sh made /opt/smbdd/venv):
#   /etc/systemd/system/smbdd.service, smbdd-rxe@.service   (deploy/systemd)
#   /usr/local/lib/smbdd/rxe-link.sh                        (soft-RoCE helper of smbdd-rxe@)
#   /etc/logrotate.d/smbdd                                  (deploy/logrotate)
#   /etc/smbdd/smbdd.toml                                   (from deploy/smbdd.toml.example, if absent)
# Usage: deploy/install-service.sh [--destdir DIR]   (DIR: a staging root, nothing is started)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=""
if [[ ${1:-} == --destdir ]]; then dest=${2:?--destdir needs a directory}; fi
install -D -m 0644 "$here/systemd/smbdd.service" "$dest/etc/systemd/system/smbdd.service"
install -D -m 0644 "$here/systemd/smbdd-rxe@.service" "$dest/etc/systemd/system/smbdd-rxe@.service"
install -D -m 0755 "$here/rxe-link.sh" "$dest/usr/local/lib/smbdd/rxe-link.sh"
install -D -m 0644 "$here/logrotate/smbdd" "$dest/etc/logrotate.d/smbdd"
install -d -m 0755 "$dest/etc/smbdd" "$dest/var/log/smbdd"
if [[ ! -e $dest/etc/smbdd/smbdd.toml ]]; then
  install -m 0644 "$here/smbdd.toml.example" "$dest/etc/smbdd/smbdd.toml"
fi
if [[ -z $dest ]] && [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
fi
echo "installed; next: edit /etc/smbdd/smbdd.toml, smbdd user add NAME, systemctl enable --now smbdd"
