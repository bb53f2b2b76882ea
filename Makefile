# The two commands of the README: `make up` and `make test`. Everything they need is
# installed here, into .venv (Python, by uv from uv.lock) and build/ (buf, by npm).
SHELL := /bin/bash
UV_VERSION := 0.13.9
BUF_VERSION := 1.75.0
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
BUF := build/tools/node_modules/.bin/buf
GRPCURL_VERSION := v1.9.3
GRPCURL := build/tools/bin/grpcurl
GHZ_VERSION := v0.120.0
GHZ := build/tools/bin/ghz
GNOSTIC_VERSION := v0.7.1
PROTOC_GEN_OPENAPI := build/tools/bin/protoc-gen-openapi
PORT ?= 8080

.PHONY: up up-cluster test venv gen openapi protodeps lint-protos bench-automl bench-fanout \
	bench-serving bench-load clean

up: venv
	$(UV) run nbml up --port $(PORT)

# The same mesh on Kafka, Cassandra and a GCS emulator, installed into the user cache.
up-cluster: venv
	$(UV) run nbml up --stack local-cluster --port $(PORT)

test: venv lint-protos $(GRPCURL) $(PROTOC_GEN_OPENAPI)
	PATH=$(CURDIR)/build/tools/bin:$$PATH $(UV) run pytest -q

venv: $(UV)
	$(UV) sync --frozen --extra cluster

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install -q uv==$(UV_VERSION)

# Regenerates from protos/ the Python gRPC code in clients/python/src/nbml/v1, then the
# OpenAPI description (which reads that code).
gen: venv protodeps $(BUF) $(PROTOC_GEN_OPENAPI)
	$(UV) run python tools/gen_protos.py
	$(UV) run python tools/gen_openapi.py

# docs/api/openapi.yaml: the REST surface Envoy transcodes, described for OpenAPI tools.
openapi: venv protodeps $(BUF) $(PROTOC_GEN_OPENAPI)
	$(UV) run python tools/gen_openapi.py

# grpcurl is what users reach for; the e2e tests drive it through Envoy's reflection.
$(GRPCURL):
	GOBIN=$(CURDIR)/build/tools/bin go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

# gnostic's protoc plugin, run by buf (buf.gen.yaml) for `make openapi`.
$(PROTOC_GEN_OPENAPI):
	GOBIN=$(CURDIR)/build/tools/bin go install github.com/google/gnostic/cmd/protoc-gen-openapi@$(GNOSTIC_VERSION)

$(BUF):
	npm install --silent --no-audit --no-fund --prefix build/tools @bufbuild/buf@$(BUF_VERSION)

# buf's registry is not reachable everywhere, so googleapis' annotations come from the
# googleapis-common-protos wheel already in the venv.
protodeps: venv
	mkdir -p build/protodeps/google/api
	src=$$($(UV) run --frozen python -c 'import google.api; print(list(google.api.__path__)[0])') && \
	  for f in annotations http httpbody field_behavior; do cp "$$src/$$f.proto" build/protodeps/google/api/; done

lint-protos: protodeps $(BUF)
	$(BUF) lint

# The platform's AutoML beside FLAML, H2O AutoML and a default HistGradientBoosting, on
# one split and budget each (BENCH_ARGS="--budgets 10 --datasets iris,wine" for a subset).
# Run it on an idle machine: every run records the load average.
bench-automl: $(UV)
	$(UV) sync --frozen --extra cluster --group bench
	$(UV) run --frozen --group bench python -m tools.bench.automl $(BENCH_ARGS)

# Trials per second of one job with 1 and with 2 workers (the trial fan-out), on the
# local cluster (Kafka, Cassandra, GCS emulator: Java, Maven and Go, like make test).
# About 5 minutes; BENCH_FANOUT_ARGS="--dataset housing --budget 60 --inline --repeats 2".
bench-fanout: venv
	$(UV) run python -m tools.bench.fanout $(BENCH_FANOUT_ARGS)

# The predictor against `mlflow models serve` on the same three fitted models, under
# native load (wrk from Debian's package, ghz from the Go module proxy); ~10 minutes.
# BENCH_SERVING_ARGS="--seconds 5 --models logistic_regression" for a quick look.
bench-serving: venv protodeps $(GHZ) /usr/bin/wrk
	$(UV) sync --frozen --extra cluster --group serving-bench
	$(UV) run --frozen --group serving-bench python -m tools.bench.serving $(BENCH_SERVING_ARGS)

# The mixed Locust scenario (loadtest/) for BENCH_LOAD_ARGS (--users, --seconds).
bench-load: venv
	$(UV) run python -m tools.bench.load $(BENCH_LOAD_ARGS)

$(GHZ):
	GOBIN=$(CURDIR)/build/tools/bin go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

/usr/bin/wrk:
	apt-get install -y -q wrk || sudo apt-get install -y -q wrk

clean:
	rm -rf .venv .tools build
