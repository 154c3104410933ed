#!/usr/bin/env bash
# The peers' venvs for bench_peers.py, in benchmarks/.peers/ (git-ignored): they cannot live beside
# idxlake (Petastorm needs pyarrow < 15 and numpy < 2) nor beside each other (Mosaic Streaming pins
# transformers < 5, whose huggingface_hub breaks HF datasets 5). Each gets torch 2.13.0 first (the CPU
# wheel on this project's machines, as for the project itself; elsewhere add
# --index-url https://download.pytorch.org/whl/cpu), and a constraint keeps every later install on it
# (a bare torch requirement would pull a CUDA build).
set -euo pipefail
cd "$(dirname "$0")"
rm -rf .peers && mkdir -p .peers && echo "torch==2.13.0" > .peers/constraints.txt
venv() { python3 -m venv ".peers/$1" && ".peers/$1/bin/pip" install -q torch==2.13.0; }
pipc() { local v=$1; shift; ".peers/$v/bin/pip" install -q -c .peers/constraints.txt "$@"; }
# Daft, HF datasets, Ray Data.
venv main && pipc main daft datasets 'ray[data]' pydantic
# Petastorm without pyspark (only its Spark-side ETL imports it; make_batch_reader does not).
venv petastorm && pipc petastorm 'numpy<2' 'pyarrow<15' 'pandas<2.2' dill diskcache future packaging psutil \
  pyzmq six fsspec 'setuptools<70' && pipc petastorm --no-deps petastorm
# Mosaic Streaming without its cloud clients and torchvision (peer_loaders.py skips streaming/__init__,
# which imports torchvision; PyPI's torchvision does not import beside this torch).
venv mosaic && pipc mosaic 'numpy<2.2' 'xxhash<4' zstd python-snappy Brotli tqdm catalogue 'transformers<5' \
  pillow pyarrow && pipc mosaic --no-deps mosaicml-streaming
for v in main petastorm mosaic; do ".peers/$v/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0')"; done
echo "peers installed in benchmarks/.peers/"
