#!/usr/bin/env bash
# The commands behind docs/results/cpu-celeba-sample/, in the order they ran (README.md there says what each
# part cost). Run from anywhere; WORK holds the MLflow store, the Optuna journal and the caches (~3 GB), none of
# which is committed. Each part resumes: re-running the study tops it up; a killed compare run resumes with
# `bench run --resume RUN_ID`, and `bench report` (part C) gathers whatever runs the experiment holds.
set -euo pipefail
REPO=${REPO:-$(cd "$(dirname "$0")/../../.." && pwd)}
DATA=${DATA:-$REPO/../shared/data/celeba-sample}
WORK=${WORK:-$PWD/cpu-celeba-sample-work}
mkdir -p "$WORK" && cd "$WORK"
export BENCH_CACHE=$WORK/cache
STORE=sqlite:///$WORK/mlflow.db
bench=$REPO/.venv/bin/bench

# Part A (~30 min wall): a 10-trial study of the seed's DCGAN at 3 epochs a trial, KID x 1000 at N = 500 as the
# objective (the shipped space, experiments/studies/dcgan.toml), the PyTorch tutorial's settings tried first.
$bench study --model dcgan --data "$DATA" --trial-budget 3ep --trials 10 --study-name dcgan-3ep-logits \
  --enqueue lr_g=2e-4 --enqueue lr_d=2e-4 --enqueue beta1=0.5 --enqueue beta2=0.999 \
  --set eval.samples=500 --set eval.real_samples=500 --set eval.points=2 --set eval.grid=64 \
  --storage "$WORK/journal.log" --experiment-name study-dcgan-3ep-logits --tracking-uri "$STORE" --quiet

# Its best settings went into dcgan-tuned.toml (beside this file) by hand.

# Part B (~85 min wall): every family at 6 device-minutes, one run after the other (a time budget measures the
# run alone on the machine), four log-spaced eval points each, the same N and reference for all. The same
# command again keeps the runs that finished (same name and spec hash) and trains the rest: stop it between
# runs and re-run it to split this part (the GANs, ~52 min; then ddpm and ldm, ~31 min), on the same machine: the
# report never pools device-hours across hardware (CPU model, cores), so halves run on two machines are two tables.
$bench compare \
  --models "$REPO/experiments/seed-dcgan.toml,$REPO/docs/results/cpu-celeba-sample/dcgan-tuned.toml,$REPO/docs/results/cpu-celeba-sample/wgan-gp-ncritic2.toml,ddpm,ldm" \
  --budget 6m --seeds 1,seed-dcgan=2,dcgan-tuned=2,wgan-gp-ncritic2=2 --data "$DATA" \
  --set eval.samples=500 --set eval.real_samples=500 --set eval.points=4 --set eval.grid=64 \
  --set ddpm:ch=32 --set "ddpm:ch_mult=[1,2,2,2]" --set ddpm:num_res_blocks=1 --set "ddpm:attn_resolutions=[8]" \
  --set ddpm:dropout=0.0 --set ddpm:lr=1e-3 --set ddpm:batch_size=32 --set ddpm:sampler_steps=20 \
  --set ldm:batch_size=32 --set ldm:sampler_steps=20 \
  --experiment-name celeba-sample-6m --out "$WORK/report" --tracking-uri "$STORE" --quiet

# Part C (a minute): the report again from the store (what `bench compare` wrote at its end), e.g. after resuming
# a run that was killed; the folder's tables/ and figures/ are what docs/results/cpu-celeba-sample/ holds.
$bench report --experiment celeba-sample-6m --out "$WORK/report" --tracking-uri "$STORE" --quiet

# Part D (~46 min wall on the page's 2-core AVX2 machine, fp32): the seed DCGAN past the image count at which it collapsed on the earlier bf16 machine
# (60,928), which 6 minutes do not reach here: an images budget, so the table reads on any hardware.
$bench compare --models "$REPO/experiments/seed-dcgan.toml" --budget 64kimg --seeds 2 --data "$DATA" \
  --set eval.samples=500 --set eval.real_samples=500 --set eval.points=4 --set eval.grid=64 \
  --experiment-name celeba-sample-64kimg --out "$WORK/report-64kimg" --tracking-uri "$STORE" --quiet

# The re-run checks (README.md, "The re-run check"): the compare's own `bench run` lines for seed 0 of the seed
# DCGAN and of WGAN-GP (`bench compare ... --print-commands` prints them), into another experiment, ~9 min each.
for spec in "$REPO/experiments/seed-dcgan.toml" "$REPO/docs/results/cpu-celeba-sample/wgan-gp-ncritic2.toml"; do
  $bench run --spec "$spec" --tag model_alias="$(basename "$spec" .toml)" --budget 6m --seed 0 --data "$DATA" \
    --set eval.samples=500 --set eval.real_samples=500 --set eval.points=4 --set eval.grid=64 \
    --experiment-name rerun-check --tag compare=rerun-check --tracking-uri "$STORE" --quiet
done
