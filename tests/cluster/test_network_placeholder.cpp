// Removed once the network models land.
#include <gtest/gtest.h>

#include "arch/Error.hpp"
#include "cluster/Network.hpp"

TEST(ClusterNetwork, NamesEveryCollectiveKind) { EXPECT_STREQ(ppu::cluster::coll_kind_name(ppu::cluster::CollKind::kAllGather), "all_gather"); }
