#!/usr/bin/env bash
# One install script for `make`, CI and the Vagrant VM: Debian packages, kernel headers for bcc,
# the npm OpenID provider used by tests and the demo, and a virtualenv that can import Debian's bcc.
# Idempotent: a second run installs nothing new.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${INTERCEPTOR_VENV:-$here/.venv}
# 1 (default): editable install with test tools, for working in this checkout.
# 0: a real copy without them (scripts/service.sh installs /opt this way: no link back here).
editable=${INTERCEPTOR_EDITABLE:-1}
say() { printf '[install] %s\n' "$*"; }

debian_packages=(
  python3 python3-venv python3-dev gcc python3-bpfcc libbpfcc bpfcc-tools
  linux-headers-amd64 iptables iproute2 conntrack
  postgresql postgresql-contrib pgbouncer haproxy tshark
  wrk
  curl ca-certificates procps psmisc
)
# Node.js with npm runs the local OpenID provider; a host that has it (e.g. from NodeSource,
# whose nodejs bundles npm and conflicts with Debian's npm) keeps its own.
command -v npm >/dev/null || debian_packages+=(nodejs npm)
# The SSH tests run Debian's sshd in a network namespace they create (with its own config and
# port); on a host that had no sshd, the package's own service is not needed and not enabled.
[[ $editable == 0 ]] || debian_packages+=(openssh-server openssh-client)

missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # tshark asks whether non-root users may capture; answer no without a prompt.
  echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

# bcc compiles BPF C at load time against kernel headers. This kernel may have no headers
# package of its own; then point /lib/modules/$(uname -r)/{build,source} at Debian's nearest
# headers. Our BPF code uses only uapi types and helpers, so a minor version skew is safe.
kver=$(uname -r)
moddir=/lib/modules/$kver
if [[ -e $moddir/build/include/generated/autoconf.h || -e $moddir/build/include/config/auto.conf ]]; then
  say "kernel headers for $kver found at $moddir/build"
else
  arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
  common_dir=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
  if [[ -z $arch_dir || -z $common_dir ]]; then
    echo "[install] ERROR: no kernel headers for $kver and no Debian linux-headers-amd64 to fall back on" >&2
    exit 1
  fi
  say "no headers package for kernel $kver; using Debian's $(basename "$arch_dir") (uapi-only BPF code, safe across versions)"
  mkdir -p "$moddir"
  ln -sfn "$arch_dir" "$moddir/build"
  ln -sfn "$common_dir" "$moddir/source"
fi

# A venv on Debian's python3 with system site-packages: bcc is only packaged for it.
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import bcc' 2>/dev/null; then
  say "creating virtualenv $venv (Debian python3, system site-packages for bcc)"
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
say "installing Python dependencies"
if [[ $editable == 0 ]]; then
  "$venv/bin/python" -m pip install -q "$here[compiled]"
else
  "$venv/bin/python" -m pip install -q -e "$here[test,bench,compiled]"
fi
# The hot modules compiled with Cython, in the package the venv imports (this checkout, or the
# installed copy): interceptor/compiled.py lists them; a failure to compile fails the install.
# -I: the package is found through the venv, never through the current directory.
package=$("$venv/bin/python" -I -c 'import importlib.util; print(importlib.util.find_spec("interceptor").submodule_search_locations[0])')
say "compiling the hot modules in $package"
"$venv/bin/python" "$here/scripts/compile_hot.py" --package "$package"
# Debian's kubectl 1.20 (kubernetes-client) for the Kubernetes tests. Its /usr/bin/kubectl
# clashes with other kubectl packages a host may have (Google Cloud SDK's), so it is unpacked
# into the development venv rather than installed; tests/kube_fixture.py looks for it there.
kubectl_dir=$venv/kubernetes-client
if [[ $editable != 0 && ! -x $kubectl_dir/usr/bin/kubectl ]]; then
  say "unpacking Debian's kubernetes-client into $kubectl_dir"
  deb_dir=$(mktemp -d)
  (cd "$deb_dir" && { apt-get download -qq kubernetes-client 2>/dev/null ||
                      { apt-get update -qq && apt-get download -qq kubernetes-client; }; })
  mkdir -p "$kubectl_dir"
  dpkg-deb -x "$deb_dir"/kubernetes-client_*.deb "$kubectl_dir"
  rm -rf "$deb_dir"
fi

sqlglot_version=$("$venv/bin/python" -c 'import sqlglot; print(sqlglot.__version__)')
if "$venv/bin/python" -m pip install -q "sqlglotc==$sqlglot_version" 2>/dev/null; then
  say "compiled sqlglot (sqlglotc) installed"
else
  say "sqlglotc not installable here; using pure-Python sqlglot"
fi

# The local OpenID provider (stands in for Okta in tests and the demo).
if [[ ! -d $here/tests/oidc/node_modules/oidc-provider ]]; then
  say "installing oidc-provider (npm)"
  (cd "$here/tests/oidc" && npm install --no-audit --no-fund --silent)
fi

say "done: $("$venv/bin/interceptor" --version 2>/dev/null || echo 'interceptor not importable')"
