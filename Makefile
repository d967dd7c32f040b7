# `make demo` and `make test` each create .venv if it is missing, install the project, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= outputs/demo

.PHONY: install demo demo-train demo-lm test test-fast bench bench-quick clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The InstructAvatar demo samples from the small checkpoints the repo ships (assets/instructavatar_small, produced
# by `make demo-train`): a held-out synthface identity speaks a synthetic utterance as instructed, then moves as
# told without audio.
IA_ASSETS ?= assets/instructavatar_small
demo: $(STAMP)
	$(BIN)/python -m avatarjax.pipelines.demo_inputs $(DEMO_DIR)/inputs --size 64 --seconds 4
	$(BIN)/avatarjax sample --checkpoint $(IA_ASSETS)/generator --out $(DEMO_DIR) -- \
		--portrait $(DEMO_DIR)/inputs/portrait.png --audio $(DEMO_DIR)/inputs/speech.wav \
		--instruction "talk with a big happy smile" --name talking_happy.mp4
	$(BIN)/avatarjax sample --checkpoint $(IA_ASSETS)/generator --out $(DEMO_DIR) -- \
		--portrait $(DEMO_DIR)/inputs/portrait.png --instruction "turn your head to the left" --frames 75 \
		--name motion_turn_left.mp4
	@echo "demo output: $(abspath $(DEMO_DIR)) (talking_happy.mp4, motion_turn_left.mp4, contact sheets, motion JSON)"

# Reproduces the shipped checkpoints: the motion VAE, then the generator on its latents, each exported in float16.
demo-train: $(STAMP)
	$(BIN)/avatarjax train --config configs/motion_vae/synthface_small.py --workdir outputs/motion_vae
	$(BIN)/avatarjax export --workdir outputs/motion_vae --out $(IA_ASSETS)/motion_vae --dtype float16
	$(BIN)/avatarjax train --config configs/instructavatar/synthface_small.py --workdir outputs/instructavatar \
		--config.data.vae=$(IA_ASSETS)/motion_vae
	$(BIN)/avatarjax export --workdir outputs/instructavatar --out $(IA_ASSETS)/generator --dtype float16 \
		--config.data.vae=../motion_vae

# The decoder-LM demo (the Body of Her backbone on the bytes of this repository).
demo-lm: $(STAMP)
	$(BIN)/avatarjax train --config configs/lm/synthface_small.py --workdir outputs/demo_lm
	$(BIN)/avatarjax sample --config configs/lm/synthface_small.py --workdir outputs/demo_lm -- --prompt "def " --tokens 300
	@echo "demo output: $(abspath outputs/demo_lm) (metrics.jsonl, tb/, checkpoints/, samples/)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" tests

# Every model's benchmark in a fresh process (ours vs its PyTorch reference, TFLOP/s, MFU, memory, scan vs loop):
# bench.json, bench.md (table) and bench.png (MFU and ratio per model) in outputs/bench/. A benchmark, not a test:
# run it on an idle machine (or a GPU). bench-quick is a smoke run of the same.
bench: $(STAMP)
	$(BIN)/avatarjax bench all --out outputs/bench/bench.json

bench-quick: $(STAMP)
	$(BIN)/avatarjax bench all --quick --out outputs/bench/quick.json

clean:
	rm -rf $(VENV) outputs .pytest_cache
