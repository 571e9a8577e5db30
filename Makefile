# Set-up lives in two targets used by everything else:
#   system-deps        Debian packages for the integration tests (unbound, dig, openssl)
#   .venv/.installed   the virtualenv with the package and its test extras,
#                      rebuilt when pyproject.toml changes
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS ?=

.PHONY: test run system-deps venv clean

test: system-deps $(VENV)/.installed
	$(VENV)/bin/pytest -q

run: $(VENV)/.installed
	$(VENV)/bin/resolver $(ARGS)

venv: $(VENV)/.installed

# Debian's unbound package would start a recursive daemon (and unbound-anchor,
# which queries the root servers) on install; a policy-rc.d that exits 101 keeps
# any service from starting.  One already present (as in Docker images) is kept.
system-deps:
	@if { ! command -v unbound >/dev/null 2>&1 && [ ! -x /usr/sbin/unbound ]; } || \
	    ! command -v dig >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then \
		echo "installing unbound, bind9-dnsutils and openssl"; \
		made_policy=; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null && \
			$(SUDO) chmod +x /usr/sbin/policy-rc.d && made_policy=1; \
		fi; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q unbound bind9-dnsutils openssl; \
		rc=$$?; \
		[ -z "$$made_policy" ] || $(SUDO) rm -f /usr/sbin/policy-rc.d; \
		exit $$rc; \
	fi

$(VENV)/.installed: pyproject.toml
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
