# Two entry points do all set-up on a fresh Debian host (as root):
#   make run   install what is missing, then run the daemon with the shipped default policy
#   make test  install what is missing, then check types (mypy --strict) and run the whole test
#              suite (unit + integration)
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
INSTALL_STAMP := $(VENV)/.installed

.PHONY: setup compiled run demo test typecheck unit integration bench doctor install uninstall clean

$(INSTALL_STAMP): scripts/install.sh pyproject.toml tests/oidc/package.json
	bash scripts/install.sh
	touch $@

setup: $(INSTALL_STAMP)

# The hot modules compiled with Cython in place (listed in interceptor/compiled.py): only those
# whose source changed are rebuilt, and `import interceptor` refuses a binary older than its source.
compiled: setup
	$(PY) scripts/compile_hot.py

# The daemon in the foreground with the shipped default policy, beside a local PostgreSQL with
# sample data and a development OpenID issuer standing in for Okta (scripts/demo/env.py).
run: setup compiled
	$(VENV)/bin/interceptor run --policy "$$($(PY) scripts/demo/env.py up)"

# The README's story, non-interactively; cleans up after itself.
demo: setup compiled
	$(PY) scripts/demo/story.py

# The types first (mypy --strict, configured in pyproject.toml): a type error fails the run.
test: setup typecheck compiled
	$(PY) -m pytest -ra tests

typecheck: setup
	$(VENV)/bin/mypy

unit: setup compiled
	$(PY) -m pytest -ra tests/unit

integration: setup compiled
	$(PY) -m pytest -ra tests/integration

bench: setup compiled
	$(PY) -m bench

doctor: setup compiled
	$(VENV)/bin/interceptor doctor

# As a system service: /opt/interceptor, /etc/interceptor, /var/lib/interceptor, systemd unit.
install:
	bash scripts/service.sh install

# Removes the service, every BPF program and iptables rule (settings and state stay; see --purge).
uninstall:
	bash scripts/service.sh uninstall

clean:
	rm -rf $(VENV) tests/oidc/node_modules interceptor/_build interceptor/compiled.json
