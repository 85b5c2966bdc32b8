# Everything a fresh Debian 12 machine needs is installed here, idempotently.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
LAB_GUEST := $(VENV)/lab-guest/initramfs.cpio.gz

# frr: the EVPN lab's VTEPs; systemd: systemd-analyze checks the unit; the cloud kernel, busybox,
# cpio, kmod and libc6-dev: the lab's tiny guest (packaging/lab-guest).
DEB_PACKAGES := libvirt-dev pkg-config gcc iproute2 tcpdump nftables ethtool procps \
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils \
	openvswitch-switch frr systemd \
	linux-image-cloud-amd64 busybox-static cpio kmod libc6-dev

.PHONY: setup test test-fast bench demo clean distclean

setup: $(STAMP) $(LAB_GUEST)

$(STAMP): pyproject.toml Makefile
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@id -u libvirt-qemu >/dev/null 2>&1 || useradd --system --user-group --no-create-home libvirt-qemu
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "libvirt-python==$$(pkg-config --modversion libvirt)"
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# The lab's tiny guest (rarp_announce/lab/tinyguest.py): Debian's cloud kernel, and an initramfs
# of busybox, the virtio modules and a static frame tally, next to the venv.
$(LAB_GUEST): $(STAMP) packaging/lab-guest/build-initramfs.sh packaging/lab-guest/init packaging/lab-guest/tally.c
	sh packaging/lab-guest/build-initramfs.sh $(VENV)/lab-guest

# libvirt takes one event-loop implementation per process: the daemon's tests register
# libvirtaio's, the lab's observer libvirt's default one, so the lab runs in a pytest of its own.
test: setup
	@$(PY) -m mypy; types=$$?; \
	$(PY) -m pytest -q -m 'not lab'; unit=$$?; \
	$(PY) -m pytest -q -m lab; lab=$$?; \
	echo "make test: type check exit $$types, unit and integration suite exit $$unit, lab suite exit $$lab"; \
	[ $$types -eq 0 ] && [ $$unit -eq 0 ] && [ $$lab -eq 0 ]

test-fast: setup
	$(PY) -m mypy
	$(PY) -m pytest -q -m 'not lab'

bench: setup
	$(PY) -m benchmarks $(BENCH)

demo: setup
	$(VENV)/bin/rarp-announce lab demo --migrations 3

clean:
	rm -rf .pytest_cache build *.egg-info benchmarks/results

distclean: clean
	rm -rf $(VENV)
