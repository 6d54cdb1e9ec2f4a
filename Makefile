# proxymodes: conformance and benchmark harness for Kubernetes Service proxy modes.
# Every target that needs the lab checks and installs what it needs first.

SHELL := /bin/bash
MODES := userspace iptables ipvs nftables
MODE ?= iptables
PROVIDER ?= local
# Empty: reference (our proxier), or kube-proxy on PROVIDER=existing.
IMPL ?=
CACHE ?= /var/cache/proxymodes
export PROXYMODES_CACHE := $(CACHE)
GO ?= go
# Each checkout builds its commands into a directory of its own (the Go
# side, harness/binaries.CheckoutKey, derives the same key from the same
# path), so that two checkouts running at once never swap each other's
# binaries.
BIN := $(CACHE)/bin/$(shell printf %s "$(CURDIR)" | sha256sum | cut -c1-12)
PROXYMODES := $(BIN)/proxymodes
TEST_TIMEOUT ?= 60m
# When make started: make test's step table counts its prerequisites from it.
MAKE_START := $(shell date +%s)

.PHONY: test-kube-proxy-ipvs help deps kind-deps kind-image kind-e2e existing-e2e k8s cli test unit conformance bench lab-up lab-down lab-status clean-lab check-mode report bench-micro bench-aa soak selftest

help: ## show this help
	@echo "usage: make <target> [MODE=$(subst $() ,|,$(MODES))] [PROVIDER=local|kind|existing] [IMPL=reference|kube-proxy]"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

cli: ## build the proxymodes CLI into $(BIN)
	@mkdir -p $(BIN)
	@$(GO) build -o $(PROXYMODES) ./harness/cmd/proxymodes

deps: cli ## check root, tools and kernel; apt-get install missing packages
	@$(PROXYMODES) preflight --install

kind-deps: cli ## like deps, plus what kind clusters need (Debian's docker.io, debootstrap, jq, gcc)
	@$(PROXYMODES) preflight --install --kind

kind-image: kind-deps ## build (once per machine; cold ~25 min) the offline kind node image and the base, proxier and echo images; print their tags
	@$(PROXYMODES) kind image --all

kind-e2e: kind-deps ## prove the offline node image end to end: one- and two-node kind clusters on the private docker daemon (PROXYMODES_KIND_E2E=1; ~3 min warm, plus the cold image build once)
	PROXYMODES_KIND_E2E=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v -run 'TestKind|TestProxierAndEchoImagesRun' ./harness/nodeimage

# EXISTING_RUN (a go test -run pattern over suites/conformance) narrows the
# suite run on the existing provider; empty runs all of it.
EXISTING_RUN ?=
existing-e2e: kind-deps ## prove PROVIDER=existing: a kind cluster with kube-proxy plays the user's cluster (~5 min warm) [EXISTING_RUN=<go test -run pattern>]
	PROXYMODES_EXISTING_E2E=1 PROXYMODES_EXISTING_RUN='$(EXISTING_RUN)' $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v -run TestOnKind ./harness/cluster/existing

k8s: ## build the pinned Kubernetes binaries into $(CACHE) (once; ~9 min cold)
	@clusters/k8s/build.sh controlplane kube-proxy >/dev/null

# The steps of make test after go vet and the self-test build, by token.
# TEST_LANES=3 (the default) runs three lanes side by side, each in order:
# lane 1 holds the host-namespace lab (go test, the bench smoke, the
# iptables self-test, nftables for both implementations, kube-proxy
# iptables), lane 2 the UML guests, lane 3 the private docker
# daemon (its package's tests, then kind: a cold machine builds the node
# image there, ~25 min, so it starts at once); the self-tests and the other
# lanes' conformance runs use isolated labs. The docker tests are a step of
# lane 3, not of go test: one daemon runs at a time (docker.LockPath), so in
# lane 1 they waited 29 min for kind and existing to finish (2026-12-06). Each
# step's output goes to TEST_LOGS/lane<n>-<i>-<step>.log. TEST_LANES=1 runs
# TEST_STEPS one after another: the same steps, about twice as long.
# A self-test step (selftest:<mode>) runs each broken build of the
# reference proxier and then the shipped one over the whole suite, so it is
# also that mode's conformance run for IMPL=reference. The host modes that
# issue 13 names (userspace, iptables) self-test here; nftables's self-test
# is the nightly workflow's, and its conformance run is here.
# The existing provider shares harness/cluster/kube with kind, which runs
# the whole suite: PROVIDER=existing runs the features whose paths differ
# there (exec probes under load, skipped restarts, the stale-UDP check
# without the sysctl, rule dumps through exec).
TEST_STEPS := unit smoke selftest:iptables selftest:userspace conf:nftables/reference conf:nftables/kube-proxy conf:iptables/kube-proxy conf:ipvs/reference conf:ipvs/kube-proxy docker kind existing
TEST_LANE_1 := unit smoke selftest:iptables conf:nftables/reference conf:nftables/kube-proxy conf:iptables/kube-proxy
TEST_LANE_2 := conf:ipvs/kube-proxy conf:ipvs/reference
TEST_LANE_3 := docker kind existing selftest:userspace
TEST_EXISTING_RUN := ^(TestAffinity|TestCleanup|TestRetry|TestSourceAddress|TestEndpoints|TestProxierRestart|TestAPIServerRestart)$$
TEST_LANES ?= 3
TEST_LOGS ?= /tmp/proxymodes-test-logs/$(shell date +%Y%m%d-%H%M%S)
test: deps kind-deps k8s ## run every test, conformance for every mode (ours), kube-proxy's iptables, ipvs and nftables modes (and iptables on kind, directly and as PROVIDER=existing), and a short bench sweep, as CI does [TEST_LANES=1|3]; ends with a table of step times
	@case "$(TEST_LANES)" in 1|3) ;; *) echo "TEST_LANES=$(TEST_LANES): use 1 (one step after another) or 3 (three lanes side by side)" >&2; exit 2;; esac; \
	k8s=$$(clusters/k8s/build.sh controlplane kube-proxy); first=$$(date +%s); logs=$(TEST_LOGS); mkdir -p $$logs; : > $$logs/steps; \
	step() { local name=$$1 s rc; shift; echo "proxymodes: $$name"; s=$$(date +%s); "$$@"; rc=$$?; \
		printf '%-80s %5ss  %s\n' "$$name" $$(( $$(date +%s) - s )) $$([ $$rc = 0 ] && echo ok || echo FAILED) >> $$logs/steps; return $$rc; }; \
	table() { echo; echo "proxymodes: make test steps (the prerequisites, deps, kind-deps and k8s, took $$(( first - $(MAKE_START) ))s; logs in $$logs)"; \
		sed 's/^/  /' $$logs/steps; echo "  total $$(( $$(date +%s) - $(MAKE_START) ))s"; }; \
	run() { step "$$@" || { table; exit 1; }; }; \
	conf() { local r=$$1 lab=$$2; env PROXYMODES_MODE=$${r%/*} PROXYMODES_IMPL=$${r#*/} PROXYMODES_K8S_BIN=$$k8s \
		$${lab:+LAB_ISOLATED=1 PROXYMODES_LAB_NAME=$$lab} $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./suites/conformance; }; \
	token() { local t=$$1 lab=$$2; case $$t in \
		unit) step "go test ./... but the conformance suite (the self-test step runs it) and harness/docker (lane 3)" \
			env PM_BENCH_SMOKE=0 PROXYMODES_K8S_BIN=$$k8s $(GO) test -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v -e '/suites/conformance$$' -e '/harness/docker$$');; \
		docker) step "go test ./harness/docker (the private docker daemon: one at a time, so beside kind)" \
			$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./harness/docker;; \
		smoke) step "bench smoke sweep (100 Services; the pipeline, not the speed)" \
			env PROXYMODES_K8S_BIN=$$k8s $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run TestSmoke ./bench/sweep;; \
		conf:*) local r=$${t#conf:}; step "conformance MODE=$${r%/*} IMPL=$${r#*/}$$([ $${r%/*} = ipvs ] && echo ' (user-mode Linux guests without host ip_vs)')$${lab:+, isolated lab $$lab}" conf $$r $$lab;; \
		kind) step "conformance on kind, MODE=iptables (a first run builds the node image: ~25 min)" \
			env PROXYMODES_PROVIDER=kind PROXYMODES_MODE=iptables PROXYMODES_K8S_BIN=$$k8s $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./suites/conformance;; \
		existing) step "PROVIDER=existing against a kind cluster running kube-proxy (the features whose paths differ from kind's)" \
			$(MAKE) --no-print-directory existing-e2e EXISTING_RUN='$(TEST_EXISTING_RUN)';; \
		selftest:*) local m=$${t#selftest:}; step "self-test MODE=$$m: each broken build fails its check, the shipped proxier passes the whole suite" \
			$(MAKE) --no-print-directory selftest MODE=$$m SELFTEST_JOBS=2 SELFTEST_LAB=s$${m:0:1} SELFTEST_DIR=$$logs/selftest-$$m;; \
		*) echo "make test: unknown step $$t" >&2; return 2;; esac; }; \
	lane() { local n=$$1 t i=0 log; shift; for t in "$$@"; do i=$$((i + 1)); log=$$logs/lane$$n-$$i-$${t//[^a-z0-9]/_}.log; \
		echo "proxymodes: lane $$n: $$t (log $$log)"; \
		if token $$t $$([ $$n != 1 ] && [ $${t%%:*} = conf ] && echo pmt$$n$$i) > $$log 2>&1; then echo "proxymodes: lane $$n: $$t ok"; \
		else echo "proxymodes: lane $$n: $$t FAILED; the lane stops. Last lines of $$log:"; tail -n 80 $$log; return 1; fi; done; }; \
	run "go vet ./..." $(GO) vet ./...; \
	run "the self-test build of the proxier (tag pm_selftest) compiles and its faults switch on" \
		bash -c '$(GO) test -count=1 -tags pm_selftest ./proxier/fault ./proxier/server ./proxier/cmd/proxier && \
			$(GO) test -count=1 -tags pm_selftest -run Fault ./proxier/iptables ./proxier/ipvs ./proxier/nftables'; \
	case "$(TEST_LANES)" in \
	1) for t in $(TEST_STEPS); do token $$t "" || { table; exit 1; }; done;; \
	3) lane 1 $(TEST_LANE_1) & l1=$$!; lane 2 $(TEST_LANE_2) & l2=$$!; lane 3 $(TEST_LANE_3) & l3=$$!; \
		ok=0; for p in $$l1 $$l2 $$l3; do wait $$p || ok=1; done; [ $$ok = 0 ] || { table; exit 1; };; \
	esac; \
	table

# kube-proxy's ipvs mode alone: about 12 min in UML guests (one per node)
# on a 2-core machine, 3 of them a fixed wait for IPVS's persistence
# templates. make test runs it too.
test-kube-proxy-ipvs: deps k8s ## the conformance suite against kube-proxy's ipvs mode (in UML guests when the host has no ip_vs; ~12 min)
	PROXYMODES_MODE=ipvs PROXYMODES_IMPL=kube-proxy PROXYMODES_K8S_BIN=$$(clusters/k8s/build.sh controlplane kube-proxy) \
		$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./suites/conformance

# What an interrupted suite prints (harness/interrupt). The soak and
# self-test loops stop when a run printed it: inside make test's lanes,
# which run in the background, the loops' shells ignore SIGINT, so only
# the suites (Go re-enables it) notice a Ctrl-C.
INTERRUPTED := : tearing labs down
# A soak runs one compiled suite N times in a row; each run keeps its own
# results directory (summary, lab logs and snapshots on failure), and SOAK.md
# tallies every assessment over the runs. Repetitions belong to the nightly
# workflow, not to make test.
N ?= 10
ifeq ($(SOAK_DIR),)
SOAK_DIR := /tmp/proxymodes-soaks/$(shell date +%Y%m%d-%H%M%S)-$(MODE)-$(or $(IMPL),default)-$(PROVIDER)
endif
soak: check-mode cli $(if $(filter existing,$(PROVIDER)),,deps k8s) $(if $(filter kind,$(PROVIDER)),kind-deps) ## run the conformance suite N times (MODE, IMPL, PROVIDER, N=10) and tally every assessment into SOAK_DIR/SOAK.md
	@mkdir -p $(SOAK_DIR)
	@echo "proxymodes: soak of $(N) runs, MODE=$(MODE) IMPL=$(or $(IMPL),default) PROVIDER=$(PROVIDER), into $(SOAK_DIR)"
	@$(GO) test -c -o $(SOAK_DIR)/conformance.test ./suites/conformance
	@trap 'echo "proxymodes: soak interrupted" >&2; exit 130' INT TERM; \
	k8s=$$($(if $(filter existing,$(PROVIDER)),true,clusters/k8s/build.sh controlplane kube-proxy)); \
	for i in $$(seq -f '%02g' 1 $(N)); do \
		start=$$(date +%s); \
		( cd suites/conformance && PROXYMODES_MODE=$(MODE) PROXYMODES_PROVIDER=$(PROVIDER) PROXYMODES_IMPL=$(IMPL) \
			PROXYMODES_K8S_BIN=$$k8s PROXYMODES_RESULTS_DIR=$(SOAK_DIR)/run-$$i \
			$(SOAK_DIR)/conformance.test -test.count=1 -test.timeout $(TEST_TIMEOUT) -test.v $(if $(FEATURE),-labels feature=$(FEATURE)) > $(SOAK_DIR)/run-$$i.log 2>&1 ) \
			&& res=passed || res=FAILED; \
		echo "proxymodes: soak run $$i of $(N) $$res in $$(( $$(date +%s) - start ))s ($(SOAK_DIR)/run-$$i)"; \
		if grep -q "$(INTERRUPTED)" $(SOAK_DIR)/run-$$i.log; then echo "proxymodes: soak interrupted" >&2; exit 130; fi; \
	done
	@$(PROXYMODES) soak $(SOAK_DIR)

# The self-test runs one feature against each deliberately broken build of
# the reference proxier (proxier/fault, build tag pm_selftest), then the
# shipped proxier over the whole suite (so a self-test is also the mode's
# conformance run): every fault must be caught by its assessment, and the
# unbroken proxier must pass every assessment, those included.
# SELFTEST_JOBS=N runs N cases at once, each in an isolated lab of its own
# (LAB_ISOLATED=1: the lab's host side in a namespace of its own), the
# whole-suite run first since it is the longest.
ifeq ($(SELFTEST_DIR),)
SELFTEST_DIR := /tmp/proxymodes-selftests/$(shell date +%Y%m%d-%H%M%S)-$(MODE)
endif
SELFTEST_JOBS ?= 1
# SELFTEST_LAB prefixes the isolated labs' names, so that two self-tests
# (make test's lanes run two) never share one.
SELFTEST_LAB ?= st
selftest: check-mode cli deps k8s ## run the suite against proxiers broken on purpose, one promise each (MODE, SELFTEST_JOBS=1); each must fail, the real one pass; table in SELFTEST_DIR/SELFTEST.md
	@mkdir -p $(SELFTEST_DIR)
	@echo "proxymodes: self-test of MODE=$(MODE) into $(SELFTEST_DIR), $(SELFTEST_JOBS) at a time"
	@$(GO) test -c -o $(SELFTEST_DIR)/conformance.test ./suites/conformance
	@trap 'echo "proxymodes: self-test interrupted" >&2; exit 130' INT TERM; \
	k8s=$$(clusters/k8s/build.sh controlplane kube-proxy); \
	$(PROXYMODES) selftest cases $(MODE) > $(SELFTEST_DIR)/runs; \
	one() { local name=$$1 labels=$$2 lab=$$3 start=$$(date +%s) fault=$${1%@*} res; [ "$$name" = unbroken ] && fault=; \
		( cd suites/conformance && PROXYMODES_MODE=$(MODE) PROXYMODES_PROVIDER=local PROXYMODES_IMPL=reference PROXYMODES_FAULT=$$fault \
			PROXYMODES_K8S_BIN=$$k8s PROXYMODES_RESULTS_DIR=$(SELFTEST_DIR)/$$name \
			env $$lab $(SELFTEST_DIR)/conformance.test -test.count=1 -test.timeout $(TEST_TIMEOUT) -test.v $${labels:+-labels "$$labels"} > $(SELFTEST_DIR)/$$name.log 2>&1 < /dev/null ) \
			&& res=passed || res=failed; \
		[ "$$name" != unbroken ] && [ $$res = passed ] && res="passed: the suite did not notice the fault"; \
		echo "proxymodes: self-test $$name ($${labels:-the whole suite}): the suite $$res in $$(( $$(date +%s) - start ))s"; \
		if grep -q "$(INTERRUPTED)" $(SELFTEST_DIR)/$$name.log; then touch $(SELFTEST_DIR)/.interrupted; fi; }; \
	rm -f $(SELFTEST_DIR)/.interrupted; \
	if [ "$(SELFTEST_JOBS)" -le 1 ]; then \
		while read -r name labels && [ ! -e $(SELFTEST_DIR)/.interrupted ]; do one "$$name" "$$labels" ""; done < $(SELFTEST_DIR)/runs; \
	else \
		i=0; while read -r name labels; do \
			while [ $$(jobs -rp | wc -l) -ge $(SELFTEST_JOBS) ]; do wait -n; done; \
			[ -e $(SELFTEST_DIR)/.interrupted ] && break; \
			i=$$((i + 1)); one "$$name" "$$labels" "LAB_ISOLATED=1 PROXYMODES_LAB_NAME=$(SELFTEST_LAB)$$i" & \
		done < <(grep '^unbroken' $(SELFTEST_DIR)/runs; grep -v '^unbroken' $(SELFTEST_DIR)/runs); wait; \
	fi; \
	if [ -e $(SELFTEST_DIR)/.interrupted ]; then echo "proxymodes: self-test interrupted" >&2; exit 130; fi
	@$(PROXYMODES) selftest report $(SELFTEST_DIR) $(MODE)

check-mode:
	@case " $(MODES) " in *" $(MODE) "*) ;; *) echo "unknown MODE=$(MODE): use one of: $(MODES)" >&2; exit 2;; esac

# FEATURE (a feature's label, e.g. retry) runs only that feature of
# suites/conformance, in make conformance and make soak; conformance then
# leaves out the other suites/ packages, whose test binaries do not take
# e2e-framework's -labels flag. Empty, the default, runs everything.
FEATURE ?=
# An existing cluster (KUBECONFIG, PROXYMODES_ECHO_IMAGE) needs nothing
# built or installed here: no root, no Kubernetes build.
conformance: check-mode $(if $(filter existing,$(PROVIDER)),,deps k8s) $(if $(filter kind,$(PROVIDER)),kind-deps) ## run the conformance suite for MODE [PROVIDER=local|kind|existing] [IMPL=reference|kube-proxy]
	PROXYMODES_MODE=$(MODE) PROXYMODES_PROVIDER=$(PROVIDER) PROXYMODES_IMPL=$(IMPL) \
		PROXYMODES_K8S_BIN=$$($(if $(filter existing,$(PROVIDER)),true,clusters/k8s/build.sh controlplane kube-proxy)) \
		$(GO) test -p 1 -count=1 -timeout $(TEST_TIMEOUT) -v $(if $(FEATURE),./suites/conformance -args -labels feature=$(FEATURE),./suites/...)

LABEL ?= default
BENCH_ARGS ?=
bench: deps k8s ## run the load benchmark sweep (100..10k Services, every mode and impl) into results/<date>-$(LABEL) [BENCH_ARGS="--services 100,1000,30000"]
	PROXYMODES_K8S_BIN=$$(clusters/k8s/build.sh controlplane kube-proxy) $(PROXYMODES) bench --label $(LABEL) $(BENCH_ARGS)

# The A/A check measures the reference proxier twice in a row as if it were
# two implementations: every ratio must come out "~" (Holm-corrected over
# the set), or the method, not a proxy, is what differs.
AA_ARGS ?= --services 100,1000 --modes userspace,iptables --kernels host
bench-aa: deps k8s ## A/A check of the benchmark method: the reference proxier against itself; fails on any significant difference [AA_ARGS=…]
	PROXYMODES_K8S_BIN=$$(clusters/k8s/build.sh controlplane kube-proxy) $(PROXYMODES) bench --label aa --impls reference,reference-twin --direct=false $(AA_ARGS)

bench-micro: ## run the proxiers' Go micro-benchmarks (rule rendering and syncs over fakes)
	$(GO) test -count=1 -run '^$$' -bench . ./proxier/...

# The nightly workflow's jobs run here in its order, shortened
# (clusters/ci/dryrun/shorten.go), with the runner's environment: the
# workflow's path proven without GitHub. ONLY=job or job/leg (comma-
# separated) runs some; PLAN=1 prints the commands and runs nothing.
.PHONY: nightly-dry-run
nightly-dry-run: ## run the nightly workflow's jobs here, shortened, in its order [ONLY=job/leg] [PLAN=1]
	$(GO) run ./clusters/ci/cmd/nightly-dry-run $(if $(filter 1,$(PLAN)),--plan) $(if $(ONLY),--only '$(ONLY)')

lab-up: deps k8s ## start a local lab with 4 echo pods and leave it running
	@PROXYMODES_K8S_BIN=$$(clusters/k8s/build.sh controlplane kube-proxy) $(PROXYMODES) lab up --pods 4

lab-status: cli ## show the running lab
	@$(PROXYMODES) lab status

lab-down: cli ## remove the lab, including leftovers of killed runs
	@$(PROXYMODES) lab down

report: cli ## compare two result sets: make report A=results/… B=results/… (A alone: re-render its README.md and plots)
	@test -n "$(A)" || { echo "usage: make report A=results/<date>-<label> [B=results/<date>-<label>]: with B, compare A (old) with B (new); without, re-render A" >&2; exit 2; }
	@$(PROXYMODES) report $(A) $(B)
