#include "pipelines/step_driver.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <functional>

#include "core/log.hpp"
#include "dist/mpi_context.hpp"

namespace mb {
namespace {

// Runs `work` on every rank; when any rank fails, rank 0 logs the first error
// and every rank returns false.
bool on_every_rank(MpiContext& mpi, const std::function<void()>& work) {
  std::string status = "ok";
  try {
    work();
  } catch (const std::exception& e) {
    status = e.what();
  }
  for (const auto& s : mpi.all_gather(status))
    if (s != "ok") {
      if (mpi.is_root()) log::error("{}", s);
      return false;
    }
  return true;
}

// Runs `work` on rank 0; its error, if any, is broadcast and logged by rank 0.
bool on_root(MpiContext& mpi, const std::function<void()>& work) {
  std::string status = "ok";
  if (mpi.is_root()) {
    try {
      work();
    } catch (const std::exception& e) {
      status = e.what();
    }
  }
  mpi.broadcast(status);
  if (status != "ok") {
    if (mpi.is_root()) log::error("{}", status);
    return false;
  }
  return true;
}

// A problem any rank reports; rank 0 logs the first one.
bool no_problem(MpiContext& mpi, const std::string& mine) {
  for (const auto& p : mpi.all_gather(mine))
    if (!p.empty()) {
      if (mpi.is_root()) log::error("{}", p);
      return false;
    }
  return true;
}

// Once ranks work independently a failing rank cannot wait for the others:
// it ends the whole job, its error logged and kept where it cannot be lost.
void or_abort(MpiContext& mpi, const Step& step, const std::function<void()>& work) {
  try {
    work();
  } catch (const std::exception& e) {
    mpi.fail(e.what(), step.staging());
  }
}

std::function<void(const Step&)> g_planned_hook;

}  // namespace

void set_planned_hook(std::function<void(const Step&)> hook) {
  g_planned_hook = std::move(hook);
}

int run_step(Step& step, MpiContext& mpi) {
  std::string blob;
  if (!on_every_rank(mpi, [&] { step.open(mpi); })) return 2;
  if (!on_root(mpi, [&] {
        blob = step.plan(mpi);
        if (g_planned_hook) g_planned_hook(step);
      }))
    return 2;
  if (!no_problem(mpi, step.check(mpi))) return 2;
  if (!on_root(mpi, [&] { step.prepare(mpi); })) return 2;
  mpi.broadcast(blob);
  step.receive(std::move(blob), mpi);
  or_abort(mpi, step, [&] { step.execute(mpi); });
  const std::string problem = step.settle(mpi);
  bool any = false;
  std::string first;
  for (const auto& p : mpi.all_gather(problem))
    if (!p.empty() && !any) any = true, first = p;
  if (any) {
    mpi.barrier();
    if (mpi.is_root()) {
      log::error("{}", first);
      step.discard();  // never committed; the target is untouched
    }
    return 2;
  }
  std::string code = "0";
  if (mpi.is_root())
    or_abort(mpi, step, [&] {
      step.commit(mpi);
      code = std::to_string(step.exit_code());
    });
  mpi.broadcast(code);  // also the barrier: every rank returns once rank 0 has committed
  return std::stoi(code);
}

int dry_run_step(Step& step, MpiContext& mpi, std::string& summary) {
  std::string blob;
  if (!on_every_rank(mpi, [&] { step.open(mpi); })) return 2;
  if (!on_root(mpi, [&] {
        blob = step.plan(mpi);
        summary = step.summary(blob, mpi.size());
      }))
    return 2;
  return 0;
}

std::string balance_report(const std::vector<uint64_t>& bytes_per_rank, const char* what) {
  std::string out;
  uint64_t sum = 0, max = 0;
  for (size_t r = 0; r < bytes_per_rank.size(); ++r) {
    out += fmt::format("  rank {:>4}  {} {:.3f} GiB\n", r, what,
                       static_cast<double>(bytes_per_rank[r]) / (1ull << 30));
    sum += bytes_per_rank[r];
    max = std::max(max, bytes_per_rank[r]);
  }
  const double mean = bytes_per_rank.empty()
                          ? 0.0
                          : static_cast<double>(sum) / static_cast<double>(bytes_per_rank.size());
  out += fmt::format("  total {:.3f} GiB; balance: busiest rank {:.2f}x the mean\n",
                     static_cast<double>(sum) / (1ull << 30),
                     mean > 0 ? static_cast<double>(max) / mean : 1.0);
  return out;
}

}  // namespace mb
