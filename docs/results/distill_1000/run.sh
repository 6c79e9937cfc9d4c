#!/usr/bin/env bash
# DeiT distillation on 1,000 Fashion-MNIST images at equal wall-clock (docs/training.md#distillation-measured-does-it-pay-at-equal-wall-clock).
#   bash docs/results/distill_1000/run.sh SEED teacher|student|baseline [EPOCHS]
# teacher:  timm's resnet10t (configs/recipes/fashion_mnist_cnn_teacher.yaml), EPOCHS (default 30);
# student:  ViT-micro with a distillation token, hard distillation from that seed's teacher, EPOCHS (default 60);
# baseline: the same ViT-micro without a teacher, EPOCHS chosen so that its fit takes as long as teacher + student.
# Each appends its fit's wall-clock (the whole `vitlab fit` process) and its test accuracy (last checkpoint) to
# results.csv. Data and recipe are `vitlab compare`'s (docs/compare.md): the seeded 1,000-image subset, validation on
# 1,000 held-out training images, test on 1,000 test images, batch 64, AdamW at 8e-3 per 512, 3 warmup epochs, label
# smoothing 0.1, 60 epochs. DATA_DIR: the Fashion-MNIST folder (default data/, downloaded there when missing).
#   bash docs/results/distill_1000/run.sh summary      # mean +- std per arm (student: teacher's seconds added)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${RUNS:-runs/distill_1000} results=${RESULTS:-$here/results.csv}
if [ "${1:-}" = summary ]; then
  exec python - "$results" <<'PY'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1])))
teacher = {r["seed"]: float(r["fit_seconds"]) for r in rows if r["arm"] == "teacher"}
arms = {}
for r in rows:
    total = float(r["fit_seconds"]) + (teacher.get(r["seed"], float("nan")) if r["arm"] == "student" else 0.0)
    arms.setdefault((r["arm"], r["epochs"]), []).append((100 * float(r["test_acc1"]), total, r["seed"]))
for (arm, epochs), v in sorted(arms.items()):
    acc, sec = [a for a, _, _ in v], [t for _, t, _ in v]
    sd = lambda x: st.stdev(x) if len(x) > 1 else float("nan")
    print(f"{arm:8s} {epochs:>3s} epochs, seeds {','.join(s for *_, s in v)}: test acc1 {st.mean(acc):.2f} +- "
          f"{sd(acc):.2f} %, wall-clock {st.mean(sec):.0f} +- {sd(sec):.0f} s" + (" (teacher's fit included)"
          if arm == "student" else ""))
PY
fi
seed=$1 arm=$2
data=(--data vitlab.data.FashionMNISTDataModule --data.data_dir "${DATA_DIR:-data}" --data.batch_size 64
      --data.num_workers 0 --data.train_subset 1000 --data.eval_subset 1000)
common=(--trainer.accelerator cpu --trainer.devices 1 --trainer.precision 32-true --trainer.enable_progress_bar false
        --trainer.enable_model_summary false --trainer.check_val_every_n_epoch 1 --seed_everything "$seed"
        --runs_dir "$runs")
vit=(--model.preset vit_micro_patch4_28 --model.optim.base_lr 8e-3 --model.optim.base_batch_size 512
     --model.schedule.warmup_epochs 3 --model.regularization.label_smoothing 0.1)
case $arm in
  teacher)  epochs=${3:-30}; args=(-c configs/recipes/fashion_mnist_cnn_teacher.yaml --data.val_split 0.1
                                   --data.augment true --data.on_device false) ;;
  student)  epochs=${3:-60}; teacher=$(ls -d "$runs/teacher_s$seed"/version_* | sort -V | tail -1)
            args=("${vit[@]}" --model.arch.distilled true --model.distill.kind hard --model.distill.alpha 0.5
                  --model.distill.teacher "$teacher/checkpoints/last.ckpt") ;;
  baseline) epochs=${3:?baseline needs EPOCHS}; args=("${vit[@]}") ;;
  *) echo "arm must be teacher, student or baseline, got '$arm'" >&2; exit 2 ;;
esac
name=${arm}_s$seed; [ "$arm" = baseline ] && name=baseline_e${epochs}_s$seed
start=$(date +%s.%N)
vitlab fit "${args[@]}" "${data[@]}" "${common[@]}" --trainer.max_epochs "$epochs" --run_name "$name"
seconds=$(python -c "import time; print(round(time.time() - $start, 1))")
run=$(ls -d "$runs/$name"/version_* | sort -V | tail -1)
vitlab test -c "$run/config.yaml" --ckpt_path "$run/checkpoints/last.ckpt" > /dev/null
acc=$(python - "$run" <<'PY'
import csv, sys
from pathlib import Path
tests = sorted(Path(sys.argv[1]).glob("test*/metrics.csv"))
rows = [r for r in csv.DictReader(open(tests[-1])) if r.get("test/acc1")]
print(rows[-1]["test/acc1"])
PY
)
cpu=$(python -c "from vitlab.tools.compare.plan import machine; print(machine().replace(',', ';'))")
[ -f "$results" ] || echo "arm,seed,epochs,fit_seconds,test_acc1,cpu,date" > "$results"
echo "$arm,$seed,$epochs,$seconds,$acc,$cpu,$(date -u +%F)" | tee -a "$results"
