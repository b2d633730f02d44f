#!/usr/bin/env bash
# Prepare what a lent GPU machine needs to run benchmarks/gpu_check.py, in .device/ (ignored
# by git through .git/info/exclude): Ray's cp312 wheel without its Java jars (79 MB -> ~45 MB,
# under the 64 MiB a device call carries), jsonschema and its small dependencies, and a copy
# of the public GOLD-NAS code for the side-by-side step. The device image already has torch,
# numpy, pandas, pyarrow, matplotlib, scikit-learn, grpcio, protobuf, msgpack, aiohttp, click,
# pyyaml, requests and filelock; MLflow stays behind (the check runs with --no-mlflow).
#
#   benchmarks/pack_for_device.sh [PEER_FOLDER]    # default ../shared/peers/gold_nas_unofficial
#
# Then, on the device, from the checkout's root (CONTRIBUTING.md):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/whl/*.whl \
#     && PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py --peer .device/peer --json $OUT/gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
peer=${1:-../shared/peers/gold_nas_unofficial}
py=${PYTHON:-.venv/bin/python}
ray_version=$("$py" -c "import ray; print(ray.__version__)")
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/whl .device/raw
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .device/raw "ray==$ray_version" jsonschema jsonschema-specifications referencing rpds-py
# Ray without ray/jars/ (Java workers only): the zip rewritten, its RECORD lines dropped too
"$py" - <<'PY'
import pathlib, zipfile
raw = pathlib.Path(".device/raw")
for wheel in raw.glob("*.whl"):
    target = pathlib.Path(".device/whl") / wheel.name
    if not wheel.name.startswith("ray-"):
        wheel.rename(target)
        continue
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename.startswith("ray/jars/"):
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"\n".join(line for line in data.split(b"\n") if not line.startswith(b"ray/jars/"))
            dst.writestr(item, data)
PY
rm -rf .device/raw
cp -r "$peer" .device/peer
du -sh .device/whl/* .device/peer | sed 's/^/  /'
echo "carry .device (and nothing else is needed); see CONTRIBUTING.md for the command"
