// The output cache (output_cache.h): a short list of freed blocks, oldest first.
#include "output_cache.h"

#include "workspace.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

namespace fastconv {
namespace cpu {
namespace {

struct Block {
    void* p;
    size_t size;
};

// The default: a sixteenth of the memory (a container's limit where smaller), at least
// 256 MiB and at most 4 GiB (1.5 GiB on a 24 GiB machine). Why so much: an output larger than the limit is fresh
// pages at every call, and the kernel zeroing them cost as much as the op itself. 64 x
// 128 x 128^2 NHWC average pool's grad input (537 MB), Zen 5: 26 ms a call with 256 MiB,
// 14 ms kept (benchmarks/NOTES.md, session 10).
// The machine's memory: the physical pages, or a container's memory limit where one is
// set and smaller (cgroup v2's memory.max, v1's memory.limit_in_bytes; "max" or a huge
// number when unset). 0 if none can be read.
size_t memory_bytes() {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    size_t bytes = pages > 0 && page > 0 ? size_t(pages) * size_t(page) : 0;
    for (const char* path : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
        if (FILE* f = std::fopen(path, "r")) {
            unsigned long long limit = 0;
            if (std::fscanf(f, "%llu", &limit) == 1 && limit > 0 && (bytes == 0 || limit < bytes))
                bytes = size_t(limit);
            std::fclose(f);
        }
    }
    return bytes;
}

size_t default_limit() {
    const size_t mib = size_t(1) << 20, memory = memory_bytes();
    const size_t sixteenth = memory ? memory / 16 : 256 * mib;
    return std::min(std::max(sixteenth, 256 * mib), 4096 * mib);
}

size_t limit_from_environment() {
    const char* env = std::getenv("FASTCONV_CPU_CACHE_MIB");
    if (!env || !*env) return default_limit();
    char* end = nullptr;
    const long long mib = std::strtoll(env, &end, 10);
    if (*end != '\0' || mib < 0)
        throw std::invalid_argument(std::string("FASTCONV_CPU_CACHE_MIB must be a number of MiB >= 0, got '") +
                                    env + "'");
    return size_t(mib) << 20;
}

struct Cache {
    std::mutex lock;
    std::vector<Block> kept;  // oldest first
    size_t held = 0, limit = limit_from_environment();
    uint64_t hits = 0, misses = 0;

    // Drops the oldest kept blocks until `held + extra` fits the limit.
    void evict_for(size_t extra) {
        size_t drop = 0;
        while (drop < kept.size() && held + extra > limit) held -= kept[drop].size, std::free(kept[drop++].p);
        kept.erase(kept.begin(), kept.begin() + drop);
    }
};

Cache& cache() {
    static Cache* c = new Cache;  // never destroyed: arrays may outlive static destruction
    return *c;
}

size_t round_to_pages(size_t bytes) { return (std::max<size_t>(bytes, 1) + 4095) / 4096 * 4096; }

}  // namespace

void* output_take(size_t bytes, size_t* size) {
    const size_t want = round_to_pages(bytes);
    if (want >= kMinCachedBytes) {
        Cache& c = cache();
        std::lock_guard<std::mutex> guard(c.lock);
        size_t best = c.kept.size();
        for (size_t i = 0; i < c.kept.size(); ++i) {
            const size_t s = c.kept[i].size;
            if (s >= want && s <= want + want / 4 && (best == c.kept.size() || s < c.kept[best].size)) best = i;
        }
        if (best < c.kept.size()) {
            const Block b = c.kept[best];
            c.kept.erase(c.kept.begin() + best);
            c.held -= b.size;
            ++c.hits;
            *size = b.size;
            return b.p;
        }
        ++c.misses;
    }
    *size = want;
    return alloc_block(want);
}

void output_give(void* block, size_t size) {
    if (size >= kMinCachedBytes) {
        Cache& c = cache();
        std::lock_guard<std::mutex> guard(c.lock);
        if (size <= c.limit) {
            c.evict_for(size);
            c.kept.push_back({block, size});
            c.held += size;
            return;
        }
    }
    std::free(block);
}

OutputCacheStats output_cache_stats() {
    Cache& c = cache();
    std::lock_guard<std::mutex> guard(c.lock);
    return {c.held, c.kept.size(), c.limit, c.hits, c.misses};
}

size_t output_cache_release() {
    Cache& c = cache();
    std::lock_guard<std::mutex> guard(c.lock);
    const size_t freed = c.held;
    for (const Block& b : c.kept) std::free(b.p);
    c.kept.clear();
    c.held = 0;
    return freed;
}

void output_cache_set_limit(size_t bytes) {
    Cache& c = cache();
    std::lock_guard<std::mutex> guard(c.lock);
    c.limit = bytes;
    c.evict_for(0);
}

}  // namespace cpu
}  // namespace fastconv
