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

# The browser pages' vendored files, embedded into hearth by the web package:
# noVNC for the viewer, xterm.js and its fit addon for the terminal. npm
# installs the pinned, integrity-checked packages from web/package-lock.json
# (from the local cache when it has it); only their browser files and licences
# are copied into web/dist/novnc and web/dist/xterm. The version files are the
# stamps: rewritten only when package.json or the lock change, so a rebuild is
# instant. The npm cache is hearth's shared one (root, as for image builds),
# else the user's own.
NPM ?= npm
NPM_CACHE ?= $(shell if [ -w /var/cache/hearth/npm ] || [ "$$(id -u)" -eq 0 ]; then echo /var/cache/hearth/npm; else echo "$$HOME/.npm"; fi)
NOVNC_PKG := web/node_modules/@novnc/novnc
XTERM_PKG := web/node_modules/@xterm/xterm
XTERM_FIT_PKG := web/node_modules/@xterm/addon-fit
WEB_STAMP := web/dist/novnc.version
XTERM_STAMP := web/dist/xterm.version
WEB_NPM_STAMP := web/node_modules/.package-lock.json

web: $(WEB_STAMP) $(XTERM_STAMP)

$(WEB_NPM_STAMP): web/package.json web/package-lock.json web/.npmrc
	cd web && $(NPM) ci --cache $(NPM_CACHE) --prefer-offline --no-audit --no-fund
	touch $@

$(WEB_STAMP): $(WEB_NPM_STAMP)
	rm -rf web/dist/novnc $@
	mkdir -p web/dist/novnc/vendor
	cp -R $(NOVNC_PKG)/core web/dist/novnc/
	cp -R $(NOVNC_PKG)/vendor/pako web/dist/novnc/vendor/
	cp $(NOVNC_PKG)/LICENSE.txt $(NOVNC_PKG)/AUTHORS $(NOVNC_PKG)/docs/LICENSE.MPL-2.0 web/dist/novnc/
	test -f web/dist/novnc/core/rfb.js
	node -p 'JSON.parse(require("fs").readFileSync("$(NOVNC_PKG)/package.json")).version' > $@.tmp
	mv $@.tmp $@

# xterm.js's ES modules without their source-map comments (the maps are not
# shipped), its stylesheet, and both licences.
$(XTERM_STAMP): $(WEB_NPM_STAMP)
	rm -rf web/dist/xterm $@
	mkdir -p web/dist/xterm
	sed '/^\/\/# sourceMappingURL=/d' $(XTERM_PKG)/lib/xterm.mjs > web/dist/xterm/xterm.mjs
	sed '/^\/\/# sourceMappingURL=/d' $(XTERM_FIT_PKG)/lib/addon-fit.mjs > web/dist/xterm/addon-fit.mjs
	cp $(XTERM_PKG)/css/xterm.css web/dist/xterm/
	cp $(XTERM_PKG)/LICENSE web/dist/xterm/LICENSE.xterm
	cp $(XTERM_FIT_PKG)/LICENSE web/dist/xterm/LICENSE.addon-fit
	node -p 'const v = (p) => JSON.parse(require("fs").readFileSync(p + "/package.json")).version; v("$(XTERM_PKG)") + " " + v("$(XTERM_FIT_PKG)")' > $@.tmp
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
