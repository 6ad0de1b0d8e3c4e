#!/usr/bin/env bash
# Make sure the default dataset (Fashion-MNIST, IDX files) is on this machine.
# Debian ships it as dataset-fashion-mnist; install it when we can (root + apt), else explain.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -e "$dir/train-images-idx3-ubyte.gz" ] || [ -e "$dir/train-images-idx3-ubyte" ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "tenfold: installing Debian's dataset-fashion-mnist (the default data)..." >&2
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  exit 0
fi
echo "tenfold: Fashion-MNIST not found in $dir. Install it with" >&2
echo "  sudo apt-get install dataset-fashion-mnist" >&2
echo "or pass --data DIR with the four IDX files to 'tenfold train'." >&2
exit 1
