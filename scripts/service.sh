#!/usr/bin/env bash
# Install interceptor as a system service, or remove it (as root, from a clone of this repository):
#   scripts/service.sh install            /opt/interceptor (venv, bpf/, policy/), /etc/interceptor,
#                                          /var/lib/interceptor, /usr/local/bin/interceptor, the systemd unit
#   scripts/service.sh uninstall [--purge] stop the service, remove every BPF program and iptables rule,
#                                          the unit, /opt/interceptor and the symlink; --purge also deletes
#                                          /etc/interceptor and /var/lib/interceptor (settings, policy, AUDIT TRAIL)
# Settings and policy are written only when absent: a re-install never overwrites an edited file.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/interceptor
etc=/etc/interceptor
state=/var/lib/interceptor
link=/usr/local/bin/interceptor
unit=/etc/systemd/system/interceptor.service
completion=/etc/bash_completion.d/interceptor
say() { printf '[service] %s\n' "$*"; }
die() { printf '[service] ERROR: %s\n' "$*" >&2; exit 1; }

# systemd manages services only where it is PID 1 (the check sd_booted(3) makes).
systemd_running() { [[ -d /run/systemd/system ]]; }

install_service() {
  say "installing the package into $prefix/venv (a real copy, not linked to this checkout)"
  INTERCEPTOR_VENV=$prefix/venv INTERCEPTOR_EDITABLE=0 bash "$here/scripts/install.sh"
  # The BPF loader looks for its C source under /opt/interceptor/bpf (interceptor/redirect/bpf.py).
  for dir in bpf policy; do
    rm -rf "${prefix:?}/$dir"
    cp -r "$here/$dir" "$prefix/$dir"
  done

  install -d -m 0755 "$etc"
  if [[ -e $etc/interceptor.yaml ]]; then
    say "keeping existing $etc/interceptor.yaml"
  else
    install -m 0644 "$here/packaging/interceptor.yaml" "$etc/interceptor.yaml"
    say "wrote $etc/interceptor.yaml"
  fi
  if [[ -e $etc/policy.yaml ]]; then
    say "keeping existing $etc/policy.yaml"
  else
    install -m 0644 "$here/policy/default.yaml" "$etc/policy.yaml"
    say "wrote $etc/policy.yaml (the shipped default policy: edit it for your agents)"
  fi
  install -d -m 0700 "$state"
  ln -sfn "$prefix/venv/bin/interceptor" "$link"
  if [[ -d $(dirname "$completion") ]]; then
    "$link" completion bash >"$completion"
  fi
  "$link" --config "$etc/interceptor.yaml" policy check "$etc/policy.yaml" >/dev/null \
    || die "$etc/policy.yaml does not pass 'interceptor policy check': fix it before starting the service"

  install -m 0644 "$here/packaging/interceptor.service" "$unit"
  if systemd_running; then
    systemctl daemon-reload
    systemctl enable interceptor.service
    say "enabled interceptor.service: start it with 'systemctl start interceptor'"
  else
    say "systemd is not PID 1 here (PID 1 is $(cat /proc/1/comm)): $unit installed but not enabled;" \
        "run the daemon with '$link run' or use a systemd host"
  fi
  say "installed $("$link" --version)"
}

uninstall_service() {
  local purge=$1
  if systemd_running && [[ -e $unit ]]; then
    systemctl disable --now interceptor.service
  fi
  # Hooks outlive the daemon on purpose; only `interceptor uninstall` removes them, and it
  # refuses while a daemon still runs (stop it first, then run this again).
  local cli=$prefix/venv/bin/interceptor
  [[ -x $cli ]] || cli=$here/.venv/bin/interceptor
  if [[ -x $cli ]]; then
    "$cli" uninstall
  else
    say "no interceptor installed to remove BPF programs and iptables rules with; skipping that step"
  fi
  rm -f "$unit"
  if systemd_running; then
    systemctl daemon-reload
  fi
  rm -rf "${prefix:?}"
  if [[ -L $link ]]; then
    rm -f "$link"
  fi
  rm -f "$completion"
  if [[ $purge == 1 ]]; then
    rm -rf "${etc:?}" "${state:?}"
    say "purged $etc and $state (settings, policy, audit trail)"
  else
    say "kept $etc and $state (settings, policy, audit trail); remove them with --purge"
  fi
  say "uninstalled"
}

[[ $(id -u) == 0 ]] || die "run as root (sudo $0 $*)"
case "${1:-}" in
  install)
    [[ $# == 1 ]] || die "usage: $0 install"
    install_service
    ;;
  uninstall)
    case "${2:-}" in
      "") uninstall_service 0 ;;
      --purge) uninstall_service 1 ;;
      *) die "usage: $0 uninstall [--purge]" ;;
    esac
    ;;
  *) die "usage: $0 install | uninstall [--purge]" ;;
esac
