#!/usr/bin/env bash
# Build llama.cpp's llama-server from the llama.cpp source vendored in the llama-cpp-python
# source distribution on PyPI, once per version, into a cache directory. Prints the build dir.
#
#   MTPROXY_CACHE   cache root (default ~/.cache/mtproxy)
#   LLAMA_CPP_PYTHON_VERSION   pinned sdist version (default 0.3.36)
#
# The build's shared libraries refer to the build folder by absolute path, so the build stays
# where it was made: $MTPROXY_CACHE/llama.cpp-<version>/. About 16 minutes on 2 cores.
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${MTPROXY_CACHE:-$HOME/.cache/mtproxy}"
root="$cache/llama.cpp-$version"
stamp="$root/.built"
python="${PYTHON:-python3}"

if [ -f "$stamp" ] && [ -x "$root/src/vendor/llama.cpp/build/bin/llama-server" ]; then
  echo "$root/src/vendor/llama.cpp/build"
  exit 0
fi

mkdir -p "$root"
if [ ! -d "$root/src/vendor/llama.cpp" ]; then
  tmp="$(mktemp -d)"
  "$python" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$tmp" >&2
  rm -rf "$root/src"
  mkdir -p "$root/src"
  tar -xzf "$tmp"/llama_cpp_python-"$version".tar.gz -C "$root/src" --strip-components=1
  cp "$tmp"/llama_cpp_python-"$version".tar.gz "$root/"
  rm -rf "$tmp"
fi

cd "$root/src/vendor/llama.cpp"
cmake -B build -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON >&2
cmake --build build --target llama-server -j"$(nproc)" >&2
touch "$stamp"
echo "$root/src/vendor/llama.cpp/build"
