# TextCraftor for Swift. Every target that builds first makes sure the system packages are there (scripts/setup-system:
# installs the missing ones as root with apt-get, else says which; silent when none is missing), then that libtorch is
# (scripts/bootstrap-libtorch: a download of the pinned wheels on first use, ~10 s; then ~20 ms).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
export PKG_CONFIG_PATH := $(CURDIR)/.build/pkgconfig$(if $(PKG_CONFIG_PATH),:$(PKG_CONFIG_PATH))

# The rpath to libtorch is also set by Package.swift; passing it here too keeps binaries right when SwiftPM reuses a
# manifest it evaluated before the bootstrap ran.
RPATH = -Xlinker -rpath -Xlinker "$$(scripts/bootstrap-libtorch --print-libdir)"
BIN := .build/release/textcraftor
PYTHON ?= python3

.PHONY: all system build test demo bench doctor release fixtures clean

all: build

## make system: the system packages the build needs (build, release, test and demo run it first).
system:
	@scripts/setup-system

build: system
	swift build $(RPATH)

release: system
	swift build -c release --product textcraftor $(RPATH)

## make test: build and run every test (Swift Testing), no Python needed.
## On failure the failing tests' lines are printed again at the end, where a log's tail shows them.
test: system
	@mkdir -p .build
	swift test $(RPATH) 2>&1 | tee .build/test.log || { \
	  echo "== failed tests (full log: .build/test.log) =="; \
	  grep -a -E '✘|Fatal error|error:' .build/test.log | cut -c1-600 | head -60; exit 1; }

## make demo: the main job on the embedded default: TextCraftor on ShapesWorld's bundled tiny Stable Diffusion
## (baseline, fine-tuning, report in demo/). A few minutes on 2 CPU cores.
demo: system release
	$(BIN) demo --out demo

## make bench: engine, Stable Diffusion and tokenizer benchmarks, side by side with Python torch / diffusers /
## transformers when $(PYTHON) can import them.
bench: release
	$(BIN) bench ops --python "$(PYTHON)"
	$(BIN) bench generate --python "$(PYTHON)"
	$(BIN) bench train --python "$(PYTHON)"
	$(BIN) bench tokenize --python "$(PYTHON)"

doctor: release
	$(BIN) doctor

## make fixtures: regenerate the parity fixtures (needs torch==2.11.0 and safetensors in $(PYTHON)).
fixtures:
	for script in scripts/parity/make_*.py; do "$(PYTHON)" "$$script"; done

clean:
	swift package clean
