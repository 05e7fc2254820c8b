#include "runtime/op_registry.h"

namespace inlierq::rt {

void register_norm_ops(OpRegistry& r) {}

}  // namespace inlierq::rt
