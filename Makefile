# relay46 build and test entry points. `make test` is the README's test
# command and what CI runs.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
# The one build command: the Dockerfile's builder stage and `make release`
# use it too, so what CI builds is what ships.
BUILD    := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)"
FUZZTIME ?= 10s
# The soak's length: SOAK for `make soak`, SOAK_CI within `make test`.
SOAK     ?= 15m
SOAK_CI  ?= 2m
OUT      ?= relay46
DIST     ?= dist

.PHONY: build release test vet unit fuzz-short e2e soak demo clean

build:
	$(BUILD) -o $(OUT) ./cmd/relay46

# Static binaries for the hosts relay46 runs on (armv7: a Raspberry Pi with
# a 32-bit OS) and their checksums, each built with BUILD.
release:
	mkdir -p $(DIST)
	GOOS=linux GOARCH=amd64 $(BUILD) -o $(DIST)/relay46-linux-amd64 ./cmd/relay46
	GOOS=linux GOARCH=arm64 $(BUILD) -o $(DIST)/relay46-linux-arm64 ./cmd/relay46
	GOOS=linux GOARCH=arm GOARM=7 $(BUILD) -o $(DIST)/relay46-linux-armv7 ./cmd/relay46
	cd $(DIST) && sha256sum relay46-linux-amd64 relay46-linux-arm64 relay46-linux-armv7 >SHA256SUMS

test: vet unit fuzz-short e2e

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# Every package's tests but the end-to-end ones, which run alone below:
# the soak measures the relay's resources and wants the machine to itself.
unit:
	$(GO) test -count=1 -timeout 12m $$($(GO) list ./... | grep -v '/e2e$$')

# End to end, verbose so CI shows what they prove: the network-namespace
# topology (root; skipped where namespaces cannot be made) and a
# SOAK_CI-long soak with its summary table.
e2e:
	RELAY46_SOAK=$(SOAK_CI) $(GO) test -count=1 -v -timeout 10m ./e2e

# A longer soak on its own: make soak SOAK=1h
soak:
	RELAY46_SOAK=$(SOAK) $(GO) test -count=1 -v -timeout 0 -run '^TestSoak$$' ./e2e

# Each fuzz target briefly, on top of its seed corpus in testdata/fuzz.
fuzz-short:
	$(GO) test -run '^$$' -fuzz '^FuzzPeekHello$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzReadHead$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzRead$$' -fuzztime $(FUZZTIME) ./proxy/proxyproto
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./config

demo:
	$(GO) run ./cmd/relay46 demo

clean:
	rm -rf relay46 dist
