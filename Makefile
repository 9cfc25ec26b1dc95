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

.PHONY: install demo research test ui mlflow-ui bench bench-models validate materialize clean-home

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
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

# Every asset but the inbox partitions (inbox_interactions needs a partition key: the sensor's runs).
materialize: install home
	$(BIN)/dagster asset materialize --select 'not key:inbox_interactions and not group:research' -m mm_pipeline.definitions

validate: install home
	$(BIN)/dagster definitions validate -w workspace.yaml

test: install
	$(BIN)/python -m pytest -q

ui: install home
	$(BIN)/dagster dev -w workspace.yaml --host $(HOST) --port $(DAGSTER_PORT)

mlflow-ui: install
	mkdir -p $(MM_PIPELINE_HOME)/mlflow
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) \
		--default-artifact-root $(MM_PIPELINE_HOME)/mlflow/artifacts --host $(HOST) --port $(MLFLOW_PORT)

bench: install home
	$(BIN)/python benchmarks/pipeline_stages.py --dataset builtin:default

# Epoch time, evaluation time and peak memory of mm_gcn and LightGCN on the default and large datasets.
bench-models: install
	$(BIN)/python benchmarks/model_training.py --dataset builtin:default builtin:large \
		--out $(MM_PIPELINE_HOME)/reports/bench/model_training.json

clean-home:
	rm -rf $(MM_PIPELINE_HOME)
