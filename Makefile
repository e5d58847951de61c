# hearth — build, test and run everything from the repository.
SHELL := /bin/bash
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
GO ?= go
BIN := bin
LDFLAGS_APP := -X github.com/hearth-project/hearth/internal/app.Version=$(VERSION)
LDFLAGS_AGENT := -X main.version=$(VERSION)

.PHONY: all build hearth agent web web-test image up test test-unit test-integration vet generate check-generated bench clean

all: build

build: hearth agent

hearth: web
	$(GO) build -trimpath -ldflags "$(LDFLAGS_APP)" -o $(BIN)/hearth ./cmd/hearth

# The in-guest agent: static, no cgo.
agent:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS_AGENT)" -o $(BIN)/hearth-agent ./cmd/hearth-agent

# The browser viewer's noVNC files, embedded into hearth by the web package.
# npm installs the pinned, integrity-checked package from web/package-lock.json
# (from the local cache when it has it); only noVNC's browser files and its
# licence are copied into web/dist/novnc. The version file is the stamp: it is
# rewritten only when package.json or the lock change, so a rebuild is instant.
# The npm cache is hearth's shared one (root, as for image builds), else the
# user's own.
NPM ?= npm
NPM_CACHE ?= $(shell if [ -w /var/cache/hearth/npm ] || [ "$$(id -u)" -eq 0 ]; then echo /var/cache/hearth/npm; else echo "$$HOME/.npm"; fi)
NOVNC_PKG := web/node_modules/@novnc/novnc
WEB_STAMP := web/dist/novnc.version

web: $(WEB_STAMP)

$(WEB_STAMP): web/package.json web/package-lock.json web/.npmrc
	cd web && $(NPM) ci --cache $(NPM_CACHE) --prefer-offline --no-audit --no-fund
	rm -rf web/dist/novnc $@
	mkdir -p web/dist/novnc/vendor
	cp -R $(NOVNC_PKG)/core web/dist/novnc/
	cp -R $(NOVNC_PKG)/vendor/pako web/dist/novnc/vendor/
	cp $(NOVNC_PKG)/LICENSE.txt $(NOVNC_PKG)/AUTHORS $(NOVNC_PKG)/docs/LICENSE.MPL-2.0 web/dist/novnc/
	test -f web/dist/novnc/core/rfb.js
	node -p 'JSON.parse(require("fs").readFileSync("$(NOVNC_PKG)/package.json")).version' > $@.tmp
	mv $@.tmp $@

# The viewer page's own logic (reconnect policy), with node's test runner.
web-test:
	node --test web/test/*.test.mjs

# The minimal guest image (kernel + busybox initramfs + small ext4 root with the agent).
image: build
	$(BIN)/hearth image build --local --profile minimal --agent $(BIN)/hearth-agent

# Set up this host, build everything, start hearth and boot a VM to ready.
up:
	./scripts/up.sh

# golangci-lint (errcheck, depguard: .golangci.yml), pinned by tools/go.mod,
# a module of its own so hearth's go.mod carries none of the linter's
# dependencies. Built into bin/ from the module cache; rebuilt when the pin
# changes.
GOLANGCI_LINT := $(BIN)/golangci-lint
$(GOLANGCI_LINT): tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $(CURDIR)/$(GOLANGCI_LINT) github.com/golangci/golangci-lint/v2/cmd/golangci-lint

# oapi-codegen, pinned by tools/go.mod like the linter, generates api/api.gen.go
# from api/openapi.yaml: the wire types, the client and the server interface.
OAPI_CODEGEN := $(BIN)/oapi-codegen
$(OAPI_CODEGEN): tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $(CURDIR)/$(OAPI_CODEGEN) github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen

generate: $(OAPI_CODEGEN)
	cd api && $(CURDIR)/$(OAPI_CODEGEN) -config oapi-codegen.yaml openapi.yaml

# The generated code must be what the document gives: regenerate into a
# scratch copy and compare.
check-generated: $(OAPI_CODEGEN)
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	  cp api/openapi.yaml api/oapi-codegen.yaml $$tmp/ && \
	  (cd $$tmp && $(CURDIR)/$(OAPI_CODEGEN) -config oapi-codegen.yaml openapi.yaml 2>/dev/null) && \
	  if ! cmp -s $$tmp/api.gen.go api/api.gen.go; then \
	    echo "api/api.gen.go differs from what api/openapi.yaml gives: run make generate" >&2; \
	    diff -u api/api.gen.go $$tmp/api.gen.go | head -40 >&2; exit 1; fi

vet: $(GOLANGCI_LINT) check-generated
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './web/node_modules/*')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted" >&2; exit 1; fi
	$(GOLANGCI_LINT) run ./...

# Every test: unit tests, then (as root) integration tests with real QEMU guests.
test: web vet web-test
	./scripts/test.sh

test-unit:
	$(GO) test -race -short ./...

bench:
	./bench/run.sh

clean:
	rm -rf $(BIN) web/dist/novnc $(WEB_STAMP)
