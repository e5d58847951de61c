# hearth — build, test and run everything from the repository.
SHELL := /bin/bash
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
GO ?= go
BIN := bin
LDFLAGS_APP := -X github.com/hearth-project/hearth/internal/app.Version=$(VERSION)
LDFLAGS_AGENT := -X main.version=$(VERSION)

.PHONY: all build hearth agent image up test test-unit test-integration vet bench clean

all: build

build: hearth agent

hearth:
	$(GO) build -trimpath -ldflags "$(LDFLAGS_APP)" -o $(BIN)/hearth ./cmd/hearth

# The in-guest agent: static, no cgo.
agent:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS_AGENT)" -o $(BIN)/hearth-agent ./cmd/hearth-agent

# The minimal guest image (kernel + busybox initramfs + small ext4 root with the agent).
image: build
	$(BIN)/hearth image build --profile minimal --agent $(BIN)/hearth-agent

# Set up this host, build everything, start hearth and boot a VM to ready.
up:
	./scripts/up.sh

vet:
	$(GO) vet ./...

# Every test: unit tests, then (as root) integration tests with real QEMU guests.
test: vet
	./scripts/test.sh

test-unit:
	$(GO) test -race -short ./...

bench:
	./bench/run.sh

clean:
	rm -rf $(BIN)
