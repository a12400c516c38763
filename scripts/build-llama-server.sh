#!/usr/bin/env bash
# Build llama.cpp's llama-server from the llama.cpp source vendored in the llama-cpp-python
# source distribution on PyPI, once per version, into a cache directory. Prints the build dir.
#
#   MTPROXY_CACHE   cache root (default ~/.cache/mtproxy)
#   LLAMA_CPP_PYTHON_VERSION   pinned sdist version (default 0.3.36)
#
# The build's shared libraries refer to the build folder by absolute path, so the build stays
# where it was made: $MTPROXY_CACHE/llama.cpp-<version>/. About 16 minutes on 2 cores.
#
# CPU features: not -march=native. These machines' processors advertise AMX, but the VM does not
# enable its register state, so ggml's AMX kernels (compiled in by -march=native) die with SIGILL
# on the first matrix product. The build asks for AVX2/FMA/F16C explicitly instead (what every
# x86-64-v3 processor has; AVX-512 measured no faster here for this model). The stamp records
# the CMake flags, so a build made with other flags (e.g. an older native one) is reconfigured
# and rebuilt in place (only ggml-cpu recompiles: about a minute).
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${MTPROXY_CACHE:-$HOME/.cache/mtproxy}"
root="$cache/llama.cpp-$version"
stamp="$root/.built"
python="${PYTHON:-python3}"

cmake_args=(-DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=ON)
if [ "$(uname -m)" = x86_64 ]; then
  cmake_args+=(-DGGML_NATIVE=OFF)
  if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    cmake_args+=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
  fi
  # stated, so a CMake cache configured otherwise earlier cannot keep them on
  cmake_args+=(-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF
    -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
flags="${cmake_args[*]}"

sdist="$root/llama_cpp_python-$version.tar.gz"
mkdir -p "$root"
if [ ! -f "$sdist" ]; then  # also what `make real-runtimes` installs llama-cpp-python from
  tmp="$(mktemp -d)"
  "$python" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$tmp" >&2
  mv "$tmp/llama_cpp_python-$version.tar.gz" "$sdist"
  rm -rf "$tmp"
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$flags" ] \
    && [ -x "$root/src/vendor/llama.cpp/build/bin/llama-server" ]; then
  echo "$root/src/vendor/llama.cpp/build"
  exit 0
fi

if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >&2 && apt-get install -y -qq cmake g++ >&2
  else
    echo "build-llama-server.sh: cmake and a C++ compiler are needed" >&2
    exit 1
  fi
fi

if [ ! -d "$root/src/vendor/llama.cpp" ]; then
  rm -rf "$root/src"
  mkdir -p "$root/src"
  tar -xzf "$sdist" -C "$root/src" --strip-components=1
fi

rm -f "$stamp"
cd "$root/src/vendor/llama.cpp"
cmake -B build "${cmake_args[@]}" >&2
cmake --build build --target llama-server -j"$(nproc)" >&2
echo "$flags" > "$stamp"
echo "$root/src/vendor/llama.cpp/build"
