// `megabridge plan`: what each rank will read and write, without converting.
#pragma once

#include <string>

#include "layout/import_plan.hpp"

namespace mb {

std::string plan_report(const ImportPlan& plan, bool per_shard);

}  // namespace mb
