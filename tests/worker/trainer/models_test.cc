#include "worker/trainer/models.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace tern::trainer {
namespace {

int64_t CountParameters(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

TEST(ModelsTest, ImageNetResNetsMatchReferenceParameterCounts) {
  // torchvision's resnet18 / resnet50 at 1000 classes.
  for (const auto& [arch, expected] :
       std::vector<std::pair<std::string, int64_t>>{{"resnet18", 11689512}, {"resnet50", 25557032}}) {
    ModelArchitecture a{arch, 3, 1000, 1.0};
    auto model = BuildClassifier(a);
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ(CountParameters(**model), expected) << arch;
  }
}

TEST(ModelsTest, CifarResNetsHaveExpectedDepthAndOutput) {
  for (const auto& [arch, convs] :
       std::vector<std::pair<std::string, int>>{{"resnet20", 19}, {"resnet32", 31}, {"resnet56", 55}}) {
    auto model = BuildClassifier({arch, 1, 10, 1.0});
    ASSERT_TRUE(model.ok());
    int n = 0;
    for (const auto& m : (*model)->modules(false)) {
      if (auto* conv = m->as<torch::nn::Conv2dImpl>()) n += conv->options.kernel_size()->at(0) == 3;
    }
    EXPECT_EQ(n, convs) << arch;  // 3x3 convolutions: stem + 2 per block
    const at::Tensor y = (*model)->forward(torch::randn({2, 1, 28, 28}));
    EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 10}));
  }
  auto resnet34 = BuildClassifier({"resnet34", 3, 10, 0.25});
  ASSERT_TRUE(resnet34.ok());
  EXPECT_EQ((*resnet34)->forward(torch::randn({1, 3, 64, 64})).sizes(), (std::vector<int64_t>{1, 10}));
}

TEST(ModelsTest, ArchitectureJsonRoundTripsAndRejectsGarbage) {
  ModelArchitecture a{"resnet56", 3, 100, 0.5};
  auto b = ModelArchitecture::FromJson(a.ToJson());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->arch, "resnet56");
  EXPECT_EQ(b->num_classes, 100);
  EXPECT_DOUBLE_EQ(b->width_multiplier, 0.5);
  EXPECT_FALSE(ModelArchitecture::FromJson("{}").ok());
  EXPECT_FALSE(ModelArchitecture::FromJson("garbage").ok());
  EXPECT_FALSE(BuildClassifier({"resnet7", 3, 10, 1.0}).ok());
  EXPECT_FALSE(BuildClassifier({"resnet20", 3, 1, 1.0}).ok());
}

}  // namespace
}  // namespace tern::trainer
