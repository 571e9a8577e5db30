# Set-up lives in two targets used by everything else:
#   system-deps        Debian packages the tests use (see SYSTEM_DEPS)
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

# command:package pairs the test suite needs: Unbound as a real upstream, dig as a
# real client, promtool for the metrics/alert checks, systemd-analyze, unshare,
# setpriv, getent and ip for the deployment tests; nft (nftables) for kernel-level
# faults (loss, blackhole, ICMP reject) inside a network namespace the tests create;
# NSD for the outage benchmark's tiny end-to-end run (tests/bench/test_outage_bench.py).
SYSTEM_DEPS := unbound:unbound unbound-control:unbound dig:bind9-dnsutils promtool:prometheus \
	systemd-analyze:systemd unshare:util-linux setpriv:util-linux getent:libc-bin ip:iproute2 openssl:openssl \
	nft:nftables nsd:nsd

# Debian's unbound and prometheus packages would start their daemons on install
# (unbound-anchor even queries the root servers); a policy-rc.d that exits 101
# keeps any service from starting.  One already present (as in Docker images) is kept.
system-deps:
	@missing=; \
	for pair in $(SYSTEM_DEPS); do \
		cmd=$${pair%%:*}; pkg=$${pair#*:}; \
		command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		made_policy=; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null && \
			$(SUDO) chmod +x /usr/sbin/policy-rc.d && made_policy=1; \
		fi; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
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
