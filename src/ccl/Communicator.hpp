// Communicator: a group of devices (ranks) on one node and the collectives between them. Each call
// builds the algorithm's schedule (ccl/Algorithms), runs it on the fabric's flow model for the
// simulated time, and - on functional devices - moves and reduces the real data between the
// devices' buffers. A collective starts when every rank's stream is ready and advances each rank's
// stream to when that rank is done; it is recorded on every device (OpKind::kCollective).
//
//   NodeSpec node = load_node("zhenwu-8");
//   std::vector<std::unique_ptr<Device>> devs;  ... one Device(node.chip) per rank ...
//   Communicator comm(node, {d0, d1, ..., d7});
//   // one host thread driving every rank (a "group call"): one buffer per rank
//   CollectiveResult r = comm.all_reduce(sends, recvs);            // r.algorithm, r.time_s, r.busbw...
//   // or one host thread per rank, each with its own buffers; the last to arrive runs it
//   comm.all_reduce(rank, send, recv);                               // UserError after the timeout
//                                                                    // names ranks that never came
// Algorithms (and protocols) are chosen by simulating every one that applies and taking the fastest
// (cached per collective, size, dtype and root; on switch nodes among NCCL's algorithms), or given by
// name in CollectiveOptions::algorithm / protocol. A collective whose schedule would take the host
// more than kMaxScheduleWork flow updates to simulate (ccl/Schedule: tiny chunks, many channels, a
// deep pipeline, a large message) is a UserError naming the node's fields, raised before anything
// is timed - for every candidate of the selector, then for the schedule that runs.
//
// Not thread-safe except for the per-rank calls, which are meant to be called concurrently.
// Not here: several nodes (the cluster layer), stragglers, link failures.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "arch/NodeSpec.hpp"
#include "ccl/Algorithms.hpp"
#include "ccl/Collective.hpp"
#include "ccl/Fabric.hpp"
#include "runtime/Device.hpp"

namespace ppu {
class TraceWriter;
}

namespace ppu::ccl {

struct CommOptions {
  double rendezvous_timeout_s = 5.0;  // per-rank calls: how long (host seconds) a rank waits for the rest
  int host_threads = 0;               // threads moving functional data; 0: default_host_threads()
  std::vector<int> chips;             // rank r sits on chip chips[r] of the node; default: chip r
};

// One point-to-point transfer of a group send_recv: src's `send` into dst's `recv` (same size).
struct P2P {
  int src = 0, dst = 0;
  Buffer send, recv;
};

class Communicator {
 public:
  // Throws UserError: no devices, more ranks than the node has chips, a device whose chip is not
  // the node's, devices of mixed modes, or bad chip placements.
  Communicator(NodeSpec node, std::vector<Device*> devices, CommOptions options = {});
  ~Communicator();

  int size() const { return static_cast<int>(devices_.size()); }
  const NodeSpec& node() const { return fabric_.node(); }
  const Fabric& fabric() const { return fabric_; }
  Device& device(int rank) const { return *devices_[static_cast<size_t>(rank)]; }
  int chip_of(int rank) const { return chips_[static_cast<size_t>(rank)]; }

  // --- group calls: element r of each vector belongs to rank r. Streams: empty = default streams.
  CollectiveResult all_reduce(const std::vector<Buffer>& send, const std::vector<Buffer>& recv,
                              const CollectiveOptions& o = {}, const std::vector<Stream*>& streams = {});
  CollectiveResult reduce_scatter(const std::vector<Buffer>& send, const std::vector<Buffer>& recv,
                                  const CollectiveOptions& o = {}, const std::vector<Stream*>& streams = {});
  CollectiveResult all_gather(const std::vector<Buffer>& send, const std::vector<Buffer>& recv,
                              const CollectiveOptions& o = {}, const std::vector<Stream*>& streams = {});
  // The root's send buffer to every recv buffer (the root's too).
  CollectiveResult broadcast(const std::vector<Buffer>& send, const std::vector<Buffer>& recv,
                             const CollectiveOptions& o = {}, const std::vector<Stream*>& streams = {});
  // Reduction of every send buffer into the root's recv buffer (others' recv may be invalid).
  CollectiveResult reduce(const std::vector<Buffer>& send, const std::vector<Buffer>& recv,
                          const CollectiveOptions& o = {}, const std::vector<Stream*>& streams = {});
  CollectiveResult all_to_all(const std::vector<Buffer>& send, const std::vector<Buffer>& recv,
                              const CollectiveOptions& o = {}, const std::vector<Stream*>& streams = {});
  // counts[r][p]: elements rank r sends to rank p (blocks back to back in r's send buffer; rank p
  // receives them back to back in rank order).
  CollectiveResult all_to_all_v(const std::vector<Buffer>& send, const std::vector<Buffer>& recv,
                                const std::vector<std::vector<int64_t>>& counts, const CollectiveOptions& o = {},
                                const std::vector<Stream*>& streams = {});
  // Point-to-point transfers, all at once; a rank sends at most one buffer and receives at most one.
  CollectiveResult send_recv(const std::vector<P2P>& pairs, const CollectiveOptions& o = {},
                             const std::vector<Stream*>& streams = {});

  // --- per-rank calls: every rank of the communicator calls the same collective from its own host
  // thread with its own buffers and the same options; the call returns when the collective has run.
  CollectiveResult all_reduce(int rank, const Buffer& send, const Buffer& recv, const CollectiveOptions& o = {},
                              Stream* s = nullptr);
  CollectiveResult reduce_scatter(int rank, const Buffer& send, const Buffer& recv, const CollectiveOptions& o = {},
                                  Stream* s = nullptr);
  CollectiveResult all_gather(int rank, const Buffer& send, const Buffer& recv, const CollectiveOptions& o = {},
                              Stream* s = nullptr);
  CollectiveResult broadcast(int rank, const Buffer& send, const Buffer& recv, const CollectiveOptions& o = {},
                             Stream* s = nullptr);
  CollectiveResult reduce(int rank, const Buffer& send, const Buffer& recv, const CollectiveOptions& o = {},
                          Stream* s = nullptr);
  CollectiveResult all_to_all(int rank, const Buffer& send, const Buffer& recv, const CollectiveOptions& o = {},
                              Stream* s = nullptr);
  // send_counts[p]: elements this rank sends to rank p.
  CollectiveResult all_to_all_v(int rank, const Buffer& send, const Buffer& recv, const std::vector<int64_t>& send_counts,
                                const CollectiveOptions& o = {}, Stream* s = nullptr);
  // Sends `send` to send_peer and receives `recv` from recv_peer (-1: none) as one exchange.
  CollectiveResult send_recv(int rank, int send_peer, const Buffer& send, int recv_peer, const Buffer& recv,
                             const CollectiveOptions& o = {}, Stream* s = nullptr);

  // The algorithm the selector takes for `c` on `count` elements of `dtype` (layouts as in
  // ccl/Algorithms), and why.
  struct Choice {
    Algorithm algorithm;
    Protocol protocol;
    std::string reason;
  };
  Choice select(Collective c, int64_t count, DType dtype, const CollectiveOptions& o = {});

  // Keep every link transfer for write_trace (off by default: large collectives make many).
  void set_trace(bool on) { trace_ = on; }
  // Every rank's device lanes (streams, collectives, kernels), and one lane per link direction
  // (fabric resource other than a chip's HBM) that carried a traced transfer. Transfers that share a
  // link at the same time share its lane: the lane is cut wherever a transfer starts or ends, each
  // piece named by the collective and the ranks of the transfers it carries ("alltoall 3->5",
  // "alltoall 0->1-7", "allreduce 1,2->4"), neighbouring pieces with the same name joined; so no two
  // slices of a lane overlap. A slice's bytes are estimated at each transfer's mean rate.
  void write_trace(TraceWriter& w) const;

 private:
  struct RankCall {
    Buffer send, recv;
    Stream* stream = nullptr;
    std::vector<int64_t> counts;  // all-to-all-v: per peer
    int send_peer = -1, recv_peer = -1;
  };
  struct Round;
  CollectiveResult run(Collective c, std::vector<RankCall> calls, const CollectiveOptions& o);
  CollectiveResult join(int rank, Collective c, RankCall call, const CollectiveOptions& o);
  CollectiveResult group(Collective c, const std::vector<Buffer>& send, const std::vector<Buffer>& recv,
                         const CollectiveOptions& o, const std::vector<Stream*>& streams);
  ScheduleSpec spec_for(Collective c, Algorithm a, int64_t count, int64_t elem_bytes, const CollectiveOptions& o) const;
  std::vector<Algorithm> candidates(Collective c) const;
  std::vector<Protocol> protocols(Algorithm a) const;
  std::vector<Algorithm> auto_candidates(Collective c) const;

  Fabric fabric_;
  std::vector<Device*> devices_;
  std::vector<int> chips_, groups_;
  CommOptions options_;
  std::map<std::tuple<int, int64_t, int64_t, int, int, int>, Choice> selected_;
  std::vector<std::vector<unsigned char>> scratch_;
  bool trace_ = false;
  // One traced flow over chip-to-chip links: when its bytes moved, the link directions it crossed
  // (fabric resources; HBM left out), its collective and the ranks it went between.
  struct LinkTransfer {
    std::vector<int> links;
    double start_s = 0, end_s = 0, bytes = 0;
    Collective collective{};
    std::string algorithm;        // "direct/simple"
    std::vector<int> srcs, dsts;  // ranks, sorted
  };
  std::vector<LinkTransfer> link_transfers_;
  // Rendezvous of per-rank calls.
  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<Round> round_;
};

}  // namespace ppu::ccl
