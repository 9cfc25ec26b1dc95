# One-command entry points. Every target sets up the virtual environment first when it is missing.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export MM_PIPELINE_HOME ?= $(CURDIR)/.mm_pipeline
export DAGSTER_HOME ?= $(MM_PIPELINE_HOME)/dagster
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export MLFLOW_TRACKING_URI ?= sqlite:///$(MM_PIPELINE_HOME)/mlflow/mlflow.db
HOST ?= 127.0.0.1
DAGSTER_PORT ?= 3000
MLFLOW_PORT ?= 5000
# Extra pip options for 'make install'. The torch pin resolves from PyPI (its Linux wheel bundles CUDA); for
# the CPU-only wheel: PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" (or a mirror of it).
PIP_ARGS ?=

.PHONY: install lint demo research test ui mlflow-ui bench bench-models validate materialize clean-home \
	deploy-home run worker webserver daemon mlflow-server bench-shards bench-scaling bench-text bench-machine \
	bench-steps

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -c constraints.txt $(PIP_ARGS) -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Dagster reads its instance config from $DAGSTER_HOME/dagster.yaml: link the project's file there.
$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	ln -sf $(CURDIR)/dagster.yaml $@

home: $(DAGSTER_HOME)/dagster.yaml

demo: install home
	$(BIN)/python -m mm_pipeline.cli demo

# The demo plus the ablations of the primary model: the report then holds the ablation rows too.
research: install home
	$(BIN)/python -m mm_pipeline.cli demo --job research_pipeline

# Every asset but the inbox partitions and the research group (what full_pipeline selects), through the
# job's executor and after waiting for a free run slot, like a run launched from the UI.
materialize: install home
	$(BIN)/python -m mm_pipeline.cli run --job full_pipeline

validate: install home
	$(BIN)/dagster definitions validate -w workspace.yaml

# ruff's lint rules and formatting (pyproject.toml); 'make test' runs it first.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

ui: install home
	$(BIN)/dagster dev -w workspace.yaml --host $(HOST) --port $(DAGSTER_PORT)

mlflow-ui: install
	mkdir -p $(MM_PIPELINE_HOME)/mlflow
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) \
		--default-artifact-root $(MM_PIPELINE_HOME)/mlflow/artifacts --host $(HOST) --port $(MLFLOW_PORT)

bench: install home
	$(BIN)/python benchmarks/pipeline_stages.py --dataset builtin:default

# Epoch time (wall and CPU, one torch thread), evaluation time and peak memory of mm_gcn and LightGCN on default and large.
bench-models: install
	$(BIN)/python benchmarks/model_training.py --dataset builtin:default builtin:large --epochs 3 --rounds 4 \
		--eval-repeats 1 --threads 1 \
		--out $(MM_PIPELINE_HOME)/reports/bench/model_training.json

# Where an mm_gcn training step's time goes: the model with one part off at a time, against LightGCN (one thread).
bench-steps: install
	$(BIN)/python benchmarks/step_parts.py --dataset builtin:default builtin:large --rounds 3 --threads 1 \
		--out $(MM_PIPELINE_HOME)/reports/bench/step_parts.json

# This machine's speed now, one thread (GEMM, copy, fresh memory, gather, spmm): the context of any timing.
bench-machine: install
	$(BIN)/python benchmarks/machine_probe.py

# Text encoding in float32 against bfloat16 on 3,000 item texts: seconds and how far the vectors move.
bench-text: install
	$(BIN)/python benchmarks/text_encoding.py --dataset builtin:large --data-dir $(MM_PIPELINE_HOME)/data --items 3000 \
		--out $(MM_PIPELINE_HOME)/reports/bench/text_encoding.json

# Wall time and peak memory per stage from builtin:default to large to xl (~10M interactions), with a
# log-log plot (benchmarks/scaling.py; about 45 minutes on two cores).
bench-scaling: install
	nice -n 10 $(BIN)/python benchmarks/scaling.py --dataset builtin:default builtin:large builtin:xl \
		--epochs 1 --batch-size 8192 --max-steps 20 --max-eval-users 20000 --threads 1 \
		--out $(MM_PIPELINE_HOME)/reports/bench/scaling.json --plot $(MM_PIPELINE_HOME)/reports/bench/scaling.png

# ---- Outgrowing one machine (docs/deployment.md): one command per role; the environment comes from deploy/env.example.
# The instance on PostgreSQL: link deploy/dagster.yaml into $$DAGSTER_HOME (on every machine).
deploy-home:
	mkdir -p $(DAGSTER_HOME)
	ln -sf $(CURDIR)/deploy/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# A Celery worker: executes the steps the celery executor sends (queue "dagster"). One per core or machine.
WORKER_NAME ?= worker
WORKER_CONCURRENCY ?= 1
worker: install
	$(BIN)/celery -A mm_pipeline.defs.celery_worker worker -Q dagster --concurrency $(WORKER_CONCURRENCY) \
		--prefetch-multiplier 1 --loglevel INFO -n $(WORKER_NAME)@%h

webserver: install
	$(BIN)/dagster-webserver -w workspace.yaml -h $(HOST) -p $(DAGSTER_PORT)

daemon: install
	$(BIN)/dagster-daemon run -w workspace.yaml

# The MLflow tracking server: its own PostgreSQL database, artifacts served from a destination it owns.
mlflow-server: install
	$(BIN)/mlflow server --backend-store-uri "$$MLFLOW_BACKEND_STORE_URI" \
		--artifacts-destination "$$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts --host $(HOST) --port $(MLFLOW_PORT)

# full_pipeline through the job's executor ($$MM_PIPELINE_EXECUTOR; celery: on the workers), e.g. DATASET=builtin:tiny
run: install
	$(BIN)/python -m mm_pipeline.cli run --job full_pipeline $(if $(DATASET),--dataset $(DATASET))

# Sharded item stages on builtin:large with 1 and 2 worker processes (see benchmarks/sharded_stages.py).
bench-shards: install
	$(BIN)/python benchmarks/sharded_stages.py --dataset builtin:large --shards 2 --workers 1 2

clean-home:
	rm -rf $(MM_PIPELINE_HOME)
