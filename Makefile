# Two entry points do all set-up on a fresh Debian host (as root):
#   make run   install what is missing, then run the daemon with the shipped default policy
#   make test  install what is missing, then run the whole test suite (unit + integration)
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
INSTALL_STAMP := $(VENV)/.installed

.PHONY: setup run test unit integration bench doctor uninstall clean

$(INSTALL_STAMP): scripts/install.sh pyproject.toml tests/oidc/package.json
	bash scripts/install.sh
	touch $@

setup: $(INSTALL_STAMP)

run: setup
	$(VENV)/bin/interceptor run

test: setup
	$(PY) -m pytest -ra tests

unit: setup
	$(PY) -m pytest -ra tests/unit

integration: setup
	$(PY) -m pytest -ra tests/integration

bench: setup
	$(PY) -m bench

doctor: setup
	$(VENV)/bin/interceptor doctor

uninstall: setup
	$(VENV)/bin/interceptor uninstall

clean:
	rm -rf $(VENV) tests/oidc/node_modules
