#pragma once
// Image datasets on disk: a folder of images (calibration / evaluation) and YOLO txt labels.
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace inlierq {

struct ImageFolder {
  std::string root;
  std::vector<std::string> paths;     // readable images, sorted by path
  std::vector<std::string> warnings;  // "path: reason" for each file skipped as unreadable
};

// Scans dir recursively for .jpg/.jpeg/.png/.bmp (any case) and keeps the first `limit` readable ones
// (0 = all) in sorted path order. Readability is checked from the header only (probe_image), so listing
// thousands of images stays cheap; a file with corrupt pixel data still fails later in load_image.
// A path naming a single image file gives a one-image folder. Throws Error when dir is missing or holds
// no readable image (the message lists the first skipped files).
ImageFolder scan_image_folder(const std::string& dir, size_t limit = 0);

struct Image;
// Decodes the images of dir in sorted path order until `count` have decoded (0 = all), handing each to
// on_image(index, path, image). A file that cannot be read or decoded (truncated, corrupt, unsupported,
// too large) is skipped: its reason, which names it, goes to warnings, and the next file is tried.
// Throws Error when dir is missing or no file decodes.
ImageFolder load_image_folder(const std::string& dir, size_t count,
                              const std::function<void(size_t, const std::string&, Image&&)>& on_image);

// One ground-truth box in pixels: top-left corner and size (COCO's xywh).
struct LabeledBox {
  int class_id = 0;
  float x = 0, y = 0, w = 0, h = 0;
};

// The label file YOLO pairs with an image: the last "/images/" in the path becomes "/labels/" and the
// extension ".txt" (coco128/images/train2017/a.jpg → coco128/labels/train2017/a.txt).
std::string yolo_label_path(const std::string& image_path);

// Parses "class cx cy w h" lines (normalised to 0..1) into pixel boxes for an image of the given size.
// Segment lines ("class x1 y1 x2 y2 ...") become their bounding box. A missing file means no objects
// (YOLO's convention for background images) and gives an empty list; a malformed line throws Error
// naming the file and line.
std::vector<LabeledBox> load_yolo_labels(const std::string& label_path, int image_width, int image_height);

}  // namespace inlierq
