# device-agent: everything a fresh Debian machine needs, as root or with sudo.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := python3-venv python3-dev gcc libasound2-dev alsa-utils mosquitto mosquitto-clients \
	chromium systemd openssl ca-certificates iproute2
LISTEN ?= 127.0.0.1:8080
PYTEST_ARGS ?=
MINUTES ?= 10

.PHONY: setup demo test bench fuzz clean

$(VENV)/.setup-done: pyproject.toml Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages:" $$missing; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fleet]'
	@touch $@

setup: $(VENV)/.setup-done

demo: setup
	$(VENV)/bin/device-agent demo --listen $(LISTEN)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python -m benchmarks

fuzz: setup
	$(PY) -m benchmarks.fuzz --minutes $(MINUTES)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
