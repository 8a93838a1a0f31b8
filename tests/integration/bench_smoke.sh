#!/usr/bin/env bash
# `megabridge bench` on a tiny synthetic checkpoint (2 ranks, EP2, torch_dist,
# two repeats): the report lists every copy and phase in the order they ran, each phase's
# floor is what its neighbouring direct copies say (recomputed here from the
# JSON record's own wall times and sizes), so is its floor for the bytes it
# moved (input and output), the summary holds each repeat's ratios and their
# median (recomputed here), and the work directory keeps only
# the synthetic input. A second run (TP1 -> EP2, hdf5) checks the reshard's
# planned reads against the HF headers. The work directory's name holds a quote and a space:
# bench runs cp without a shell, so the name stays a name. The figures
# themselves are not judged: speed is measured by the benchmark, not by tests.
#   bench_smoke.sh BIN FIXTURE_DIR PYTHON
set -euo pipefail
bin="$1" fixture="$2" py="$3"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-bench-XXXXXX")"
trap 'rm -rf "$work"' EXIT
out="$(mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" bench --hf-config "$fixture/config.json" \
  --layers 1 --dir "$work/it's b" --ep 2 --format torch_dist --repeats 2)"
# Two repeats: cp -r in the first only, then each phase between direct copies of its input.
steps="$(awk '/^step /{on=1; next} /^phase /{on=0} on {print $1}' <<<"$out" | tr '\n' ' ')"
want="cp direct import direct export direct reshard direct direct import direct export direct reshard direct "
[ "$steps" = "$want" ] || { echo "$out"; echo "FAIL: steps '$steps', want '$want'"; exit 1; }
{ grep '^bench-json: ' <<<"$out" | cut -c13-; grep '^bench-summary-json: ' <<<"$out" | cut -c21-; } | "$py" -c '
import json, statistics, sys
lines = sys.stdin.read().splitlines()
records, summary = [json.loads(l) for l in lines[:-1]], json.loads(lines[-1])
assert [r["repeat"] for r in records] == [1, 2] and summary["repeats"] == 2, (len(records), summary)
for r in records:
    d = r["direct_copy_seconds"]
    assert len(d) == 4 and all(s > 0 for s in d), d
    sizes = [r["hf_bytes"]] + [r["megatron_bytes"]] * 3  # what each direct copy copied
    for i, name in enumerate(["import", "export", "reshard"]):
        n = r["hf_bytes"] if name == "import" else r["megatron_bytes"]
        direct = (d[i] * n / sizes[i] + d[i + 1] * n / sizes[i + 1]) / 2
        want = min(direct, r["cp_seconds"] * n / r["hf_bytes"])
        assert abs(r[name + "_direct_floor_seconds"] - direct) <= 1e-9 * max(direct, 1), name
        got = r[name + "_floor_seconds"]
        assert abs(got - want) <= 1e-9 * max(want, 1), (name, got, want)
        assert len(r[name]) == 2 and r[name + "_seconds"] > 0, name
        # Against the bytes moved: the floor scaled to the mean of input and output.
        out = r[name + "_out_bytes"]
        assert out > 0, name
        moved = want * (n + out) / (2 * n)
        assert abs(r[name + "_moved_floor_seconds"] - moved) <= 1e-9 * max(moved, 1), name
    # The import wrote the Megatron checkpoint the later copies copied; the export an HF
    # checkpoint as large as the input (same tensors, same dtypes: a few header bytes apart).
    assert r["import_out_bytes"] == r["megatron_bytes"], r["import_out_bytes"]
    assert abs(r["export_out_bytes"] - r["hf_bytes"]) < 0.01 * r["hf_bytes"], (r["export_out_bytes"], r["hf_bytes"])
    print("floors agree:", {k: round(v, 4) for k, v in r.items() if k.endswith("_floor_seconds")})
# cp -r ran once: both repeats are judged against the same cp.
assert records[0]["cp_seconds"] == records[1]["cp_seconds"]
# The summary: each phase'"'"'s ratios are the repeats'"'"' own, their median is the median.
for name in ["import", "export", "reshard"]:
    s = summary[name]
    xf = [r[name + "_seconds"] / r[name + "_floor_seconds"] for r in records]
    xm = [r[name + "_seconds"] / r[name + "_moved_floor_seconds"] for r in records]
    rss = max(rank["peak_rss"] for r in records for rank in r[name]) / 2**20
    for got, want in [(s["x_floor"], xf), (s["x_moved"], xm)]:
        assert all(abs(g - w) <= 1e-9 * w for g, w in zip(got, want, strict=True)), (name, got, want)
    assert abs(s["x_floor_median"] - statistics.median(xf)) <= 1e-9 * s["x_floor_median"], name
    assert abs(s["x_moved_median"] - statistics.median(xm)) <= 1e-9 * s["x_moved_median"], name
    assert abs(s["peak_rss_mib_max"] - rss) <= 1e-9 * rss, (name, s["peak_rss_mib_max"], rss)
    # Storage reads against the plan, from each record'"'"'s own counters: an import'"'"'s
    # checksum passes (its output read back) left out, an export'"'"'s or reshard'"'"'s counted.
    reads = []
    for r in records:
        got = sum(rank["read_bytes"] for rank in r[name])
        if name == "import":
            got -= min(got, sum(rank["checksum_read_bytes"] for rank in r[name]))
        reads.append(got / max(r[name + "_planned_read_bytes"], 1))
    assert all(abs(g - w) <= 1e-9 * max(w, 1) for g, w in zip(s["reads_vs_plan"], reads, strict=True)), (name, s["reads_vs_plan"], reads)
    assert s["reads_vs_plan_max"] == max(s["reads_vs_plan"]), name
print("summary agrees with the repeats")
'
grep -q '^summary of 2 repeats' <<<"$out" || { echo "$out"; echo "FAIL: no summary table"; exit 1; }
left="$(cd "$work/it's b" && ls -A | tr '\n' ' ')"
[ "$left" = ".megabridge-bench hf " ] || { echo "FAIL: bench left '$left' in its work directory"; exit 1; }
[ "$(ls -A "$work" | wc -l)" -eq 1 ] || { ls -A "$work"; echo "FAIL: bench wrote outside its work directory"; exit 1; }

# The reshard's planned storage reads (reshard_storage_reads), against a count
# from the HF safetensors headers: a reshard from TP1 to EP2 on two ranks
# reads every tensor once and every non-expert tensor a second time (EP
# splits only the experts, so both ranks' shards hold the rest, each read by
# its own rank), all in whole rows, counted exactly; the export reads each
# stored element once.
out="$(mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" bench --hf-config "$fixture/config.json" \
  --layers 1 --dir "$work/ep" --format hdf5 --reshard-ep 2)"
grep '^bench-json: ' <<<"$out" | cut -c13- | "$py" -c '
import glob, json, struct, sys
r = json.load(sys.stdin)
assert (r["layout"], r["reshard_layout"]) == ("TP1·PP1·EP1·ETP1", "TP1·PP1·EP2·ETP1"), r["reshard_layout"]
total = non_expert = 0
files = glob.glob(sys.argv[1] + "/*.safetensors")
assert files, sys.argv[1]
for f in files:
    with open(f, "rb") as fh:
        header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
    for name, t in header.items():
        if name == "__metadata__":
            continue
        n = t["data_offsets"][1] - t["data_offsets"][0]
        total += n
        non_expert += 0 if ".experts." in name else n
assert 0 < non_expert < total, (non_expert, total)
got = r["reshard_planned_read_bytes"]
assert got == total + non_expert, (got, total, non_expert)
print("reshard plan reads", got, "bytes =", total, "+", non_expert, "(non-expert, both ranks)")
# The export of the TP1 import reads each stored element once: every HF byte.
assert r["export_planned_read_bytes"] == total, (r["export_planned_read_bytes"], total)
' "$work/ep/hf"
for phase in import export reshard; do
  grep -q "^$phase reads from storage .* the plan needs " <<<"$out" ||
    { echo "$out"; echo "FAIL: no $phase read line"; exit 1; }
done
echo "OK: bench report and floors, the reshard's planned reads"
