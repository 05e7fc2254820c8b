// Test helper: preprocess images and write the tensors as .npy, so Python can compare them with PIL and
// numpy references.
//   preprocess_tool IMAGE SPEC OUT.npy [DECODED.npy]
//   preprocess_tool --jobs FILE      one job per line, fields separated by tabs as above
// SPEC is a preset ("yolox", "nanodet:320"), inline JSON or a JSON file. DECODED.npy receives the decoded
// RGB pixels (uint8 [H, W, 3]) to separate decoder differences from resize differences. Each job prints
// one JSON line with the effective spec and the transform, or {"error": message}. --jobs exists because the binary links libtorch
// (through the library) and pays about a second to start.
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "inlierq/error.h"
#include "inlierq/npy.h"
#include "inlierq/preprocess.h"

using namespace inlierq;

namespace {

void run_job(const std::vector<std::string>& a) {
  if (a.size() != 3 && a.size() != 4) throw Error("a job needs IMAGE SPEC OUT.npy [DECODED.npy]");
  const PreprocessSpec spec = load_preprocess_spec(a[1]);
  const Image img = load_image(a[0]);
  const Preprocessed p = preprocess(img, spec);
  write_npy(a[2], p.tensor);
  if (a.size() == 4) {
    TensorData d;
    d.dtype = DType::UInt8;
    d.shape = {img.height, img.width, img.channels};
    d.bytes = img.pixels;
    write_npy(a[3], d);
  }
  std::cout << nlohmann::json{{"spec", spec}, {"transform", p.transform}}.dump() << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() < 2 || args.size() > 4 || (args[0] == "--jobs") != (args.size() == 2)) {
    std::cerr << "usage: preprocess_tool IMAGE SPEC OUT.npy [DECODED.npy] | --jobs FILE\n";
    return 2;
  }
  try {
    if (args[0] != "--jobs") {
      run_job(args);
      return 0;
    }
    std::ifstream f(args[1]);
    if (!f) throw Error("cannot open jobs file '" + args[1] + "'");
    for (std::string line; std::getline(f, line);) {
      if (line.empty()) continue;
      std::vector<std::string> fields;
      std::stringstream ss(line);
      for (std::string field; std::getline(ss, field, '\t');) fields.push_back(field);
      try {
        run_job(fields);
      } catch (const Error& e) {  // one line per job, so a failing job does not hide the others
        std::cout << nlohmann::json{{"error", e.what()}}.dump() << std::endl;
      }
    }
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
