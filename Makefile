# relay46 build and test entry points. `make test` is the README's test
# command and what CI runs.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
# The one build command: the Dockerfile's builder stage and `make release`
# use it too, so what CI builds is what ships.
BUILD    := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)"
FUZZTIME ?= 10s

.PHONY: build test vet unit fuzz-short demo clean

build:
	$(BUILD) -o relay46 ./cmd/relay46

test: vet unit fuzz-short

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -count=1 -timeout 12m ./...

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
