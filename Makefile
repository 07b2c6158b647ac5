# `make run` serves the default model on http://127.0.0.1:8000; `make test` runs lint and the tests.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/data/fish4knowledge

.PHONY: install install-dev run proxy nginx postgres test test-fast lint browser train-default memory-features-default evaluate-default quantize-default experiments loadtest abench bench clean

# The project installs editable (pyproject.toml): its packages import from anywhere, its commands (fish-train,
# fish-evaluate, fish-predict, fish-quantize) land in $(VENV)/bin, and edits here take effect without reinstalling.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(VENV)/bin/gunicorn --config gunicorn.conf.py wsgi:app

lint: install-dev
	$(VENV)/bin/ruff check .

# Debian's Chromium for the browser tests (tests/test_browser.py drives it with Playwright; never `playwright install`).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Debian's nginx for `make proxy` and the proxy tests (tests/test_proxy.py).
nginx:
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update -qq && apt-get install -y -qq nginx)

# nginx (deploy/nginx.conf) on 127.0.0.1:8080 in front of the gunicorn of `make run` on 127.0.0.1:8000; its pid,
# temporary files and nothing else go to runs/nginx. Serve the public through it, never gunicorn directly.
proxy: nginx
	mkdir -p runs/nginx/tmp && chmod 1777 runs/nginx/tmp
	PATH="$$PATH:/usr/sbin" nginx -p $(CURDIR)/runs/nginx/ -c $(CURDIR)/deploy/nginx.conf -g 'daemon off;'

# Debian's PostgreSQL server for the corrections storage tests (tests/postgres.py starts a throw-away cluster in a
# temporary folder; the tests skip PostgreSQL with a message where it is absent).
postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql)

# The test targets let Python cache compiled modules (__pycache__, git-ignored) even where the environment sets
# PYTHONDONTWRITEBYTECODE: without it every pytest process compiles and assertion-rewrites the test modules again
# (about 3.5 s of CPU per process here).
test test-fast: export PYTHONDONTWRITEBYTECODE :=

# Every test, in two pytest-xdist processes of one torch thread each (see test-fast).
test: install-dev lint browser nginx postgres
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist worksteal

# The inner loop: every test but those marked slow, browser or real_data, in two processes (pytest-xdist) of one
# torch thread each (the tests' tensors are tiny: two processes use two cores better than one process's two
# threads); stops at the first failure.
test-fast: install-dev
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist worksteal -x -q -m "not slow and not browser and not real_data"

# The exact recipe of weights/fish4knowledge_lite2.pt (see weights/README.md): EfficientNet-Lite2 at 260 px from its
# ImageNet weights (a pip package, no network), 1 epoch of the head alone then 5 of the whole network, then the head
# refitted on the frozen features (LP after FT); about 50 minutes on 2 CPU cores alone (90 while other work shared
# them). The release is runs/f4k_lite2_refit/release.pt. The real photos (clownfish, reef fish of other species,
# reef sea life without fish) and the flowers only choose and report the thresholds (open set, family); they are
# never trained on. Comma-separated: one set per folder.
PHOTOS ?= ../shared/data/clownfish_photos,../shared/data/reef_photos/fish
NOT_FISH ?= ../shared/data/flowers,../shared/data/reef_photos/not_fish
train-default: install
	$(PY) train.py --data $(DATA) --out runs/f4k_lite2 --arch tf_efficientnet_lite2 --weights imagenet \
	  --epochs 6 --head-epochs 1 --backbone-lr-scale 0.1 --batch-size 32 --lr 0.05 \
	  --label-smoothing 0.1 --warmup-epochs 1 --augment scene --group-pattern 'fish_(\d+)_' --workers 2 \
	  --cache-images --seed 0 --class-info weights/fish4knowledge_species.csv \
	  --subject fish --open-set-photos $(PHOTOS) --not-subject $(NOT_FISH) --novelty-rejection 0.1 \
	  --max-unknown-named 0.1
	$(PY) -m training.refit runs/f4k_lite2 --out runs/f4k_lite2_refit --C 4
	$(PY) -m training.memory_features --checkpoint runs/f4k_lite2_refit/release.pt --data $(DATA) \
	  --split-file runs/f4k_lite2/split.csv

# The base features beside the shipped checkpoint (weights/fish4knowledge_lite2.features.npz, 3.4 MB): what the app's
# corrections memory is fitted with and judged on (app/corrections/learning.py); about 2 minutes.
memory-features-default: install
	$(PY) -m training.memory_features --checkpoint weights/fish4knowledge_lite2.pt --data $(DATA) \
	  --split-file weights/fish4knowledge_split.csv

evaluate-default: install
	$(PY) evaluate.py --checkpoint weights/fish4knowledge_lite2.pt --data $(DATA) \
	  --split-file weights/fish4knowledge_split.csv --open-set-photos $(PHOTOS) --not-subject $(NOT_FISH)

# int8 for OpenVINO (NNCF, 300 training images; about 30 s): weights/fish4knowledge_lite2.int8.{xml,bin,json}, not
# committed. Serve it with FISH_PRECISION=int8; the default stays bf16/fp32 (see BENCHMARKS.md for why).
quantize-default: install
	$(PY) quantize.py --checkpoint weights/fish4knowledge_lite2.pt --data $(DATA) \
	  --split-file weights/fish4knowledge_split.csv

# The three experiments of EXPERIMENTS.md, one after the other (about 100 minutes on 2 CPU cores); results in
# runs/sweeps/<name>/leaderboard.md. A stopped sweep resumes where it stopped.
experiments: install
	for name in roses_daisies flowers f4k_archs; do $(PY) -m training.sweep experiments/$$name.yaml || exit 1; done

# Real gunicorn with the default model, 16 clients for 60 s, one worker killed half-way (see tools/loadtest.py);
# e.g. `make loadtest LOADTEST_ARGS="--duration 10 --output loadtest.md"`.
loadtest: install
	$(PY) tools/loadtest.py --data $(DATA) $(LOADTEST_ARGS)

# Debian's ApacheBench, the HTTP client of `make bench` (it takes far less CPU from the server than a Python client).
abench:
	command -v ab >/dev/null || (apt-get update -qq && apt-get install -y -qq apache2-utils)

# Prediction, serving, training and decoding speed side by side; writes BENCHMARKS.md (about 10 minutes on 2 cores),
# int8 included (made first by quantize-default when it is missing). BENCH_ARGS adds options, e.g.
# `make bench BENCH_ARGS="--decode-baseline 8a173f6"` to compare serving with an earlier commit's.
bench: install-dev abench
	test -f weights/fish4knowledge_lite2.int8.xml || $(MAKE) quantize-default
	$(PY) tools/bench.py --data $(DATA) $(BENCH_ARGS)
	(echo; $(PY) tools/bench_explain.py --photo ../shared/data/clownfish_photos/amphiprion_clarkii/Amcla_j2.jpg) >> BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
