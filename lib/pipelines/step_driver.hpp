// One driver for every conversion command (import, export, reshard; bench
// through them; `megabridge run` for a sequence of them). A command describes
// its source, sink and plan as a Step; run_step() runs it as
//
//   open     every rank  opens the inputs (small: a manifest)  any rank fails: exit 2
//   plan     rank 0      plans the work, serialised            fails: exit 2
//   check    every rank  collective checks of the inputs       any problem: exit 2
//   prepare  rank 0      creates the staged output             fails: exit 2
//   receive  every rank  the broadcast plan
//   execute  every rank  its share of the work                 throws: the job is aborted
//   settle   every rank  collectives after the work (progress, gathers, late checks);
//                        any problem: discard (rank 0), exit 2
//   commit   rank 0      manifest, rename into place           throws: the job is aborted
//
// so that error handling, the status broadcasts and the abort rule ("a failing
// rank fails the whole job promptly") live in one place. Exits before execute
// return 2 on every rank together, so a pipeline can stop cleanly after them;
// once ranks work independently, a failure aborts the MPI job.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace mb {

class MpiContext;

class Step {
 public:
  virtual ~Step() = default;
  virtual void open(MpiContext&) {}
  virtual std::string plan(MpiContext& mpi) = 0;
  // Returns a problem (empty: none). Collective: every rank calls it.
  virtual std::string check(MpiContext&) { return {}; }
  virtual void prepare(MpiContext&) {}
  virtual void receive(std::string blob, MpiContext& mpi) = 0;
  virtual void execute(MpiContext& mpi) = 0;
  // Returns a problem found after the work (empty: none). Collective.
  virtual std::string settle(MpiContext&) { return {}; }
  // Rank 0, after a problem in settle: removes what prepare created.
  virtual void discard() {}
  virtual void commit(MpiContext& mpi) = 0;
  // Rank 0, after commit: the step's exit code (verify: 1 when it found differences).
  virtual int exit_code() const { return 0; }
  // The staging directory a failing rank keeps its error in
  // (MpiContext::fail); empty for a step that writes nothing.
  virtual std::filesystem::path staging() const { return {}; }
  // Rank 0, for --dry-run: what the plan (as returned by plan()) does on `world` ranks.
  virtual std::string summary(const std::string& blob, int world) const = 0;
  // Rank 0, after plan(): every file the step reads and every directory
  // whose listing decides what it reads. `megabridge run` records their
  // identity in the step stamp, so that --resume can tell a finished step
  // whose sources changed since (docs/pipelines.md, "--resume").
  virtual std::vector<std::filesystem::path> sources() const { return {}; }
};

// Called on rank 0 by run_step once a step has planned (empty: none);
// `megabridge run` snapshots the step's sources() there. What it throws is
// the step's error, reported like a planning error (exit 2).
void set_planned_hook(std::function<void(const Step&)> hook);

// Runs every phase. Returns the exit code: rank 0's exit_code() after the
// commit, or 2 when the step stopped before converting (the error is logged by rank 0). Aborts the MPI job on a
// failure while converting or committing, through MpiContext::fail (the
// error is also kept in the step's staging directory).
int run_step(Step& step, MpiContext& mpi);

// open and plan only. Returns 0 and, on rank 0, the plan summary in `summary`;
// 2 on an error (logged by rank 0). Nothing is written.
int dry_run_step(Step& step, MpiContext& mpi, std::string& summary);

// Bytes per rank and the balance, as the dry-run summaries print them.
std::string balance_report(const std::vector<uint64_t>& bytes_per_rank, const char* what);

}  // namespace mb
