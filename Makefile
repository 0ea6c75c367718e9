# tetras-back — build, install, test.
#
#   make                 build the release binary
#   sudo make install    install packages it needs, build, install, start the service
#   make uninstall       remove what install put there (config and state are kept)
#   make test            install what the tests need, run every test (as root for the disk tests)
#   make lint            check-deps, cargo fmt --check, clippy (warnings as errors), shellcheck
#   make check-deps      every program the tests, scripts, demo and bench call is installed by a *_DEPS list
#   make deb             build target/tetras-back_<version>_<arch>.deb (then: sudo dpkg -i ...)
#   make bench           the engines against cp, rsync, tar+gzip and rm on a generated tree
#   sudo make demo       a tour: a disk image is saved, plugged in and backed up, events shown live
#
# DESTDIR and PREFIX are honoured; unit and udev directories come from pkg-config.
# PROFILE=dev installs the debug build (the install test uses it).

PREFIX      ?= /usr/local
SBINDIR     ?= $(PREFIX)/sbin
SYSCONFDIR  ?= /etc
SCRIPTSDIR  ?= $(PREFIX)/lib/tetras-back
MANDIR      ?= $(PREFIX)/share/man
UNITDIR     ?= $(or $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null),/lib/systemd/system)
UDEVDIR     ?= $(or $(shell pkg-config --variable=udevdir udev 2>/dev/null),/lib/udev)
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
# Debian's zsh looks in vendor-completions under /usr, site-functions under /usr/local.
ZSHCOMPDIR  ?= $(if $(filter /usr,$(PREFIX)),/usr/share/zsh/vendor-completions,$(PREFIX)/share/zsh/site-functions)
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
DESTDIR     ?=
PROFILE     ?= release

# Packages needed to build, and in addition to test (Debian names).
BUILD_DEPS  := pkg-config libudev-dev gcc
DEB_DEPS    := $(BUILD_DEPS) dpkg-dev binutils gzip git
# What the installed program runs: ssh and rsync pull the other hosts.
RUN_DEPS    := openssh-client rsync
# The service tests boot a Debian with systemd as PID 1 (../shared/tools/systemd-box).
# Every program the tests, scripts, demo and bench call must come from these
# lists or from an Essential/required package: `make check-deps` checks it.
TEST_DEPS   := $(BUILD_DEPS) $(DEB_DEPS) udev e2fsprogs mount util-linux tar gzip borgbackup time \
               python3-minimal python3-aiosmtpd python3-prometheus-client systemd make openssl \
               systemd-container mmdebstrap lintian rsync procps openssh-client openssh-server pv \
               chromium chromium-driver btrfs-progs curl apache2-utils cryptsetup-bin
LINT_DEPS   := $(BUILD_DEPS) shellcheck python3-minimal
BENCH_DEPS  := $(BUILD_DEPS) rsync python3-minimal python3 tar gzip coreutils time openssh-client openssh-server

# make bench: where the generated tree and the copies go, and runs per figure.
BENCH_DIR   ?= target/bench
BENCH_RUNS  ?= 3

# cargo is usually in the invoking user's ~/.cargo/bin, which sudo drops from PATH.
CARGO ?= $(shell command -v cargo 2>/dev/null || \
	for h in "$$HOME" "$$(getent passwd "$${SUDO_USER:-root}" | cut -d: -f6)"; do \
	  [ -x "$$h/.cargo/bin/cargo" ] && echo "$$h/.cargo/bin/cargo" && break; done)

# Where cargo builds. The tests stage installs from a target directory of
# their own, so that a build without the test feature never replaces the
# binary under test.
CARGO_TARGET_DIR ?= target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))/tetras-back

VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null)
DEB      := target/tetras-back_$(VERSION)_$(DEB_ARCH).deb

.PHONY: all build deps test-deps check-deps install uninstall test lint bench demo deb check-cargo

all: build

check-cargo:
	@if [ -z "$(CARGO)" ]; then \
	  echo "error: cargo not found. Install a Rust toolchain (https://rustup.rs) or set CARGO=/path/to/cargo." >&2; \
	  exit 1; fi

# Installs only the packages that are missing, and only then touches apt.
define apt_install
	@missing=""; for p in $(1); do dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then echo "error: missing packages:$$missing (run as root, or install them)" >&2; exit 1; fi; \
	  echo "Installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

deps:
	$(call apt_install,$(BUILD_DEPS) $(RUN_DEPS))

test-deps:
	$(call apt_install,$(TEST_DEPS))

build: check-cargo
	$(CARGO) build --locked --profile $(PROFILE)

install: deps build
	install -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/tetras-back
	install -d -m 0755 $(DESTDIR)$(SCRIPTSDIR)
	install -m 0755 scripts/backup_*.sh $(DESTDIR)$(SCRIPTSDIR)/
	install -m 0644 scripts/tetras-back-common.sh $(DESTDIR)$(SCRIPTSDIR)/
	@for u in tetras-back.service tetras-back-web.service; do \
	  sed 's|@SBINDIR@|$(SBINDIR)|g' units/$$u > units/.$$u.tmp && \
	  install -D -m 0644 units/.$$u.tmp $(DESTDIR)$(UNITDIR)/$$u && rm -f units/.$$u.tmp || exit 1; \
	done
	install -D -m 0644 rules/61-tetras-back.rules $(DESTDIR)$(UDEVDIR)/rules.d/61-tetras-back.rules
	@# Man pages and completions come from the CLI's own description.
	$(BIN) generate man $(DESTDIR)$(MANDIR)/man8
	chmod 0644 $(DESTDIR)$(MANDIR)/man8/tetras-back*.8
	install -d -m 0755 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	$(BIN) generate bash > $(DESTDIR)$(BASHCOMPDIR)/tetras-back
	$(BIN) generate zsh > $(DESTDIR)$(ZSHCOMPDIR)/_tetras-back
	$(BIN) generate fish > $(DESTDIR)$(FISHCOMPDIR)/tetras-back.fish
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/tetras-back
	@# An administrator's edited configuration is never overwritten.
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/tetras-back/tetras-back.toml ]; then \
	  echo "Keeping existing $(DESTDIR)$(SYSCONFDIR)/tetras-back/tetras-back.toml"; \
	else \
	  sed 's|^scripts_dir = .*|scripts_dir = "$(SCRIPTSDIR)"|' conf/tetras-back.toml > conf/.tetras-back.toml.tmp && \
	  install -m 0644 conf/.tetras-back.toml.tmp $(DESTDIR)$(SYSCONFDIR)/tetras-back/tetras-back.toml; \
	  rm -f conf/.tetras-back.toml.tmp; \
	fi
	@if [ -n "$(DESTDIR)" ]; then \
	  echo "Installed into $(DESTDIR); not starting the service."; \
	elif [ -d /run/systemd/system ]; then \
	  udevadm control --reload || true; \
	  systemctl daemon-reload && systemctl enable --now tetras-back.service tetras-back-web.service && \
	  echo "tetras-back.service and tetras-back-web.service are enabled and running."; \
	  echo "Create a web console user with: $(SBINDIR)/tetras-back web-passwd NAME"; \
	else \
	  udevadm control --reload 2>/dev/null || true; \
	  echo "systemd is not running as PID 1 here: the service was installed but not started."; \
	  echo "Start the daemon by hand with: $(SBINDIR)/tetras-back daemon"; \
	  echo "and the web console with: $(SBINDIR)/tetras-back web"; \
	fi

uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	  systemctl disable --now tetras-back-web.service tetras-back.service || true; fi
	rm -f $(DESTDIR)$(SBINDIR)/tetras-back
	rm -f $(DESTDIR)$(UNITDIR)/tetras-back.service $(DESTDIR)$(UNITDIR)/tetras-back-web.service
	rm -f $(DESTDIR)$(UDEVDIR)/rules.d/61-tetras-back.rules
	rm -f $(DESTDIR)$(MANDIR)/man8/tetras-back.8 $(DESTDIR)$(MANDIR)/man8/tetras-back-*.8
	rm -f $(DESTDIR)$(BASHCOMPDIR)/tetras-back $(DESTDIR)$(ZSHCOMPDIR)/_tetras-back \
	  $(DESTDIR)$(FISHCOMPDIR)/tetras-back.fish
	@for s in $$(ls scripts 2>/dev/null); do rm -f $(DESTDIR)$(SCRIPTSDIR)/$$s; done
	-rmdir $(DESTDIR)$(SCRIPTSDIR) 2>/dev/null
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "Kept $(SYSCONFDIR)/tetras-back (configuration) and the state directory."

# The package is staged by `make install` with Debian's layout, then wrapped
# by deb/build (conffiles, maintainer scripts, copyright, changelog).
deb: check-cargo
	$(call apt_install,$(DEB_DEPS))
	rm -rf target/deb-root
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/target/deb-root PREFIX=/usr \
	  UNITDIR=/lib/systemd/system UDEVDIR=/lib/udev PROFILE=$(PROFILE) >/dev/null
	deb/build $(CURDIR)/target/deb-root $(DEB) $(VERSION)
	rm -rf target/deb-root
	@echo "Built $(DEB); install it with: sudo dpkg -i $(DEB)"

# Fails, naming the program and the file that calls it, when a program that
# the tests, scripts, demo or bench call comes from no package listed above.
check-deps:
	$(call apt_install,python3-minimal)
	/usr/bin/python3 tests/check-deps "test=$(TEST_DEPS)" "bench=$(BENCH_DEPS)"

test: test-deps check-deps check-cargo
	@# The disk tests need real udev events: tests/with-udevd starts a udevd if none runs.
	@# --features failpoints compiles in the fault-injection points (tests/faults.rs);
	@# --show-output prints what passing tests measured (delays, the storm, the fault matrix).
	tests/with-udevd $(CARGO) test --locked --no-fail-fast --features failpoints -- --show-output

lint: check-cargo
	$(call apt_install,$(LINT_DEPS))
	@$(MAKE) --no-print-directory check-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked --all-targets --features failpoints -- -D warnings
	cd scripts && shellcheck -x *.sh

bench: build
	$(call apt_install,$(BENCH_DEPS))
	/usr/bin/python3 bench/bench.py $(BIN) $(BENCH_DIR) $(BENCH_RUNS)

demo: test-deps build
	BIN=$(CURDIR)/$(BIN) demo/run
