#include "inlierq/npy.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "inlierq/error.h"
#include "util/atomic_file.h"

namespace inlierq {
namespace {

struct DescrType { const char* descr; DType dtype; };
const DescrType kTypes[] = {
    {"<f4", DType::Float}, {"<f8", DType::Double}, {"<f2", DType::Float16}, {"<i8", DType::Int64},
    {"<i4", DType::Int32}, {"<i2", DType::Int16}, {"|i1", DType::Int8}, {"|u1", DType::UInt8},
    {"|b1", DType::Bool},  {"<u2", DType::UInt16}, {"<u4", DType::UInt32}, {"<u8", DType::UInt64},
};

}  // namespace

TensorData read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open '" + path + "': " + std::strerror(errno));
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw Error("'" + path + "' is not a .npy file (bad magic)");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t h;
    f.read(reinterpret_cast<char*>(&h), 2);
    header_len = h;
  } else {
    f.read(reinterpret_cast<char*>(&header_len), 4);
  }
  if (!f || header_len > (1u << 20)) throw Error("'" + path + "': corrupt .npy header");
  std::string header(header_len, '\0');
  if (!f.read(header.data(), header_len)) throw Error("'" + path + "': truncated .npy header");

  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([^']+)'")))
    throw Error("'" + path + "': .npy header has no descr");
  std::string descr = m[1];
  if (descr == "=f4") descr = "<f4";
  TensorData t;
  for (const auto& d : kTypes)
    if (descr == d.descr) t.dtype = d.dtype;
  if (t.dtype == DType::Undefined) throw Error("'" + path + "': unsupported .npy dtype '" + descr + "'");
  if (std::regex_search(header, m, std::regex("'fortran_order':\\s*True")))
    throw Error("'" + path + "': Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)")))
    throw Error("'" + path + "': .npy header has no shape");
  std::string dims = m[1];
  std::regex num("\\d+");
  // The header is untrusted: the byte count is compared with what the file holds before allocating, and
  // each step is bounded so that the product cannot overflow.
  const auto data_start = f.tellg();
  f.seekg(0, std::ios::end);
  const uint64_t available = static_cast<uint64_t>(f.tellg() - data_start);
  f.seekg(data_start);
  uint64_t nbytes = dtype_size(t.dtype);
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), num); it != std::sregex_iterator(); ++it) {
    const std::string s = it->str();
    const uint64_t d = s.size() > 15 ? (uint64_t(1) << 62) : std::stoull(s);
    t.shape.push_back(static_cast<int64_t>(d));
    nbytes = (d && nbytes > available / d) ? available + 1 : nbytes * d;
  }
  if (nbytes > available)
    throw Error("'" + path + "': truncated .npy data (shape " + shape_str(t.shape) + " of " + dtype_name(t.dtype) +
                " needs more than the " + std::to_string(available) + " bytes the file holds)");
  t.bytes.resize(nbytes);
  if (nbytes && !f.read(reinterpret_cast<char*>(t.bytes.data()), static_cast<std::streamsize>(nbytes)))
    throw Error("'" + path + "': cannot read .npy data");
  return t;
}

void write_npy(const std::string& path, const TensorData& t) {
  const char* descr = nullptr;
  for (const auto& d : kTypes)
    if (d.dtype == t.dtype) descr = d.descr;
  if (!descr) throw Error(std::string("cannot write ") + dtype_name(t.dtype) + " tensors to .npy");
  std::string shape;
  for (size_t i = 0; i < t.shape.size(); ++i) shape += std::to_string(t.shape[i]) + ((t.shape.size() == 1 || i + 1 < t.shape.size()) ? "," : "");
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(1);
  out.push_back(0);
  uint16_t hl = static_cast<uint16_t>(header.size());
  out.append(reinterpret_cast<const char*>(&hl), 2);
  out += header;
  out.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  write_file_atomically(path, out);
}

}  // namespace inlierq
