#include "runtime/op_registry.h"

namespace inlierq::rt {

void register_reduce_ops(OpRegistry& r) {}

}  // namespace inlierq::rt
