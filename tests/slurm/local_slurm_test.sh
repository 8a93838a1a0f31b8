#!/usr/bin/env bash
# A real, private, single-node Slurm cluster on loopback, for the duration of the
# test:
#   1. needs Debian's slurmctld, slurmd, slurm-client and slurm-wlm-basic-plugins
#      (the PMIx MPI plugin), which scripts/setup.sh installs; skips without them;
#   2. writes a slurm.conf into a temporary directory (auth/none, no munge, no
#      cgroups, no systemd, free random ports) and starts slurmctld and slurmd
#      in the foreground as background jobs of this script;
#   3. imports the dense fixture at TP2·PP2 with `srun --mpi=pmix -n 4` and with
#      `mpirun -np 4`, and checks that every shard file is byte-identical;
#   4. submits slurm/import.sbatch, slurm/export.sbatch and slurm/verify.sbatch
#      with sbatch, waits for each job and checks their results (shards identical again, the
#      export byte-identical to the fixture, verify clean);
#   5. runs a pipeline (import -> verify -> export -> verify) with `srun --mpi=pmix -n 4
#      megabridge run` and submits slurm/pipeline.sbatch with --resume: every step of
#      the srun run named in its log, the shards identical to mpirun's, the export
#      byte-identical to the fixture; the sbatch job skips the two finished steps;
#   6. always stops the daemons (trap) and removes the directory.
#   local_slurm_test.sh MEGABRIDGE_BIN TESTS_DATA_DIR
# Needs root (slurmd runs job steps as root here). Exits 77 (skipped) when not
# root or Slurm is not installed.
set -euo pipefail
bin="$(realpath "$1")"
data="$(realpath "$2")"
fixture="$data/qwen35-dense-tiny"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
t0=$SECONDS
log() { echo "[slurm-test $((SECONDS - t0))s] $*"; }

# --- 1. packages --------------------------------------------------------------
have_slurm() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
    command -v srun >/dev/null && command -v sbatch >/dev/null &&
    compgen -G '/usr/lib/*/slurm-wlm/mpi_pmix*.so' >/dev/null
}
# Installing system packages is scripts/setup.sh's job, never a test's.
if ! have_slurm; then
  echo "SKIP: Slurm is not installed (scripts/setup.sh installs slurmctld, slurmd, slurm-client and slurm-wlm-basic-plugins)"
  exit 77
fi
if [ "$(id -u)" -ne 0 ]; then echo "SKIP: needs root to run slurmd"; exit 77; fi

# Nothing from an enclosing Slurm job (if ctest itself runs in one) may leak in.
while read -r v; do unset "$v"; done < <(env | sed -n 's/^\(\(SLURM\|SBATCH\|SALLOC\|SRUN\|SQUEUE\|SINFO\)_[A-Za-z0-9_]*\)=.*/\1/p')

# --- 2. the cluster -----------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-slurm-XXXXXX")"
chmod 755 "$work"
mkdir -p "$work/state" "$work/spool" "$work/log" "$work/tmp"
ctld_pid="" slurmd_pid=""
export SLURM_CONF="$work/slurm.conf"

alive() {  # alive PID: running (a zombie not yet waited for is not)
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null
}
stop_cluster() {
  # Cancel whatever still runs (the cluster is ours alone), then stop the
  # daemons we started, by pid, and wait for them.
  # (A signal to the whole process group, as from timeout(1), may have stopped
  # them already: then the clients are skipped, they would only retry.)
  if alive "$ctld_pid" && alive "$slurmd_pid"; then
    timeout 5 scancel --quiet --full --user=root 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(timeout 2 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  local p
  for p in $slurmd_pid $ctld_pid; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $slurmd_pid $ctld_pid; do
    for _ in $(seq 100); do alive "$p" || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  ctld_pid="" slurmd_pid=""
}
dump_logs() {
  local f
  for f in "$work"/log/*.log "$work"/log/*.out; do  # *.out: what came before the log file
    [ -s "$f" ] || continue
    [[ "$f" == *.out && -s "${f%.out}.log" ]] && continue
    echo "----- $(basename "$f") (last 30 lines)"; tail -n 30 "$f"
  done
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  ((rc == 0)) || dump_logs
  stop_cluster
  rm -rf "$work"
  log "done (exit status $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() {  # nothing listens on it (loopback or any address)
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 1
  if command -v ss >/dev/null; then [ -z "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]; fi
}
pick_ports() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    if port_free "$p" && port_free $((p + 1)); then echo "$p"; return; fi
  done
  echo "FAIL: no free port pair found" >&2; return 1
}

write_conf() {  # write_conf CTLD_PORT
  cat >"$SLURM_CONF" <<EOF
ClusterName=mbtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$1
SlurmdPort=$(($1 + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
TmpFS=$work/tmp
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/linear
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
FirstJobId=$((1000 + RANDOM))
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE OverSubscribe=YES State=UP
EOF
}

start_cluster() {
  local port
  port="$(pick_ports)"
  write_conf "$port"
  slurmctld -D -c -f "$SLURM_CONF" >"$work/log/slurmctld.out" 2>&1 &
  ctld_pid=$!
  slurmd -D -f "$SLURM_CONF" -N localhost >"$work/log/slurmd.out" 2>&1 &
  slurmd_pid=$!
  for _ in $(seq 150); do  # up to 15 s
    { alive "$ctld_pid" && alive "$slurmd_pid"; } || break  # a daemon died
    if sinfo -h -n localhost -o %t 2>/dev/null | grep -qx idle; then
      log "cluster up: slurmctld on 127.0.0.1:$port, slurmd on :$((port + 1))"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

started=0
for attempt in 1 2 3; do  # a port taken between the check and the bind: try others
  if start_cluster; then started=1; break; fi
  log "cluster did not come up (attempt $attempt)"
  dump_logs
  stop_cluster
  rm -rf "${work:?}"/state/* "${work:?}"/spool/* "${work:?}"/log/*
done
((started)) || { echo "FAIL: the local Slurm cluster did not start"; exit 1; }
srun --mpi=list 2>&1 | grep -qw pmix || { echo "FAIL: srun has no pmix MPI plugin"; srun --mpi=list; exit 1; }

# --- 3. srun --mpi=pmix vs mpirun --------------------------------------------
export TMPDIR="$work/tmp"  # Open MPI's session directories
same_shards() {  # same_shards DIR_A DIR_B: the same *.h5 files, byte for byte
  local a="$1" b="$2" n=0 f
  diff <(cd "$a" && ls -- *.h5) <(cd "$b" && ls -- *.h5) ||
    { echo "FAIL: different shard files in $a and $b"; return 1; }
  for f in "$a"/*.h5; do
    cmp "$f" "$b/$(basename "$f")" || { echo "FAIL: $(basename "$f") differs"; return 1; }
    n=$((n + 1))
  done
  ((n == 4)) || { echo "FAIL: expected 4 shard files, found $n"; return 1; }
  log "$n shard files identical: $(basename "$a") = $(basename "$b")"
}
layout=(--tp 2 --pp 2)

log "srun --mpi=pmix -n 4 import"
timeout 120 srun --mpi=pmix -n 4 --kill-on-bad-exit=1 --time=2 \
  "$bin" import --quiet --hf-path "$fixture" --out "$work/out-srun" "${layout[@]}"
log "mpirun -np 4 import"
timeout 120 mpirun --allow-run-as-root --oversubscribe -np 4 \
  "$bin" import --quiet --hf-path "$fixture" --out "$work/out-mpirun" "${layout[@]}"
same_shards "$work/out-srun" "$work/out-mpirun"

# --- 4. the sbatch scripts ----------------------------------------------------
cat >"$work/import.yaml" <<EOF
source:
  hf_path: $fixture
target:
  path: $work/out-sbatch
  format: hdf5
parallel:
  tp: 2
  pp: 2
buffer_mb: 16
EOF
cat >"$work/export.yaml" <<EOF
source:
  megatron_path: $work/out-sbatch
target:
  hf_path: $work/hf-back
EOF
export MEGABRIDGE_BIN="$bin" MEGABRIDGE_HOME="$root"
# submit_wait NAME [sbatch script args...]: submit slurm/NAME.sbatch and wait
# for it (polling scontrol: `sbatch -W` sleeps for seconds between its polls),
# then check the job's state, exit code and output file.
submit_wait() {
  local name="$1" id state="" code="" out="$work/$1.out"
  shift
  id="$(sbatch --parsable --nodes=1 --ntasks-per-node=4 --time=3 --chdir="$work" \
          --output="$out" "$root/slurm/$name.sbatch" "$@")"
  id="${id%%;*}"
  for _ in $(seq 1800); do  # up to 180 s
    read -r state code < <(scontrol show job -o "$id" |
      sed -n 's/.*JobState=\([A-Z_]*\) .* ExitCode=\([0-9:]*\).*/\1 \2/p')
    case "$state" in
      PENDING | CONFIGURING | RUNNING | COMPLETING | "") sleep 0.1 ;;
      *) break ;;
    esac
  done
  if [ "$state" != COMPLETED ] || [ "$code" != 0:0 ] || ! grep -q "$name.sbatch: exit status 0" "$out"; then
    echo "FAIL: $name.sbatch job $id: state ${state:-?}, exit code ${code:-?}"
    cat "$out" 2>/dev/null || true
    return 1
  fi
  log "$name.sbatch: job $id completed"
}

log "sbatch slurm/import.sbatch"
MEGABRIDGE_CONFIG="$work/import.yaml" MEGABRIDGE_ARGS="--quiet" submit_wait import
same_shards "$work/out-sbatch" "$work/out-srun"

log "sbatch slurm/export.sbatch"
submit_wait export "$work/export.yaml" --quiet
for f in "$fixture"/*.safetensors "$fixture"/model.safetensors.index.json; do
  cmp "$f" "$work/hf-back/$(basename "$f")" || { echo "FAIL: export differs: $(basename "$f")"; exit 1; }
done
log "export identical to the fixture"

log "sbatch slurm/verify.sbatch"
MEGABRIDGE_VERIFY_A="$fixture" MEGABRIDGE_VERIFY_B="$work/out-sbatch" submit_wait verify
grep -q 'tensors compared' "$work/verify.out" || { cat "$work/verify.out"; echo "FAIL: no verify summary"; exit 1; }
grep 'tensors compared' "$work/verify.out" | head -1

# --- 5. a pipeline through srun, then slurm/pipeline.sbatch --resume --------------
cat >"$work/pipeline.yaml" <<YAML
vars: {hf: $fixture, meg: $work/pipe}
steps:
  - import: {hf_path: "\${hf}", out: "\${meg}", tp: 2, pp: 2, buffer_mb: 16}
  - verify: {a: "\${hf}", b: "\${meg}"}
  - export: {megatron_path: "\${meg}", hf_path: "\${meg}-hf"}
  - verify: {a: "\${hf}", b: "\${meg}-hf"}
YAML
log "srun --mpi=pmix -n 4 megabridge run (4 steps)"
timeout 180 srun --mpi=pmix -n 4 --kill-on-bad-exit=1 --time=3 \
  "$bin" run "$work/pipeline.yaml" >"$work/pipeline-srun.log" 2>&1 ||
  { cat "$work/pipeline-srun.log"; echo "FAIL: the pipeline failed under srun"; exit 1; }
for s in "1/4 import" "2/4 verify" "3/4 export" "4/4 verify"; do
  grep -q "\[$s\]" "$work/pipeline-srun.log" || { cat "$work/pipeline-srun.log"; echo "FAIL: step [$s] not logged"; exit 1; }
done
same_shards "$work/pipe" "$work/out-mpirun"
for f in "$fixture"/*.safetensors "$fixture"/model.safetensors.index.json; do
  cmp "$f" "$work/pipe-hf/$(basename "$f")" || { echo "FAIL: pipeline export differs: $(basename "$f")"; exit 1; }
done
log "pipeline under srun: 4 steps, shards identical to mpirun's, export identical to the fixture"
log "sbatch slurm/pipeline.sbatch --resume"
submit_wait pipeline "$work/pipeline.yaml" --resume
[ "$(grep -c 'skipped: ' "$work/pipeline.out")" -eq 2 ] ||
  { cat "$work/pipeline.out"; echo "FAIL: pipeline.sbatch --resume did not skip the finished steps"; exit 1; }
log "pipeline.sbatch --resume: the import and the export skipped, both verify steps run again"

log "PASS"
