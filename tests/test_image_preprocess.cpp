// Images, preprocessing and image datasets. Numeric agreement with PIL and the OpenCV convention on real
// images is checked in tests/py/test_preprocess_vs_pil.py; these tests pin geometry and semantics.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "inlierq/dataset.h"
#include "inlierq/error.h"
#include "inlierq/image.h"
#include "inlierq/preprocess.h"
#include "test_helpers.h"

namespace fs = std::filesystem;
using namespace inlierq;

namespace {

// A fresh directory under the system temp dir, removed with the test.
struct TempDir {
  fs::path path;
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() / (std::string("inlierq_") + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

Image gradient_image(int w, int h) {
  Image img(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* p = img.at(x, y);
      p[0] = static_cast<uint8_t>(x * 255 / std::max(w - 1, 1));
      p[1] = static_cast<uint8_t>(y * 255 / std::max(h - 1, 1));
      p[2] = static_cast<uint8_t>((x + y) % 256);
    }
  return img;
}

std::string coco128_image(const std::string& id) {
  return test::assets_dir() + "/coco128/images/train2017/" + id + ".jpg";
}

float at_nchw(const Preprocessed& p, int c, int y, int x) {
  const auto& s = p.tensor.shape;
  return p.tensor.as<float>()[(c * s[2] + y) * s[3] + x];
}

}  // namespace

TEST(Image, ResizeOfConstantImageStaysConstant) {
  for (Interp interp : {Interp::Pil, Interp::Cv2})
    for (auto [w, h] : {std::pair{13, 7}, {416, 311}, {3, 5}, {1, 1}, {200, 200}}) {
      Image img(97, 61, 3, 0);
      for (size_t i = 0; i < img.pixels.size(); i += 3) img.pixels[i] = 17, img.pixels[i + 1] = 128, img.pixels[i + 2] = 255;
      const Image out = resize_image(img, w, h, interp);
      ASSERT_EQ(out.width, w);
      ASSERT_EQ(out.height, h);
      for (size_t i = 0; i < out.pixels.size(); i += 3)
        ASSERT_TRUE(out.pixels[i] == 17 && out.pixels[i + 1] == 128 && out.pixels[i + 2] == 255)
            << "interp " << static_cast<int>(interp) << " size " << w << "x" << h << " at " << i / 3;
    }
}

TEST(Image, ConventionsDifferOnlyWhenShrinking) {
  const Image img = gradient_image(40, 30);
  // Enlarging: both are plain bilinear with half-pixel centres (PIL rounds between its two passes).
  const Image a = resize_image(img, 100, 70, Interp::Pil), b = resize_image(img, 100, 70, Interp::Cv2);
  for (size_t i = 0; i < a.pixels.size(); ++i) ASSERT_LE(std::abs(a.pixels[i] - b.pixels[i]), 1) << i;
  // Shrinking 4×: cv2 interpolates between 2 pixels (aliasing), PIL averages over the footprint.
  Image stripes(40, 4);
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 40; ++x) std::fill_n(stripes.at(x, y), 3, (x % 2) ? 255 : 0);
  const Image pil = resize_image(stripes, 10, 4, Interp::Pil), cv = resize_image(stripes, 10, 4, Interp::Cv2);
  for (int x = 1; x < 9; ++x) {  // away from the edges, where PIL's kernel is cut short
    EXPECT_NEAR(pil.at(x, 1)[0], 128, 1) << x;  // antialiased: the mean of the stripes
    EXPECT_EQ(cv.at(x, 1)[0], 128);             // centre 4x+1.5 falls between a black and a white pixel
  }
  const Image cv3 = resize_image(stripes, 13, 4, Interp::Cv2);
  int extremes = 0;
  for (int x = 0; x < 13; ++x) extremes += cv3.at(x, 0)[0] < 64 || cv3.at(x, 0)[0] > 192;
  EXPECT_GT(extremes, 0) << "cv2 convention should alias on a 1-pixel stripe pattern";
}

TEST(Preprocess, LetterboxGeometryAndInverseMapping) {
  const Image img = gradient_image(640, 480);
  PreprocessSpec s = preprocess_preset("yolox");
  Preprocessed p = preprocess(img, s);
  const InputTransform& t = p.transform;
  EXPECT_EQ(p.tensor.shape, (std::vector<int64_t>{1, 3, 416, 416}));
  EXPECT_EQ(t.resized_width, 416);
  EXPECT_EQ(t.resized_height, 312);  // int(480 * 0.65)
  EXPECT_FLOAT_EQ(t.scale_x, 0.65f);
  EXPECT_FLOAT_EQ(t.offset_y, 0.f);
  EXPECT_FLOAT_EQ(at_nchw(p, 0, 312, 5), 114.f);  // padding below the image, before normalisation
  EXPECT_FLOAT_EQ(at_nchw(p, 0, 415, 415), 114.f);
  EXPECT_NE(at_nchw(p, 1, 311, 5), 114.f);

  s.align = Align::Center;
  p = preprocess(img, s);
  EXPECT_FLOAT_EQ(p.transform.offset_y, 52.f);  // (416 - 312) / 2
  EXPECT_FLOAT_EQ(at_nchw(p, 0, 51, 200), 114.f);
  EXPECT_FLOAT_EQ(at_nchw(p, 0, 364, 200), 114.f);

  // The image's full extent maps onto the resized area, and back.
  const auto full = p.transform.to_original({0, 52, 416, 364});
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(full[i], (std::array<float, 4>{0, 0, 640, 480})[i], 1e-3) << i;
  const std::array<float, 4> box{100.5f, 37.25f, 300, 411};
  const auto in = p.transform.to_input(box);
  EXPECT_NEAR(in[1], 37.25f * 0.65f + 52, 1e-4);
  const auto back = p.transform.to_original(in);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(back[i], box[i], 1e-3) << i;
  // Clipping: a detection reaching into the padding ends at the image border.
  const auto clipped = p.transform.to_original({-10, 0, 420, 416});
  EXPECT_EQ(clipped, (std::array<float, 4>{0, 0, 640, 480}));
}

TEST(Preprocess, LetterboxSizeFollowsPythonIntRule) {
  // 416/360*360 is 415.99999999999994 in double: YOLOX's int(w*r) gives 415, and so do we.
  PreprocessSpec s = preprocess_preset("yolox");
  const Preprocessed p = preprocess(gradient_image(360, 300), s);
  EXPECT_EQ(p.transform.resized_width, 415);
  EXPECT_EQ(p.transform.resized_height, 346);  // int(300 * 416/360)
  EXPECT_FLOAT_EQ(p.transform.scale_x, 415.f / 360.f);
  EXPECT_FLOAT_EQ(at_nchw(p, 0, 0, 415), 114.f);  // one column of padding on the right
}

TEST(Preprocess, ChannelOrderMeanStdAndLayout) {
  Image img(2, 1);
  const uint8_t px[] = {10, 20, 30, 200, 100, 0};
  std::copy(px, px + 6, img.pixels.begin());
  PreprocessSpec s;
  s.width = 2;
  s.height = 1;
  s.channels = ChannelOrder::BGR;
  s.scale = 0.5f;
  s.mean = {1, 2, 3};  // in output (BGR) order
  s.std = {2, 4, 8};
  Preprocessed p = preprocess(img, s);
  ASSERT_EQ(p.tensor.shape, (std::vector<int64_t>{1, 3, 1, 2}));
  const float* v = p.tensor.as<float>();
  // Plane B then G then R; each (x * 0.5 - mean) / std.
  const float want[] = {(15 - 1) / 2.f, (0 - 1) / 2.f, (10 - 2) / 4.f, (50 - 2) / 4.f, (5 - 3) / 8.f, (100 - 3) / 8.f};
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(v[i], want[i]) << i;

  s.layout = Layout::NHWC;
  s.channels = ChannelOrder::RGB;
  p = preprocess(img, s);
  ASSERT_EQ(p.tensor.shape, (std::vector<int64_t>{1, 1, 2, 3}));
  v = p.tensor.as<float>();
  const float want_rgb[] = {(5 - 1) / 2.f, (10 - 2) / 4.f, (15 - 3) / 8.f, (100 - 1) / 2.f, (50 - 2) / 4.f, (0 - 3) / 8.f};
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(v[i], want_rgb[i]) << i;
}

TEST(Preprocess, PadValueBeforeOrAfterNormalisation) {
  const Image img(100, 50, 3, 128);
  PreprocessSpec s = preprocess_preset("nanodet", 64);
  ASSERT_TRUE(s.pad_after_normalize);
  Preprocessed p = preprocess(img, s);
  EXPECT_FLOAT_EQ(p.transform.offset_y, 16.f);      // 100x50 → 64x32, centred
  EXPECT_FLOAT_EQ(at_nchw(p, 2, 0, 0), 0.f);       // pad written as-is
  EXPECT_FLOAT_EQ(at_nchw(p, 0, 30, 30), (128 - 103.53f) / 57.375f);
  s.pad_after_normalize = false;
  p = preprocess(img, s);
  EXPECT_FLOAT_EQ(at_nchw(p, 2, 0, 0), (0 - 123.675f) / 58.395f);  // pad 0 is a black pixel
}

TEST(Preprocess, SpecJsonRoundTripPresetsAndErrors) {
  for (const char* name : {"yolox", "nanodet", "fastestdet"}) {
    const PreprocessSpec s = preprocess_preset(name);
    const nlohmann::json j = s;
    EXPECT_EQ(j, nlohmann::json(j.get<PreprocessSpec>())) << name;
  }
  const PreprocessSpec f = load_preprocess_spec("fastestdet");
  EXPECT_EQ(f.width, 352);
  EXPECT_EQ(f.resize, ResizeMode::Stretch);
  EXPECT_EQ(load_preprocess_spec("yolox:640").height, 640);
  const PreprocessSpec o = load_preprocess_spec(R"({"preset": "yolox", "width": 320, "height": 256, "interp": "pil"})");
  EXPECT_EQ(o.width, 320);
  EXPECT_EQ(o.interp, Interp::Pil);
  EXPECT_EQ(o.pad_value, 114.f);

  auto message = [](const std::string& arg) {
    try {
      load_preprocess_spec(arg);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(R"({"width": 8, "height": 8, "pad_vale": 1})").find("unknown key 'pad_vale'"), std::string::npos);
  EXPECT_NE(message(R"({"width": 8, "height": 8, "layout": "chw"})").find("nchw, nhwc"), std::string::npos);
  EXPECT_NE(message(R"({"width": 8, "height": 8, "std": [1, 0, 1]})").find("std"), std::string::npos);
  EXPECT_NE(message(R"({"height": 8})").find("width and height"), std::string::npos);
  EXPECT_NE(message("yolox:0").find("bad input size"), std::string::npos);
  EXPECT_NE(message("/no/such/spec.json").find("/no/such/spec.json"), std::string::npos);
}

TEST(Image, PngRoundTripAndGrayscaleExpansion) {
  TempDir dir;
  const Image img = gradient_image(31, 17);
  save_png(dir.file("a.png"), img);
  const Image back = load_image(dir.file("a.png"));
  EXPECT_EQ(back.width, 31);
  EXPECT_EQ(back.height, 17);
  EXPECT_EQ(back.pixels, img.pixels);

  Image gray(4, 3, 1);
  for (size_t i = 0; i < gray.pixels.size(); ++i) gray.pixels[i] = static_cast<uint8_t>(i * 20);
  save_png(dir.file("g.png"), gray);
  const Image rgb = load_image(dir.file("g.png"));
  ASSERT_EQ(rgb.channels, 3);
  for (size_t i = 0; i < gray.pixels.size(); ++i)
    for (int c = 0; c < 3; ++c) ASSERT_EQ(rgb.pixels[i * 3 + c], gray.pixels[i]);
}

TEST(Image, DecodesRealJpeg) {
  const Image img = load_image(coco128_image("000000000009"));
  EXPECT_EQ(img.width, 640);
  EXPECT_EQ(img.height, 480);
  EXPECT_EQ(img.channels, 3);
}

TEST(Image, ErrorsNameTheFile) {
  TempDir dir;
  auto expect_error = [](const std::string& path, const std::string& fragment) {
    try {
      load_image(path);
      ADD_FAILURE() << "no error for " << path;
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(path), std::string::npos) << m;
      EXPECT_NE(m.find(fragment), std::string::npos) << m;
    }
  };
  write_bytes(dir.file("garbage.jpg"), "this is not an image at all");
  expect_error(dir.file("garbage.jpg"), "not a JPEG, PNG or BMP");
  write_bytes(dir.file("anim.gif"), std::string("GIF89a\x01\x00\x01\x00\x00\x00\x00;", 13));
  expect_error(dir.file("anim.gif"), "unsupported");
  write_bytes(dir.file("empty.png"), "");
  expect_error(dir.file("empty.png"), "empty");
  expect_error(dir.file("missing.png"), "No such file");
  // A real JPEG cut after its header: the header probe passes, decoding must not.
  std::ifstream f(coco128_image("000000000009"), std::ios::binary);
  std::string jpeg((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  write_bytes(dir.file("cut.jpg"), jpeg.substr(0, 700));
  EXPECT_EQ(probe_image(dir.file("cut.jpg")), "");
  expect_error(dir.file("cut.jpg"), "cannot decode");
}

TEST(Dataset, FolderListingSkipsCorruptFilesByName) {
  TempDir dir;
  const Image img = gradient_image(8, 6);
  save_png(dir.file("b.png"), img);
  save_png(dir.file("sub/a.PNG"), (fs::create_directories(dir.path / "sub"), img));
  write_bytes(dir.file("sub/broken.jpg"), "garbage");
  write_bytes(dir.file("notes.txt"), "not an image, not even looked at");
  const ImageFolder folder = scan_image_folder(dir.path.string());
  EXPECT_EQ(folder.paths, (std::vector<std::string>{dir.file("b.png"), dir.file("sub/a.PNG")}));
  ASSERT_EQ(folder.warnings.size(), 1u);
  EXPECT_NE(folder.warnings[0].find("sub/broken.jpg"), std::string::npos) << folder.warnings[0];

  const ImageFolder one = scan_image_folder(dir.path.string(), 1);
  EXPECT_EQ(one.paths, std::vector<std::string>{dir.file("b.png")});
}

TEST(Dataset, EmptyOrUnreadableFolderIsAnError) {
  TempDir dir;
  EXPECT_THROW(scan_image_folder(dir.file("nope")), Error);
  try {
    scan_image_folder(dir.path.string());
    ADD_FAILURE() << "empty folder accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no readable image"), std::string::npos) << e.what();
  }
  write_bytes(dir.file("x.jpg"), "garbage");
  try {
    scan_image_folder(dir.path.string());
    ADD_FAILURE() << "folder of corrupt files accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x.jpg"), std::string::npos) << e.what();
  }
}

TEST(Dataset, RealCocoFolderAndYoloLabels) {
  const ImageFolder folder = scan_image_folder(test::assets_dir() + "/coco128/images", 5);
  ASSERT_EQ(folder.paths.size(), 5u);
  EXPECT_TRUE(folder.warnings.empty());
  const std::string image = folder.paths[0];
  EXPECT_EQ(image, coco128_image("000000000009"));
  const std::string label = yolo_label_path(image);
  EXPECT_EQ(label, test::assets_dir() + "/coco128/labels/train2017/000000000009.txt");

  int w = 0, h = 0;
  ASSERT_EQ(probe_image(image, &w, &h), "");
  const auto boxes = load_yolo_labels(label, w, h);
  ASSERT_EQ(boxes.size(), 8u);
  // First line: "45 0.479492 0.688771 0.955609 0.5955" on a 640x480 image.
  EXPECT_EQ(boxes[0].class_id, 45);
  EXPECT_NEAR(boxes[0].x, (0.479492 - 0.955609 / 2) * 640, 1e-3);
  EXPECT_NEAR(boxes[0].y, (0.688771 - 0.5955 / 2) * 480, 1e-3);
  EXPECT_NEAR(boxes[0].w, 0.955609 * 640, 1e-3);
  EXPECT_NEAR(boxes[0].h, 0.5955 * 480, 1e-3);
  EXPECT_EQ(boxes[7].class_id, 49);  // the last line has no trailing newline

  EXPECT_TRUE(load_yolo_labels(test::assets_dir() + "/coco128/labels/train2017/none.txt", w, h).empty());
}

TEST(Dataset, YoloLabelErrorsAndPolygons) {
  TempDir dir;
  write_bytes(dir.file("p.txt"), "\n3 0.1 0.2 0.5 0.2 0.3 0.6\n");
  const auto boxes = load_yolo_labels(dir.file("p.txt"), 100, 200);
  ASSERT_EQ(boxes.size(), 1u);
  EXPECT_NEAR(boxes[0].x, 10, 1e-4);
  EXPECT_NEAR(boxes[0].w, 40, 1e-4);
  EXPECT_NEAR(boxes[0].h, 80, 1e-4);
  write_bytes(dir.file("bad.txt"), "1 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1\n");
  try {
    load_yolo_labels(dir.file("bad.txt"), 100, 100);
    ADD_FAILURE() << "malformed label accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.txt' line 2"), std::string::npos) << e.what();
  }
  EXPECT_EQ(yolo_label_path("data/images/val/x.y.jpeg"), "data/labels/val/x.y.txt");
  EXPECT_EQ(yolo_label_path("flat/x.png"), "flat/x.txt");
}
