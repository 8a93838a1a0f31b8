// Fault injection for the failure tests, driven by environment variables so
// that production runs are unaffected (both unset: no effect, no cost):
//   MEGABRIDGE_TEST_FAIL=<rank>:<n>[@<step>]  rank <rank> throws after writing n tensors
//                                       (of pipeline step <step> only, when given)
//   MEGABRIDGE_TEST_DELAY_MS=<ms>       every rank sleeps this long after each tensor
#pragma once

namespace mb {

void test_hook_after_tensor(int rank);

// `megabridge run` says which step (1-based) runs; the tensor count restarts.
void test_hook_begin_step(int step);

}  // namespace mb
