// tern-synth-coco: writes the synthetic COCO-format shapes data set.
//
//   tern-synth-coco --output DIR [--image-size 64] [--train-images 512]
//                   [--val-images 128] [--max-objects 4] [--num-classes 4]
//                   [--seed 1]
//
// Writes DIR/annotations/instances_{train,val}.json and DIR/{train,val}/*.png
// (the DATASET_COCO defaults); prints one summary line; exits 1 on an error.
#include <CLI/CLI.hpp>
#include <iostream>

#include "worker/detection/synth.h"

int main(int argc, char** argv) {
  tern::detection::SynthOptions options;
  CLI::App app{"Writes a synthetic COCO-format data set of coloured shapes."};
  app.add_option("--output", options.output_dir, "Output directory")
      ->required();
  app.add_option("--image-size", options.image_size,
                 "Square image side in pixels");
  app.add_option("--train-images", options.train_images, "Training images");
  app.add_option("--val-images", options.val_images, "Validation images");
  app.add_option("--max-objects", options.max_objects,
                 "Objects per image: 1 to this");
  app.add_option(
      "--num-classes", options.num_classes,
      "Number of shape classes (rectangle, ellipse, triangle, cross)");
  app.add_option("--seed", options.seed,
                 "Seed; the same seed gives the same files");
  CLI11_PARSE(app, argc, argv);

  const auto summary = tern::detection::WriteSynthCoco(options);
  if (!summary.ok()) {
    std::cerr << "tern-synth-coco: " << summary.status() << "\n";
    return 1;
  }
  std::cout << "wrote " << summary->train_images << " train images ("
            << summary->train_objects << " objects) and " << summary->val_images
            << " val images (" << summary->val_objects << " objects) to "
            << options.output_dir << "\n";
  return 0;
}
