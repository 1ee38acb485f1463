# The captioning service: install, train, pack, serve, test.
# `make help` lists the targets.

SHELL := /bin/bash
# A recipe's pipeline fails when any command in it fails (`training.evaluate ... | tee` would not).
.SHELLFLAGS := -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
STUBS := build/grpc/open_inference_grpc_pb2.py

DATA := data/shapes
TRAIN_JSON := $(DATA)/annotations/captions_train.json
VAL_JSON := $(DATA)/annotations/captions_val.json
# A second held-out set, drawn by another renderer (training/second_renderer.py), for evaluation only.
SECOND_DIR := data/second
SECOND_JSON := $(SECOND_DIR)/annotations/captions_val.json
SECOND_IMAGES ?= 300
SECOND_SEED ?= 7
TRAIN_DIR := build/train
EXPORT := build/export
STORE := build/model_store
SERVE_DIR := build/serve

MODEL_NAME ?= captioner
VERSION ?= 1.0
WORKERS ?= 2
SAMPLE ?= $(DATA)/sample.jpg

# The default recipe: ResNet-18 trained from scratch on the generated shapes set
# (no ImageNet weights can be downloaded here), in two stages. See README "Training".
# 1. Fine-tune the backbone (and a show-and-tell decoder) with the caption loss and three auxiliary losses.
# 2. Freeze it and train the projection and a new soft-attention decoder on its features, computed once.
TRAIN_IMAGES ?= 6000
VAL_IMAGES ?= 300
# Caption languages of the generated set: five captions per image in each, one multilingual model.
# The first stage, which teaches the encoder to see, learns from the first language's captions only.
LANGUAGES ?= en fr de es
ENCODER_LANGUAGES ?= $(firstword $(LANGUAGES))
# ResNet-18 at 160 px: cheaper per image than ResNet-34 at 128 px, and small objects keep more
# pixels through the stem (README "The recipe" has the side-by-side run).
BACKBONE ?= resnet18
IMAGE_SIZE ?= 160
FINETUNE_EPOCHS ?= 4
DECODER_EPOCHS ?= 5
# Stage 2's decoder, trained on stage 1's frozen encoder: soft attention over the 5 x 5 feature grid.
DECODER ?= soft_attention
FINETUNE_DIR := $(TRAIN_DIR)/finetune
AUX_LOSSES ?= --concept-weight 4.0 --scene-weight 1.0
# Stage 1 only: per-cell colour and shape of layer3's map (it trains the backbone).
OBJECT_MAP_WEIGHT ?= 3.0
FINETUNE_ARGS ?= --backbone $(BACKBONE) --encoder-weights none --train-backbone --image-size $(IMAGE_SIZE) --epochs $(FINETUNE_EPOCHS) \
	--batch-size 16 --lr 5e-3 --backbone-lr 1.5e-3 --captions-per-image 2 --train-languages $(ENCODER_LANGUAGES) \
	$(AUX_LOSSES) --object-map-weight $(OBJECT_MAP_WEIGHT)
DECODER_ARGS ?= --decoder $(DECODER) --epochs $(DECODER_EPOCHS) --batch-size 32 --lr 3e-3 --captions-per-image 5 $(AUX_LOSSES)
DATA_ARGS = --annotations $(TRAIN_JSON) --val-annotations $(VAL_JSON) --images $(DATA)/images
# What `make eval` and `make model` score: the generated set's held-out split, and the second renderer's set.
# The second renderer as `training.evaluate --held-out NAME ANNOTATIONS IMAGES` (and `make compare`) take it.
SECOND_HELD_OUT := second_renderer $(SECOND_JSON) $(SECOND_DIR)/images
EVAL_ARGS = --export-dir $(EXPORT) --annotations $(VAL_JSON) --images $(DATA)/images --held-out $(SECOND_HELD_OUT)
# The domain score's statistics (README "Domain score"): fitted on the training images, the threshold
# calibrated on both held-out sets. Another held-out set is one more `--held-out ANNOTATIONS [IMAGES]` in
# HELD_OUT_ARGS (IMAGES defaults to $(DATA)/images).
HELD_OUT_ARGS ?= --held-out $(VAL_JSON) --held-out $(SECOND_JSON) $(SECOND_DIR)/images
GALLERY_ARGS = --export-dir $(EXPORT) --annotations $(VAL_JSON) --images $(DATA)/images --count 8 \
	--held-out "second renderer" $(SECOND_JSON) $(SECOND_DIR)/images --photos 1 --out build/gallery.png \
	--attention-out build/attention.png
# 2,000 training images estimate the pooled features' mean and shrunk covariance (the held-out sets
# then set the threshold); fitting on all 6,000 takes `make model` longer and was not measured to help.
DOMAIN_ARGS ?= --fit-annotations $(TRAIN_JSON) --fit-max-images 2000 $(HELD_OUT_ARGS) --images $(DATA)/images

CLIENT := $(PY) -m client --key-file $(SERVE_DIR)/key_file.json --model $(MODEL_NAME)

.PHONY: help install test data second-data model eval gallery mar serve stop register scale describe unregister \
	clean domain domain-report

help:
	@echo "make install      create .venv and install everything (idempotent)"
	@echo "make test         run the test suite"
	@echo "make model        generate data, train, export to $(EXPORT), evaluate, draw the gallery"
	@echo "make eval         evaluate $(EXPORT) on the held-out generated images and the second renderer's"
	@echo "make data         generate the shapes set into $(DATA) and the second held-out set (make model does too)"
	@echo "make second-data  render the second held-out set into $(SECOND_DIR) (make data does too)"
	@echo "make gallery      draw build/gallery.png (and build/attention.png) from $(EXPORT)"
	@echo "make domain       (re)fit $(EXPORT)'s domain statistics (domain.safetensors) without retraining"
	@echo "make domain-report  AUROC of the domain score: held-out scenes vs photos, noise, text, plain pictures (build/domain_report.json)"
	@echo "make mar          pack $(STORE)/$(MODEL_NAME).mar"
	@echo "make serve        start TorchServe on 127.0.0.1 and register the model"
	@echo "make stop         stop TorchServe and wait until it has exited"
	@echo "make demo         the demo page on http://127.0.0.1:$(DEMO_PORT) (after make serve)"
	@echo "make fuzz         fuzz request parsing and image decoding in process (thousands of cases)"
	@echo "make register | scale WORKERS=n | describe | unregister   management API calls"
	@echo "make soak | overload | drill   load runs on their own TorchServe (SECURITY.md)"
	@echo "make tiny-export  a tiny random model in build/tiny-export (LOAD_EXPORT=build/tiny-export for the load runs)"
	@echo "make bench        benchmarks: writes BENCHMARKS.md, docs/bench.json, docs/bench.png"
	@echo "make bench-quick  a short benchmark run into build/bench/quick/ (BENCHMARKS.md untouched)"
	@echo "make bench-gpu    the GPU benchmark (bench/gpu.py); make gpu-deps stages what a bare GPU machine lacks"
	@echo "make compare      train, evaluate and time backbones x decoders with the default recipe (build/compare)"
	@echo "make video-model  generate clips, train the video captioner, export to $(VIDEO_EXPORT), evaluate, gallery"
	@echo "make video-data   generate the clips (make video-model does too)"
	@echo "make video-eval   evaluate the video export on its held-out clips"
	@echo "make video-mar    pack $(STORE)/$(VIDEO_MODEL_NAME).mar (make serve registers it when present)"
	@echo "make clean        delete build/ (exports, archives, server folders; data/ stays)"

install: $(INSTALLED) $(STUBS)

$(INSTALLED): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	@touch $@

$(STUBS): $(INSTALLED)
	$(PY) -m client.grpc_stubs --out build/grpc

test: install
	$(PY) -m pytest tests

data: $(VAL_JSON) $(SECOND_JSON)

# The generator's code is a prerequisite: a changed world is generated (and trained on) again.
WORLD_CODE := $(wildcard training/shapes_dataset.py training/shapes_world.py training/shapes_render.py \
	training/caption_languages/*.py)
$(VAL_JSON): $(WORLD_CODE) | $(INSTALLED)
	rm -rf $(DATA)/images $(DATA)/annotations
	$(PY) -m training.shapes_dataset --out $(DATA) --train $(TRAIN_IMAGES) --val $(VAL_IMAGES) --seed 0 \
		--languages $(LANGUAGES)

second-data: $(SECOND_JSON)

# Rendered again (seconds) when its code or the captions' wording changes: it is only ever evaluated on.
SECOND_SOURCES := training/second_renderer.py training/second_drawing.py training/shapes_dataset.py \
	$(wildcard training/caption_languages/*.py)

$(SECOND_JSON): $(SECOND_SOURCES) | $(INSTALLED)
	$(PY) -m training.second_renderer --out $(SECOND_DIR) --count $(SECOND_IMAGES) --seed $(SECOND_SEED) \
		--languages $(LANGUAGES)

model: $(EXPORT)/model.safetensors

# The second set is order-only: its evaluation needs it, and regenerating it must not retrain the model.
$(EXPORT)/model.safetensors: $(VAL_JSON) | $(INSTALLED) $(SECOND_JSON)
	$(PY) -m training.train $(DATA_ARGS) --output-dir $(FINETUNE_DIR) $(FINETUNE_ARGS)
	$(PY) -m training.train $(DATA_ARGS) --output-dir $(TRAIN_DIR) --init-from $(FINETUNE_DIR)/checkpoint.pt \
		$(DECODER_ARGS)
	$(PY) -m training.export --checkpoint $(TRAIN_DIR)/checkpoint.pt --out $(EXPORT) $(DOMAIN_ARGS)
	$(PY) -m training.evaluate $(EVAL_ARGS) | tee build/eval.json
	$(PY) -m training.gallery $(GALLERY_ARGS)

eval: | $(INSTALLED) $(SECOND_JSON)
	$(PY) -m training.evaluate $(EVAL_ARGS)

domain: | $(INSTALLED)
	$(PY) -m training.domain_calibration --export-dir $(EXPORT) $(DOMAIN_ARGS)

domain-report: | $(INSTALLED)
	$(PY) -m training.domain_report --export-dir $(EXPORT) $(HELD_OUT_ARGS) --images $(DATA)/images \
		--out build/domain_report.json

gallery: | $(INSTALLED)
	$(PY) -m training.gallery $(GALLERY_ARGS)

mar: $(STORE)/$(MODEL_NAME).mar

$(STORE)/$(MODEL_NAME).mar: $(EXPORT)/model.safetensors $(wildcard handler/*.py handler/*.yaml model/*.py) | $(INSTALLED)
	$(PY) -m ops.archive --export-dir $(EXPORT) --out $(STORE) --model-name $(MODEL_NAME) --version $(VERSION)

serve: install model mar
	$(PY) -m ops.server start --workdir $(SERVE_DIR) --model-store $(STORE) --config config.properties
	$(CLIENT) register $(MODEL_NAME).mar
	$(CLIENT) caption $(SAMPLE)
	@if [ -f $(STORE)/$(VIDEO_MODEL_NAME).mar ]; then $(VIDEO_CLIENT) register $(VIDEO_MODEL_NAME).mar; fi
	@if [ -f $(STORE)/$(VIDEO_MODEL_NAME).mar ] && [ -f $(VIDEO_SAMPLE) ]; then $(VIDEO_CLIENT) caption $(VIDEO_SAMPLE); fi

stop: | $(INSTALLED)
	$(PY) -m ops.server stop --workdir $(SERVE_DIR)

register: | $(INSTALLED)
	$(CLIENT) register $(MODEL_NAME).mar

scale: | $(INSTALLED)
	$(CLIENT) scale $(WORKERS)

describe: | $(INSTALLED)
	$(CLIENT) describe

unregister: | $(INSTALLED)
	$(CLIENT) unregister

clean:
	rm -rf build

# The demo page (app/streamlit_app.py), a client of the server `make serve` started.
DEMO_PORT ?= 8501

.PHONY: demo
demo: | $(INSTALLED)
	CAPTION_KEY_FILE=$(SERVE_DIR)/key_file.json CAPTION_INFERENCE_URL=http://127.0.0.1:8080 \
		CAPTION_MANAGEMENT_URL=http://127.0.0.1:8081 CAPTION_MODEL=$(MODEL_NAME) \
		$(PY) -m streamlit run app/streamlit_app.py --server.address 127.0.0.1 --server.port $(DEMO_PORT)

# Operations under pressure (SECURITY.md), each with its own TorchServe on free loopback ports,
# on the model in $(EXPORT) (LOAD_EXPORT=build/tiny-export for a quick run on a tiny random model).
# soak:     10,000 requests, 16 at a time, 5% bad inputs; worker memory may grow at most 5%.
# overload: a burst far above a small job queue; nothing lost with the client's retries.
# drill:    scale 2 -> 4 -> 1, register 2.0, make it default, roll back, unregister, under load.
LOAD_EXPORT ?= $(EXPORT)
SOAK_ARGS ?= --requests 10000 --concurrency 16 --bad-fraction 0.05 --max-memory-growth-percent 5
OVERLOAD_ARGS ?= --requests 300 --concurrency 48 --job-queue-size 4
DRILL_ARGS ?= --concurrency 8 --dwell-requests 40
.PHONY: soak overload drill tiny-export
soak: install
	$(PY) -m ops.soak --export-dir $(LOAD_EXPORT) $(SOAK_ARGS)

overload: install
	$(PY) -m ops.overload --export-dir $(LOAD_EXPORT) $(OVERLOAD_ARGS)

drill: install
	$(PY) -m ops.drill --export-dir $(LOAD_EXPORT) $(DRILL_ARGS)

# A tiny random model in build/tiny-export, to try the runs above without training.
tiny-export: | $(INSTALLED)
	$(PY) -m ops.tiny_model --out build/tiny-export

# Benchmarks (bench/): seed-style pipeline vs the handler in process vs TorchServe, in one run.
.PHONY: bench bench-quick bench-gpu gpu-deps
bench: install
	$(PY) -m bench

bench-quick: install
	$(PY) -m bench --quick

# One prepared run for a GPU machine that has PyTorch but no Java and no package registry (bench/gpu.py):
# here `make gpu-deps` copies the few pure-Python packages it may lack into build/gpu-deps; carry that
# folder, then there run `PYTHONPATH=build/gpu-deps python -m bench.gpu` (under 10 minutes). Without
# CUDA it writes a report saying so and exits 0.
bench-gpu:
	$(PY) -m bench.gpu

gpu-deps: | $(INSTALLED)
	$(PY) -m bench.gpu --stage-deps build/gpu-deps

# Property-based fuzzing of request parsing and image decoding, in process (SECURITY.md "Fuzzing").
FUZZ_ARGS ?= --batches 350 --seed 0
.PHONY: fuzz
fuzz: install
	$(PY) -m ops.fuzz $(FUZZ_ARGS)

# Backbones and decoders side by side (bench/compare.py): each variant trained with the default
# recipe's two stages (FINETUNE_ARGS, DECODER_ARGS), evaluated on both held-out sets, timed in process
# and served. Writes build/compare/results.md and results.json; COMPARE_ARGS adds options
# (e.g. --variants resnet18-show_tell resnet50-soft_attention, or --reuse to time earlier exports again).
COMPARE_ARGS ?=
.PHONY: compare
compare: install data
	$(PY) -m bench.compare --annotations $(TRAIN_JSON) --val-annotations $(VAL_JSON) --images $(DATA)/images \
		--held-out $(SECOND_HELD_OUT) --finetune-args "$(FINETUNE_ARGS)" --decoder-args "$(DECODER_ARGS)" $(COMPARE_ARGS)

# Video captioning (README "Video"): generated clips of moving shapes, the image encoder on
# VIDEO_FRAMES sampled frames, frames concatenated in order, the same decoder. Two stages as
# for images: fine-tune the backbone with the caption loss, two clip-level auxiliary losses and the
# per-frame object-map loss, then train the projection, temporal step and decoder on the frozen
# backbone's cached frame features.
VIDEO_DATA := data/videos
VIDEO_TRAIN_JSON := $(VIDEO_DATA)/annotations/captions_train.json
VIDEO_VAL_JSON := $(VIDEO_DATA)/annotations/captions_val.json
VIDEO_TRAIN_DIR := build/video-train
VIDEO_EXPORT := build/video-export
VIDEO_MODEL_NAME := captioner-video
VIDEO_CLIPS ?= 600
VIDEO_VAL_CLIPS ?= 100
VIDEO_FRAMES ?= 4
VIDEO_FRAME_SIZE ?= 64
VIDEO_SIZE ?= 48
VIDEO_BACKBONE ?= resnet18
VIDEO_TEMPORAL ?= concat
# Stage 1 only: per-cell colour and shape of each sampled frame's layer3 map (the image recipe's loss).
VIDEO_OBJECT_MAP_WEIGHT ?= 3.0
VIDEO_FINETUNE_EPOCHS ?= 10
VIDEO_DECODER_EPOCHS ?= 10
VIDEO_SAMPLE = $(VIDEO_DATA)/clips/video$(VIDEO_CLIPS).mp4
VIDEO_DATA_ARGS = --annotations $(VIDEO_TRAIN_JSON) --val-annotations $(VIDEO_VAL_JSON) --images $(VIDEO_DATA)/clips
VIDEO_FINETUNE_ARGS ?= --backbone $(VIDEO_BACKBONE) --encoder-weights none --train-backbone --image-size $(VIDEO_SIZE) \
	--num-frames $(VIDEO_FRAMES) --temporal $(VIDEO_TEMPORAL) --epochs $(VIDEO_FINETUNE_EPOCHS) --batch-size 16 --lr 5e-3 \
	--backbone-lr 1.5e-3 --captions-per-image 2 --concept-weight 4.0 --scene-weight 1.0 \
	--object-map-weight $(VIDEO_OBJECT_MAP_WEIGHT)
VIDEO_DECODER_ARGS ?= --epochs $(VIDEO_DECODER_EPOCHS) --batch-size 32 --lr 3e-3 --concept-weight 4.0 --scene-weight 1.0
VIDEO_CLIENT := $(PY) -m client --key-file $(SERVE_DIR)/key_file.json --model $(VIDEO_MODEL_NAME)
# The domain score's statistics of the clips' pooled features (the mean over their sampled frames).
VIDEO_DOMAIN_ARGS ?= --fit-annotations $(VIDEO_TRAIN_JSON) --held-out $(VIDEO_VAL_JSON) --images $(VIDEO_DATA)/clips

.PHONY: video-data video-model video-eval video-mar
video-data: $(VIDEO_VAL_JSON)

$(VIDEO_VAL_JSON): | $(INSTALLED)
	$(PY) -m training.video_data --out $(VIDEO_DATA) --train $(VIDEO_CLIPS) --val $(VIDEO_VAL_CLIPS) --seed 0 \
		--frame-size $(VIDEO_FRAME_SIZE)

video-model: $(VIDEO_EXPORT)/model.safetensors

$(VIDEO_EXPORT)/model.safetensors: $(VIDEO_VAL_JSON) | $(INSTALLED)
	$(PY) -m training.train $(VIDEO_DATA_ARGS) --output-dir $(VIDEO_TRAIN_DIR)/finetune $(VIDEO_FINETUNE_ARGS)
	$(PY) -m training.train $(VIDEO_DATA_ARGS) --output-dir $(VIDEO_TRAIN_DIR) \
		--init-from $(VIDEO_TRAIN_DIR)/finetune/checkpoint.pt $(VIDEO_DECODER_ARGS)
	$(PY) -m training.export --checkpoint $(VIDEO_TRAIN_DIR)/checkpoint.pt --out $(VIDEO_EXPORT) $(VIDEO_DOMAIN_ARGS)
	$(PY) -m training.evaluate --export-dir $(VIDEO_EXPORT) --annotations $(VIDEO_VAL_JSON) \
		--images $(VIDEO_DATA)/clips | tee build/video-eval.json
	$(PY) -m training.video_gallery --export-dir $(VIDEO_EXPORT) --annotations $(VIDEO_VAL_JSON) \
		--videos $(VIDEO_DATA)/clips --out build/video_gallery.png

video-eval: | $(INSTALLED)
	$(PY) -m training.evaluate --export-dir $(VIDEO_EXPORT) --annotations $(VIDEO_VAL_JSON) --images $(VIDEO_DATA)/clips

video-mar: $(STORE)/$(VIDEO_MODEL_NAME).mar

$(STORE)/$(VIDEO_MODEL_NAME).mar: $(VIDEO_EXPORT)/model.safetensors $(wildcard handler/*.py handler/*.yaml model/*.py) | $(INSTALLED)
	$(PY) -m ops.archive --export-dir $(VIDEO_EXPORT) --out $(STORE) --model-name $(VIDEO_MODEL_NAME) --version $(VERSION)
