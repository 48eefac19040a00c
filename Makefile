# Two commands on a fresh machine: `make build` (the default appliance) and `make test`.
# Both install what the host needs first: the Debian packages in host-packages.txt (each with
# the reason it is needed) and the Python packages in requirements.txt, into .venv.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
INVOKE := $(VENV)/bin/invoke
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
HOST_PACKAGES := $(shell sed -e 's/\#.*//' host-packages.txt | xargs)

.PHONY: build test check lint host-deps clean help

help:
	@echo "make build   build the default appliance (invoke build --format qcow2)"
	@echo "make test    run the whole test suite (builds and boots the Debian appliance)"
	@echo "make check   the quick loop: unit tests that neither build nor boot (under a minute)"
	@echo "make lint    ruff, and shellcheck on the shell laid into the image"
	@echo "make clean   remove build/ and dist/ (the download cache stays)"

# Debian packages: only the missing ones are installed, and the list says why each is needed.
host-deps:
	@if command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(HOST_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done | xargs); \
	  if [ -n "$$missing" ]; then \
	    echo "==> installing host packages (reasons in host-packages.txt): $$missing"; \
	    $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	  fi; \
	elif command -v dnf >/dev/null; then \
	  echo "==> dnf host: install the equivalents of host-packages.txt (golang, qemu-img, qemu-system-x86, ...)"; \
	else \
	  echo "error: neither apt-get nor dnf found; install the packages in host-packages.txt by hand" >&2; exit 1; \
	fi

$(VENV)/.installed: requirements.txt pyproject.toml
	@echo "==> Python packages into $(VENV) (requirements.txt), and the builder itself (pip install -e .)"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

build: host-deps $(VENV)/.installed
	$(INVOKE) build --format qcow2

# Property tests (Hypothesis) run 200 examples per property in `make check`, more here.
FUZZ_EXAMPLES ?= 1000

test: host-deps $(VENV)/.installed
	$(INVOKE) step-from-source --out build/step-from-source.yaml
	CA_TEST_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest

# The inner loop while editing: no image build, no VM, no daemon (tests/unit, not marked slow).
check: $(VENV)/.installed
	$(VENV)/bin/pytest -q -m "not slow" tests/unit

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	@# shell laid into the image as-is; the kickstart's %post templates are rendered and checked by tests/unit/test_kickstart.py
	shellcheck $$(grep -rlIE --exclude-dir=__pycache__ '^#!/(usr/)?bin/(env )?(ba)?sh' overlay kickstart image/bases)

clean: $(VENV)/.installed
	$(INVOKE) clean
