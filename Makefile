# edgeprune: `make demo` runs the whole path on an embedded default; `make test` runs the tests.
# Both install everything they need into .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
DEMO    := runs/demo

.PHONY: install data sshd chromium calibration demo test mutate readme bench bench-seeds bench-activation bench-int8 clean

install: $(STAMP)

# torch goes in first, as TORCH names it. The default is the build this machine's wheel mirror
# serves (CPU); a CUDA workstation passes its own, e.g.
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
# and a CPU-only machine elsewhere the same with .../whl/cpu. Any build in pyproject.toml's torch
# range is kept: the editable install below adds nothing to a torch that satisfies it.
TORCH   ?= torch==2.13.0

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

# Fashion-MNIST comes from Debian's package; installing it needs root.
data: $(FMNIST)
$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "error: Fashion-MNIST missing: run 'sudo apt-get install -y dataset-fashion-mnist'"; exit 1; fi

# The remote path's tests start a real sshd on loopback (Debian's openssh-server; needs root to install).
SSHD := /usr/sbin/sshd
sshd: $(SSHD)
$(SSHD):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq openssh-server; \
	else echo "error: sshd missing: run 'sudo apt-get install -y openssh-server'"; exit 1; fi

# The benchmark report's test renders the page in headless Chromium (Debian's chromium; needs root to install).
CHROMIUM := /usr/bin/chromium
chromium: $(CHROMIUM)
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	else echo "error: chromium missing: run 'sudo apt-get install -y chromium'"; exit 1; fi

calibration: install data
	$(BIN)/python edgeprune/shipped/calibration/make_calibration.py --force

demo: install data
	$(BIN)/edgeprune train --arch zoo:lenet300 --data fashion-mnist --epochs 5 -o $(DEMO)/model.pt --force
	$(BIN)/edgeprune compress $(DEMO)/model.pt --method magnitude --sparsity 0.9 --finetune-epochs 2 -o $(DEMO)/pruned.pt --force
	$(BIN)/edgeprune export $(DEMO)/pruned.pt -o $(DEMO)/pruned.onnx --force
	$(BIN)/edgeprune deploy $(DEMO)/pruned.pt --target host-cpu --baseline $(DEMO)/model.pt -o $(DEMO)/run --force
	$(BIN)/edgeprune explain $(DEMO)/run
	@echo "run directory: $(DEMO)/run (report.md, report.json, latency.png)"

# TensorRT's published Python API (type stubs generated from the real bindings, one release per
# TensorRT 10.x; none exist for 10.3, JetPack 6's): tests/test_tensorrt_api.py holds edgeprune's
# TensorRT code and its fake to them. --no-deps: the stubs' wheel requires TensorRT itself (GPU
# only); --target: two versions of one distribution side by side. The oldest and the newest 10.x.
TRT_STUBS := 10.8.0.43.1 10.13.0.35.1
.PHONY: trt-stubs
trt-stubs: $(foreach v,$(TRT_STUBS),$(VENV)/trt-stubs/$(v)/tensorrt_bindings/tensorrt.pyi)
$(VENV)/trt-stubs/%/tensorrt_bindings/tensorrt.pyi: | $(STAMP)
	$(BIN)/pip install -q --no-deps --upgrade --target $(VENV)/trt-stubs/$* tensorrt-stubs==$*

test: install data sshd chromium trt-stubs
	$(BIN)/python -m pytest -q --timeout 900

# Mutation testing of the measurement and ratio code: the functions that time, take memory and form
# ratios, against the tests in pyproject.toml [tool.mutmut] (16-23 min on 2 shared cores). The memory
# probe's mutants show as "no tests": it runs as `python -m edgeprune.memprobe`, where mutmut neither
# sees which tests reach it nor switches mutants on (README, "Testing").
MUTATE := $(addsuffix __mutmut_*,edgeprune.measure.timing.x_time_interleaved edgeprune.measure.timing.x__timer \
	edgeprune.measure.verdict.x_noise_band edgeprune.measure.accuracy.x_agreement edgeprune.measure.accuracy.x_top1_accuracy \
	edgeprune.profiling.x__side edgeprune.memprobe.x__status_kb edgeprune.memprobe.x__reset_peak \
	edgeprune.memprobe.x__peak_kb edgeprune.memprobe.x_probe edgeprune.report.schema.xǁLatencyStatsǁfrom_ns \
	edgeprune.report.schema.x_ratio edgeprune.report.schema.x__per_s edgeprune.report.schema.xǁBatchLatencyǁ_base_dict)
mutate: install data
	$(BIN)/mutmut run --max-children 2 $(foreach m,$(MUTATE),'$(m)')
	$(BIN)/mutmut results

bench: install data
	$(BIN)/python benchmarks/bench_e2e.py --out benchmarks/results

# The seed spread of bench's resnet8 accuracy comparison (reads seed 0 from bench's results).
bench-seeds: install data
	$(BIN)/python benchmarks/bench_seeds.py --seeds 1 2

# Dense, sparse-weight and xz sizes of pruned lenet300/fc5 (benchmarks/results/sizes.{json,md}).
.PHONY: bench-sizes
bench-sizes: install data
	$(BIN)/python benchmarks/bench_sizes.py --out benchmarks/results
# Activation-based pruning (Ganguli & Chong) on fc5 against global magnitude, with latency (~30 min).
bench-activation: install data
	$(BIN)/python benchmarks/bench_activation.py --out benchmarks/results
# INT8 against fp32 on bench's resnet8: plain vs tuned quantisation, compacted + INT8 (reuses bench's cache).
bench-int8: install data
	$(BIN)/python benchmarks/bench_int8.py --out benchmarks/results

# README's benchmark tables, re-rendered from benchmarks/results/*.json (tests/test_readme_figures.py checks them).
.PHONY: readme
readme: install
	$(BIN)/python benchmarks/render_readme.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# Spectral density shaping vs layer-wise magnitude on LeNet-5, 3 seeds (22 min on 2 busy cores).
.PHONY: bench-spectral
bench-spectral: install data
	$(BIN)/python benchmarks/bench_spectral.py --out benchmarks/results
# The predicted pruning limit (Zhang et al.) against the measured one: fc5 on Fashion-MNIST, with and without L1.
# Every multiple-of-round_to width allocation of resnet8 at 48-52 % of MACs, timed at batch 64:
# the latency/MAC ratio this host allows at all (benchmarks/results/alloc.json).
.PHONY: bench-alloc
bench-alloc: install
	$(BIN)/python benchmarks/bench_alloc.py --out benchmarks/results

# torchrun with 2 ranks against one process: same compress command, 3 seeds (benchmarks/results/ddp.json).
.PHONY: bench-ddp
bench-ddp: install data
	$(BIN)/python benchmarks/bench_ddp.py --out benchmarks/results

.PHONY: bench-limit
bench-limit: install data
	$(BIN)/python benchmarks/bench_limit.py --seeds 0 1 2 --out benchmarks/results
# Every registered pruning method against magnitude (global, layer, channel) and random at equal
# sparsity and fine-tune budget, 3 seeds (benchmarks/bench_methods.py; dense models cached in runs/).
.PHONY: bench-methods
bench-methods: install data
	$(BIN)/python benchmarks/bench_methods.py --out benchmarks/results

# The nightly matrix (examples/nightly.toml: 2 models x 3 methods x 3 sparsities on host-cpu) into
# runs/nightly/bench.sqlite; the models are trained once on digits. Exit 1 when a regression stands.
# benchmarks/bench_nightly.py times it and a second run with --reuse-measurements (nightly.json).
NIGHTLY := runs/nightly
$(NIGHTLY)/mlp.pt: | $(STAMP)
	$(BIN)/edgeprune train --arch zoo:lenet300 --data digits --epochs 10 -o $@ --force
$(NIGHTLY)/cnn.pt: | $(STAMP)
	$(BIN)/edgeprune train --arch zoo:lenet5 --data digits --epochs 30 -o $@ --force
.PHONY: bench-nightly bench-nightly-figures
bench-nightly: install $(NIGHTLY)/mlp.pt $(NIGHTLY)/cnn.pt
	$(BIN)/edgeprune bench examples/nightly.toml --history $(NIGHTLY)/bench.sqlite
bench-nightly-figures: install
	$(BIN)/python benchmarks/bench_nightly.py --out benchmarks/results --fresh --remeasure 10

# Issue 11/12/13 figures, each a results file the README renders (make readme):
# deploy --host over a loopback sshd against the local deploy (results/remote.json).
.PHONY: bench-remote bench-wild bench-imagefolder bench-false-alarms
bench-remote: install data sshd
	$(BIN)/python benchmarks/bench_remote.py
# A ResNet-18-shaped model at 3x224x224, channel-pruned to 50 % of MACs, on host-cpu (results/wild.json, ~10 min).
bench-wild: install
	$(BIN)/python benchmarks/bench_wild.py --out benchmarks/results
# Fine-tuning from an image folder: peak RSS at 1,000 vs 10,000 images (results/imagefolder.json).
bench-imagefolder: install data
	$(BIN)/python benchmarks/bench_imagefolder.py --out benchmarks/results
# The verdict on 200 unchanged measurements and on a slower model (results/false_alarms.json).
bench-false-alarms: install
	$(BIN)/python benchmarks/bench_false_alarms.py --reps 20 --out benchmarks/results
