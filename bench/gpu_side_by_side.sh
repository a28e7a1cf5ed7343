#!/bin/bash
# The side-by-side bench on a GPU (issue 12): each family against its baseline, float32 and bf16
# autocast, eval and a training step at batch 64, eager. Prepared to run as one call of a lent
# device machine (bench/baselines/README.md, "On a GPU"); DEVICE, BATCH and ROUNDS override.
set -u
device=${DEVICE:-cuda} batch=${BATCH:-64} rounds=${ROUNDS:-9} out=${OUT:?set OUT to the folder for the tables}
if ! python3 -c "import pydantic" 2> /dev/null; then  # a device machine: archdsl's missing packages, carried
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=$PWD/src:/tmp/site:$PWD/.authors/deps PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee "$out/machine.txt"
for dtype in float32 bfloat16; do
  table="$out/side_by_side_${device}_${dtype}.md"
  rm -f "$table"
  for pair in cloformer:cloformer_xxs sgformer:sgformer_s nommer:nommer_t unoptimised:mixformer_b0; do
    baseline=${pair%%:*} spec=${pair##*:}
    python3 bench/models.py "$spec" --no-compile --device "$device" --dtype "$dtype" --batch "$batch" --rounds "$rounds" \
      --baseline "bench/baselines/$baseline.py" --baseline-source ".authors/$baseline" > /tmp/row.md 2>> "$out/side_by_side.log"
    [ -s "$table" ] || head -n 2 /tmp/row.md > "$table"
    tail -n +3 /tmp/row.md >> "$table"
  done
  cat "$table"
done
