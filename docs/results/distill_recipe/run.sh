#!/usr/bin/env bash
# Does distillation lift the one-CPU-hour recipe (configs/recipes/fashion_mnist_cct.yaml, 93.51 %) towards 94 %?
# The upper bound: the recipe's model, unchanged, as a token-free student (model.arch.distilled false: the teacher's
# term goes to its one sequence-pooled head) of a teacher whose training time is NOT counted
# (docs/training.md#distilling-the-one-cpu-hour-recipe).
#   bash docs/results/distill_recipe/run.sh teacher [EPOCHS]     # the recipe's model trained EPOCHS (default 68 = 2x), seed 100
#   bash docs/results/distill_recipe/run.sh student SEED [KIND]  # the recipe (34 epochs, its max_time hour) distilled, KIND soft|hard
#   bash docs/results/distill_recipe/run.sh summary              # mean +- std per arm
# A stopped teacher resumes from its last.ckpt (its time is not counted: its fit_seconds are the last part's only), a
# finished and recorded one is left as it is;
# a student is timed, so it runs in one go.
# Each finished run appends its fit wall-clock and its test top-1 (last checkpoint, flip TTA and without) to results.csv.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${RUNS:-runs/distill_recipe} results=${RESULTS:-$here/results.csv}
if [ "${1:-}" = summary ]; then
  exec python - "$results" <<'PY'
import csv, statistics as st, sys
arms = {}
for r in csv.DictReader(open(sys.argv[1])):
    arms.setdefault((r["arm"], r["kind"], r["epochs"]), []).append(r)
for (arm, kind, epochs), rows in sorted(arms.items()):
    sd = lambda x: f"{st.stdev(x):.2f}" if len(x) > 1 else "n/a (one seed)"
    flip, none = [100 * float(r["test_acc1_flip"]) for r in rows], [100 * float(r["test_acc1"]) for r in rows]
    sec = [float(r["fit_seconds"]) for r in rows]
    print(f"{arm:7s} {kind:4s} {epochs:>2s} epochs, seeds {','.join(r['seed'] for r in rows)}: test acc1 flip TTA "
          f"{st.mean(flip):.2f} +- {sd(flip)} %, without {st.mean(none):.2f} +- {sd(none)} %, fit "
          f"{st.mean(sec):.0f} s ({rows[0]['cpu']})")
PY
fi
recipe=configs/recipes/fashion_mnist_cct.yaml
arm=${1:?usage: run.sh teacher [EPOCHS] | student SEED [KIND] | summary}
case $arm in
  teacher) seed=100 epochs=${2:-68} kind=- name=teacher_e${2:-68}
           args=(--trainer.max_epochs "$epochs" --trainer.max_time null --ckpt_path last) ;;  # resumes if stopped
  student) seed=${2:?student needs SEED} kind=${3:-soft} epochs=34 name=student_${3:-soft}_s$2
           teacher=$(ls -d "$runs"/teacher_e*/version_*/checkpoints/last.ckpt | sort -V | tail -1)
           args=(--model.distill.teacher "$teacher" --model.distill.kind "$kind" --model.distill.alpha 0.5) ;;
  *) echo "arm must be teacher, student or summary, got '$arm'" >&2; exit 2 ;;
esac
finished() {  # the teacher's last.ckpt holds all its epochs (resuming it would time 0 s of training)
  local ckpt; ckpt=$(ls "$runs/$name"/version_*/checkpoints/last.ckpt 2> /dev/null | sort -V | tail -1)
  [ -n "$ckpt" ] && python -c "import sys, torch; c = torch.load(sys.argv[1], map_location='cpu', weights_only=False)
sys.exit(c['epoch'] + 1 < int(sys.argv[2]))" "$ckpt" "$epochs"
}
if [ "$arm" = teacher ] && grep -q "^teacher,-,$seed,$epochs," "$results" 2> /dev/null && finished; then
  echo "the teacher is trained ($runs/$name) and recorded in $results; remove its row to record it again" >&2; exit 0
fi
start=$(date +%s.%N)
vitlab fit -c "$recipe" "${args[@]}" --seed_everything "$seed" --runs_dir "$runs" --run_name "$name"
seconds=$(python -c "import time; print(round(time.time() - $start, 1))")
run=$(ls -d "$runs/$name"/version_* | sort -V | tail -1)
acc() {  # test top-1 of the run's last checkpoint with the given TTA
  vitlab test -c "$run/config.yaml" --ckpt_path "$run/checkpoints/last.ckpt" --model.evaluation.tta "$1" > /dev/null
  python - "$run" <<'PY'
import csv, sys
from pathlib import Path
tests = sorted(Path(sys.argv[1]).glob("test*/metrics.csv"), key=lambda p: p.stat().st_mtime)
print([r for r in csv.DictReader(open(tests[-1])) if r.get("test/acc1")][-1]["test/acc1"])
PY
}
flip=$(acc flip) none=$(acc none)
cpu=$(python -c "from vitlab.tools.compare.plan import machine; print(machine().replace(',', ';'))")
[ -f "$results" ] || echo "arm,kind,seed,epochs,fit_seconds,test_acc1_flip,test_acc1,cpu,date" > "$results"
echo "$arm,$kind,$seed,$epochs,$seconds,$flip,$none,$cpu,$(date -u +%F)" | tee -a "$results"
