/*
 * Standalone check of both MSDA kernels against a double-precision CPU reference of the same contract.
 * No TensorRT, no PyTorch: this is the binary that gpu_check.sh runs under compute-sanitizer.
 *
 *   nvcc -std=c++17 -O2 -I.. msdaKernelTest.cu ../msdaKernel.cu ../msdaNaiveKernel.cu -o msdaKernelTest
 *   ./msdaKernelTest            # exit status 0 when every case passes
 *   ./msdaKernelTest --small    # one small case (what compute-sanitizer runs)
 */
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "msdaKernel.h"

using llmformer::msda::DataType;
using llmformer::msda::IndexType;
using llmformer::msda::Params;
using llmformer::msda::Status;

namespace
{

#define CHECK_CUDA(call)                                                                                               \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const err_ = (call);                                                                               \
        if (err_ != cudaSuccess)                                                                                       \
        {                                                                                                              \
            std::fprintf(stderr, "%s:%d CUDA error %s\n", __FILE__, __LINE__, cudaGetErrorString(err_));               \
            std::exit(2);                                                                                              \
        }                                                                                                              \
    } while (0)

struct Rng
{
    uint64_t state;
    float uniform(float lo, float hi)
    {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        float const u = static_cast<float>((state >> 40) & 0xFFFFFF) / static_cast<float>(0x1000000);
        return lo + (hi - lo) * u;
    }
};

struct Case
{
    std::string name;
    int32_t batch, heads, channels, queries, points;
    std::vector<std::pair<int32_t, int32_t>> shapes; // (H, W) per level
    DataType valueType;
    DataType locationType;
    IndexType indexType;
    float locLo, locHi;           // sampling locations drawn from [locLo, locHi]
    int32_t valueOffsetElems;     // > 0 misaligns the value pointer (forces the scalar path)
    bool nanLocation;             // first location of every group is NaN
    bool badLevel;                // last level's start runs past S: must contribute zero, not read out of bounds
};

float roundTo(DataType t, float v)
{
    return t == DataType::kFLOAT16 ? __half2float(__float2half_rn(v)) : v;
}

// The contract of models/msda.py in double precision, on the values as stored.
std::vector<double> reference(Case const& c, std::vector<float> const& value, std::vector<int64_t> const& starts,
    std::vector<float> const& loc, std::vector<float> const& w, int32_t S)
{
    int32_t const L = static_cast<int32_t>(c.shapes.size());
    int32_t const M = c.heads, D = c.channels, P = c.points, Lq = c.queries;
    std::vector<double> out(static_cast<size_t>(c.batch) * Lq * M * D, 0.0);
    for (int32_t n = 0; n < c.batch; ++n)
        for (int32_t q = 0; q < Lq; ++q)
            for (int32_t m = 0; m < M; ++m)
                for (int32_t l = 0; l < L; ++l)
                {
                    int64_t const H = c.shapes[l].first, W = c.shapes[l].second, start = starts[l];
                    if (start + H * W > S)
                    {
                        continue; // the kernels treat an inconsistent level as empty
                    }
                    for (int32_t p = 0; p < P; ++p)
                    {
                        size_t const k = ((((static_cast<size_t>(n) * Lq + q) * M + m) * L + l) * P + p);
                        double const x = static_cast<double>(loc[2 * k]) * W - 0.5;
                        double const y = static_cast<double>(loc[2 * k + 1]) * H - 0.5;
                        if (!(x > -1 && y > -1 && x < W && y < H))
                        {
                            continue;
                        }
                        int64_t const x0 = static_cast<int64_t>(std::floor(x));
                        int64_t const y0 = static_cast<int64_t>(std::floor(y));
                        double const fx = x - x0, fy = y - y0;
                        int64_t const cx[4] = {x0, x0 + 1, x0, x0 + 1};
                        int64_t const cy[4] = {y0, y0, y0 + 1, y0 + 1};
                        double const cw[4] = {(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy};
                        for (int32_t corner = 0; corner < 4; ++corner)
                        {
                            if (cx[corner] < 0 || cx[corner] >= W || cy[corner] < 0 || cy[corner] >= H)
                            {
                                continue;
                            }
                            int64_t const s = start + cy[corner] * W + cx[corner];
                            for (int32_t d = 0; d < D; ++d)
                            {
                                double const v = value[((static_cast<size_t>(n) * S + s) * M + m) * D + d];
                                out[((static_cast<size_t>(n) * Lq + q) * M + m) * D + d] += w[k] * cw[corner] * v;
                            }
                        }
                    }
                }
    return out;
}

template <typename T>
std::vector<T> pack(std::vector<float> const& v);
template <>
std::vector<float> pack<float>(std::vector<float> const& v)
{
    return v;
}
template <>
std::vector<__half> pack<__half>(std::vector<float> const& v)
{
    std::vector<__half> h(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        h[i] = __float2half_rn(v[i]);
    }
    return h;
}

void* upload(void const* host, size_t bytes, size_t padBytes = 0)
{
    void* dev = nullptr;
    CHECK_CUDA(cudaMalloc(&dev, bytes + padBytes + 1));
    if (bytes > 0)
    {
        CHECK_CUDA(cudaMemcpy(static_cast<char*>(dev) + padBytes, host, bytes, cudaMemcpyHostToDevice));
    }
    return dev;
}

template <typename T>
void* uploadAs(std::vector<float> const& v, size_t padElems = 0)
{
    std::vector<T> const packed = pack<T>(v);
    return upload(packed.data(), packed.size() * sizeof(T), padElems * sizeof(T));
}

std::vector<float> download(void const* dev, size_t count, DataType type)
{
    std::vector<float> out(count);
    if (type == DataType::kFLOAT16)
    {
        std::vector<__half> h(count);
        CHECK_CUDA(cudaMemcpy(h.data(), dev, count * sizeof(__half), cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < count; ++i)
        {
            out[i] = __half2float(h[i]);
        }
    }
    else
    {
        CHECK_CUDA(cudaMemcpy(out.data(), dev, count * sizeof(float), cudaMemcpyDeviceToHost));
    }
    return out;
}

bool runCase(Case const& c, uint64_t seed)
{
    Rng rng{seed};
    int32_t const L = static_cast<int32_t>(c.shapes.size());
    std::vector<int64_t> shapes, starts;
    int32_t S = 0;
    for (auto const& hw : c.shapes)
    {
        shapes.push_back(hw.first);
        shapes.push_back(hw.second);
        starts.push_back(S);
        S += hw.first * hw.second;
    }
    if (c.badLevel)
    {
        starts.back() = S; // runs past the end
    }
    size_t const nValue = static_cast<size_t>(c.batch) * S * c.heads * c.channels;
    size_t const nGroupPoints = static_cast<size_t>(c.batch) * c.queries * c.heads * L * c.points;
    size_t const nOut = static_cast<size_t>(c.batch) * c.queries * c.heads * c.channels;

    std::vector<float> value(nValue), loc(2 * nGroupPoints), w(nGroupPoints);
    for (auto& v : value)
        v = roundTo(c.valueType, rng.uniform(-1.F, 1.F));
    for (auto& v : loc)
        v = roundTo(c.locationType, rng.uniform(c.locLo, c.locHi));
    for (auto& v : w)
        v = roundTo(c.locationType, rng.uniform(0.F, 1.F));
    if (c.nanLocation)
    {
        for (size_t g = 0; g < nGroupPoints; g += static_cast<size_t>(L) * c.points)
            loc[2 * g] = std::numeric_limits<float>::quiet_NaN();
    }
    std::vector<double> const expected = reference(c, value, starts, loc, w, S);

    size_t const pad = static_cast<size_t>(c.valueOffsetElems);
    void* dValueAlloc = c.valueType == DataType::kFLOAT16 ? uploadAs<__half>(value, pad) : uploadAs<float>(value, pad);
    size_t const valueElem = c.valueType == DataType::kFLOAT16 ? sizeof(__half) : sizeof(float);
    void* dLoc = c.locationType == DataType::kFLOAT16 ? uploadAs<__half>(loc) : uploadAs<float>(loc);
    void* dW = c.locationType == DataType::kFLOAT16 ? uploadAs<__half>(w) : uploadAs<float>(w);
    void* dShapes = nullptr;
    void* dStarts = nullptr;
    if (c.indexType == IndexType::kINT64)
    {
        dShapes = upload(shapes.data(), shapes.size() * sizeof(int64_t));
        dStarts = upload(starts.data(), starts.size() * sizeof(int64_t));
    }
    else
    {
        std::vector<int32_t> s32(shapes.begin(), shapes.end()), st32(starts.begin(), starts.end());
        dShapes = upload(s32.data(), s32.size() * sizeof(int32_t));
        dStarts = upload(st32.data(), st32.size() * sizeof(int32_t));
    }
    void* dOut = nullptr;
    CHECK_CUDA(cudaMalloc(&dOut, nOut * valueElem + 1));

    Params p;
    p.value = static_cast<char*>(dValueAlloc) + pad * valueElem;
    p.spatialShapes = dShapes;
    p.levelStartIndex = dStarts;
    p.samplingLocations = dLoc;
    p.attentionWeights = dW;
    p.output = dOut;
    p.batch = c.batch;
    p.spatialSize = S;
    p.heads = c.heads;
    p.channels = c.channels;
    p.levels = L;
    p.queries = c.queries;
    p.points = c.points;
    p.valueType = c.valueType;
    p.locationType = c.locationType;
    p.indexType = c.indexType;

    bool ok = true;
    double const atol = c.valueType == DataType::kFLOAT16 ? 1e-2 : 1e-5;
    double const rtol = c.valueType == DataType::kFLOAT16 ? 1e-2 : 1e-5;
    for (int32_t naive = 0; naive < 2; ++naive)
    {
        CHECK_CUDA(cudaMemset(dOut, 0xFF, nOut * valueElem)); // NaN garbage: every output must be written
        Status const st = naive ? llmformer::msda::forwardNaive(p, nullptr) : llmformer::msda::forward(p, nullptr);
        CHECK_CUDA(cudaDeviceSynchronize());
        if (st != Status::kSUCCESS)
        {
            std::printf("FAIL %-34s %s: %s\n", c.name.c_str(), naive ? "naive" : "optimized",
                llmformer::msda::statusString(st));
            ok = false;
            continue;
        }
        std::vector<float> const got = download(dOut, nOut, c.valueType);
        double worst = 0.0;
        size_t bad = 0;
        for (size_t i = 0; i < nOut; ++i)
        {
            double const err = std::fabs(static_cast<double>(got[i]) - expected[i]);
            double const allowed = atol + rtol * std::fabs(expected[i]);
            if (!(err <= allowed))
            {
                ++bad;
            }
            worst = std::fmax(worst, err);
        }
        std::printf("%s %-34s %-9s max|err| %.3g\n", bad ? "FAIL" : "ok  ", c.name.c_str(),
            naive ? "naive" : "optimized", worst);
        ok = ok && bad == 0;
    }
    for (void* ptr : {dValueAlloc, dLoc, dW, dShapes, dStarts, dOut})
    {
        CHECK_CUDA(cudaFree(ptr));
    }
    return ok;
}

bool checkStatuses()
{
    Params p;
    p.batch = 1;
    p.heads = 0; // invalid
    p.channels = 32;
    p.levels = 1;
    p.points = 4;
    p.queries = 1;
    bool ok = llmformer::msda::forward(p, nullptr) == Status::kINVALID_ARGUMENT;
    p.heads = 8;
    p.spatialSize = 1LL << 20;
    p.batch = 1LL << 10; // N * S * M * D = 2^38
    ok = ok && llmformer::msda::forward(p, nullptr) == Status::kTOO_LARGE;
    ok = ok && llmformer::msda::forwardNaive(p, nullptr) == Status::kTOO_LARGE;
    p.batch = 0; // nothing to do is not an error, and touches no pointer
    p.spatialSize = 16;
    ok = ok && llmformer::msda::forward(p, nullptr) == Status::kSUCCESS;
    std::printf("%s status codes (invalid, too large, empty batch)\n", ok ? "ok  " : "FAIL");
    return ok;
}

} // namespace

int main(int argc, char** argv)
{
    bool const small = argc > 1 && std::strcmp(argv[1], "--small") == 0;
    using DT = DataType;
    using IT = IndexType;
    std::vector<Case> cases = {
        // name, N, M, D, Lq, P, shapes, value, loc, index, locLo, locHi, misalign, nan, badLevel
        {"fp32 L3 P4 D32 with a 1x1 level", 2, 8, 32, 40, 4, {{16, 12}, {8, 6}, {1, 1}}, DT::kFLOAT32, DT::kFLOAT32,
            IT::kINT32, -0.2F, 1.2F, 0, false, false},
    };
    if (!small)
    {
        std::vector<Case> more = {
            {"fp32 L4 P8 D64 int64 shapes", 1, 4, 64, 33, 8, {{20, 20}, {10, 10}, {5, 5}, {3, 2}}, DT::kFLOAT32,
                DT::kFLOAT32, IT::kINT64, -0.1F, 1.1F, 0, false, false},
            {"fp32 L1 P8 D32", 2, 2, 32, 17, 8, {{9, 31}}, DT::kFLOAT32, DT::kFLOAT32, IT::kINT32, 0.F, 1.F, 0, false,
                false},
            {"fp16 L3 P4 D32 fp32 locations", 2, 8, 32, 64, 4, {{32, 32}, {16, 16}, {8, 8}}, DT::kFLOAT16, DT::kFLOAT32,
                IT::kINT32, -0.2F, 1.2F, 0, false, false},
            {"fp16 L4 P8 D64 fp16 locations", 1, 4, 64, 21, 8, {{12, 10}, {6, 5}, {3, 3}, {1, 1}}, DT::kFLOAT16,
                DT::kFLOAT16, IT::kINT64, -0.2F, 1.2F, 0, false, false},
            {"fp16 generic L2 P3 D16", 1, 3, 16, 19, 3, {{7, 9}, {4, 5}}, DT::kFLOAT16, DT::kFLOAT32, IT::kINT32, -0.2F,
                1.2F, 0, false, false},
            {"fp32 scalar path D7 L5", 1, 2, 7, 13, 2, {{6, 6}, {5, 4}, {3, 3}, {2, 2}, {1, 1}}, DT::kFLOAT32,
                DT::kFLOAT32, IT::kINT32, -0.2F, 1.2F, 0, false, false},
            {"fp32 misaligned value pointer", 1, 8, 32, 25, 4, {{8, 8}, {4, 4}, {2, 2}}, DT::kFLOAT32, DT::kFLOAT32,
                IT::kINT32, -0.2F, 1.2F, 1, false, false},
            {"fp32 17 levels (naive fallback)", 1, 2, 32, 9, 2,
                {{4, 4}, {4, 3}, {3, 3}, {3, 2}, {2, 2}, {2, 1}, {1, 1}, {5, 5}, {4, 4}, {4, 3}, {3, 3}, {3, 2}, {2, 2},
                    {2, 1}, {1, 1}, {6, 2}, {2, 6}},
                DT::kFLOAT32, DT::kFLOAT32, IT::kINT32, 0.F, 1.F, 0, false, false},
            {"fp32 NaN locations and a bad level", 1, 8, 32, 31, 4, {{8, 8}, {4, 4}, {2, 2}}, DT::kFLOAT32,
                DT::kFLOAT32, IT::kINT64, -0.2F, 1.2F, 0, true, true},
            {"fp32 all locations outside the maps", 1, 8, 32, 11, 4, {{8, 8}, {4, 4}, {1, 1}}, DT::kFLOAT32,
                DT::kFLOAT32, IT::kINT32, 1.6F, 3.F, 0, false, false},
            {"fp32 wide generic, fewer threads than levels", 1, 1, 1, 5, 100,
                {{4, 4}, {4, 3}, {3, 3}, {3, 2}, {2, 2}, {2, 1}, {1, 1}, {5, 5}, {4, 4}, {4, 3}, {3, 3}, {3, 2}, {2, 2},
                    {2, 1}, {1, 1}, {6, 2}},
                DT::kFLOAT32, DT::kFLOAT32, IT::kINT32, -0.1F, 1.1F, 0, false, false},
        };
        cases.insert(cases.end(), more.begin(), more.end());
    }
    bool ok = checkStatuses();
    uint64_t seed = 1234;
    for (Case const& c : cases)
    {
        ok = runCase(c, seed++) && ok;
    }
    std::printf(ok ? "ALL PASSED\n" : "SOME FAILED\n");
    return ok ? 0 : 1;
}
