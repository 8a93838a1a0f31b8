// Fault injection for the failure tests, driven by environment variables so
// that production runs are unaffected (both unset: no effect, no cost):
//   MEGABRIDGE_TEST_FAIL=<rank>:<n>[@<step>]  rank <rank> throws after writing n tensors
//                                       (of pipeline step <step> only, when given)
//   MEGABRIDGE_TEST_DELAY_MS=<ms>[@<rank>]  every rank (or only <rank>) sleeps this
//                                       long after each tensor (one slow rank: the
//                                       others find checksum hash states late)
//   MEGABRIDGE_TEST_HASH_WAIT_S=<s>    how long a rank waits for a checksum hash state while
//                                       converting (default 2 s; 0 with a slow rank: states
//                                       come late, and links are finished at the end)
//   MEGABRIDGE_TEST_HOLD_LOCK=<dir>     once it holds the output's lock, the job creates
//                                       <dir>/locked and waits (at most 120 s) until
//                                       <dir>/release exists: a deterministic second job
#pragma once

namespace mb {

void test_hook_after_tensor(int rank);
// The wait for a hash state while converting: `normal`, or the test's.
double test_hook_hash_wait_s(double normal);
// Called by the process that has just taken an output's lock.
void test_hook_after_lock();

// `megabridge run` says which step (1-based) runs; the tensor count restarts.
void test_hook_begin_step(int step);

}  // namespace mb
