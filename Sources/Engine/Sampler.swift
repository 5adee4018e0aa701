// Token sampling: greedy, or llama.cpp's default chain top-k -> top-p -> min-p -> temperature -> draw.
//
// Before either, OpenAI's logit adjustments when a request sets them (on a copy of the logits; the
// model's row is never written): logit_bias adds its value to its token's logit, and the presence and
// frequency penalties lower each token already sampled in this request by
//   presence_penalty * (count > 0) + frequency_penalty * count
// (count = times this sampler returned the token; prompt tokens do not count, as in OpenAI's definition
// and vLLM; a negative penalty raises them).
//
// Semantics (llama.cpp's llama-sampling.cpp, the order common_sampler uses):
//   - temperature 0: greedy; the highest logit wins, ties go to the lowest id.
//   - top-k (k > 0): keep the k highest logits (ties at the boundary: lower ids first).
//   - top-p (p < 1): softmax over what is left (at temperature 1), keep the smallest prefix of the
//     sorted candidates whose cumulative probability reaches p (the token that crosses p is kept).
//   - min-p (m > 0): keep candidates with p >= m * p_max, i.e. logit >= max + ln(m).
//   - temperature T: softmax(logit / T) over the survivors, then one draw.
// At least one candidate always survives (the maximum). NaN logits count as -infinity; if no logit is
// finite the result is the greedy choice.
//
// The draw uses xoshiro256** seeded through SplitMix64 from `seed` (Blackman & Vigna): the same seed
// and the same logits give the same token sequence on every platform. It does not reproduce
// llama.cpp's std::mt19937 stream, so seeded samples differ from llama.cpp's.
//
// No allocation per token: two scratch arrays of vocabulary size are made once (with logit adjustments,
// two more: the adjusted row and the penalties' counts, plus a list of the distinct tokens sampled that
// grows with the answer); top-k is a bounded heap selection, top-p pops from an in-place max-heap only as
// many candidates as it keeps.

import Glibc

public enum SamplingError: Error, Equatable, CustomStringConvertible {
    case invalidTemperature(Float)
    case invalidTopK(Int)
    case invalidTopP(Float)
    case invalidMinP(Float)
    case invalidMaxTokens(Int)
    case tooManyStops(Int)
    case invalidStop(index: Int, reason: String)
    case invalidVocabularySize(Int)
    case invalidPenalty(name: String, value: Float)
    case invalidLogitBias(token: Int32, bias: Float)
    case tooManyLogitBiases(Int)

    public var description: String {
        let L = SamplingParams.Limits.self
        switch self {
        case .invalidTemperature(let t): return "temperature \(t) must be a finite number in 0...\(L.maxTemperature)"
        case .invalidTopK(let k): return "top_k \(k) must be in 0...\(L.maxTopK) (0 disables it)"
        case .invalidTopP(let p): return "top_p \(p) must be in [0, 1] (1 disables it; 0 keeps only the most likely token)"
        case .invalidMinP(let p): return "min_p \(p) must be in [0, 1] (0 disables it)"
        case .invalidMaxTokens(let n): return "max_tokens \(n) must be in 1...\(L.maxTokens)"
        case .tooManyStops(let n): return "\(n) stop strings; at most \(L.maxStops)"
        case .invalidStop(let i, let r): return "stop string \(i): \(r)"
        case .invalidVocabularySize(let n): return "vocabulary size \(n) must be positive"
        case .invalidPenalty(let name, let v): return "\(name) \(v) must be a finite number in -\(L.maxPenalty)...\(L.maxPenalty)"
        case .invalidLogitBias(let t, let b):
            return "logit_bias for token \(t): the token must be in the vocabulary, listed once, and the bias a finite number in -\(L.maxLogitBias)...\(L.maxLogitBias) (got \(b))"
        case .tooManyLogitBiases(let n): return "\(n) logit_bias entries; at most \(L.maxLogitBiases)"
        }
    }
}

public struct SamplingParams: Sendable, Equatable {
    public enum Limits {
        public static let maxTemperature: Float = 100
        public static let maxTopK = 1 << 20
        public static let maxTokens = 1 << 20
        public static let maxStops = 16
        public static let maxStopBytes = 1024
        /// OpenAI's ranges.
        public static let maxPenalty: Float = 2
        public static let maxLogitBias: Float = 100
        public static let maxLogitBiases = 1024
    }

    /// 0 = greedy. Defaults follow llama.cpp (0.8, 40, 0.95, 0.05).
    public var temperature: Float
    /// 0 disables top-k.
    public var topK: Int
    /// 1 disables top-p.
    public var topP: Float
    /// 0 disables min-p.
    public var minP: Float
    /// nil: a random seed is drawn when the Sampler is made (see Sampler.seed).
    public var seed: UInt64?
    public var maxTokens: Int
    /// Generation stops before the first occurrence of any of these (see StopMatcher).
    public var stop: [String]
    /// OpenAI's penalties on tokens already sampled (0 = off), -2...2.
    public var presencePenalty: Float = 0
    public var frequencyPenalty: Float = 0
    /// Added to a token's logit before sampling, -100...100 (OpenAI's logit_bias); at most one per token.
    public var logitBias: [TokenBias] = []

    public init(temperature: Float = 0.8, topK: Int = 40, topP: Float = 0.95, minP: Float = 0.05,
                seed: UInt64? = nil, maxTokens: Int = 256, stop: [String] = []) {
        self.temperature = temperature; self.topK = topK; self.topP = topP; self.minP = minP
        self.seed = seed; self.maxTokens = maxTokens; self.stop = stop
    }

    /// Whether sampling starts from an adjusted copy of the logits (see the file comment).
    var adjustsLogits: Bool { penalises || !logitBias.isEmpty }
    /// Whether the sampler counts the tokens it returns (only the penalties need the counts).
    var penalises: Bool { presencePenalty != 0 || frequencyPenalty != 0 }

    /// Greedy decoding (temperature 0).
    public static func greedy(maxTokens: Int = 256, stop: [String] = []) -> SamplingParams {
        SamplingParams(temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0, maxTokens: maxTokens, stop: stop)
    }

    /// Throws a SamplingError naming the first out-of-range value.
    public func validate() throws {
        guard temperature.isFinite, temperature >= 0, temperature <= Limits.maxTemperature else {
            throw SamplingError.invalidTemperature(temperature)
        }
        guard topK >= 0, topK <= Limits.maxTopK else { throw SamplingError.invalidTopK(topK) }
        guard topP.isFinite, topP >= 0, topP <= 1 else { throw SamplingError.invalidTopP(topP) }
        guard minP.isFinite, minP >= 0, minP <= 1 else { throw SamplingError.invalidMinP(minP) }
        guard maxTokens >= 1, maxTokens <= Limits.maxTokens else { throw SamplingError.invalidMaxTokens(maxTokens) }
        guard stop.count <= Limits.maxStops else { throw SamplingError.tooManyStops(stop.count) }
        for (i, s) in stop.enumerated() {
            if s.isEmpty { throw SamplingError.invalidStop(index: i, reason: "empty") }
            if s.utf8.count > Limits.maxStopBytes {
                throw SamplingError.invalidStop(index: i, reason: "\(s.utf8.count) bytes; at most \(Limits.maxStopBytes)")
            }
        }
        for (name, v) in [("presence_penalty", presencePenalty), ("frequency_penalty", frequencyPenalty)]
        where !(v.isFinite && abs(v) <= Limits.maxPenalty) {
            throw SamplingError.invalidPenalty(name: name, value: v)
        }
        guard logitBias.count <= Limits.maxLogitBiases else { throw SamplingError.tooManyLogitBiases(logitBias.count) }
        var seen = Set<Int32>()
        for e in logitBias where e.token < 0 || !(e.bias.isFinite && abs(e.bias) <= Limits.maxLogitBias) || !seen.insert(e.token).inserted {
            throw SamplingError.invalidLogitBias(token: e.token, bias: e.bias)
        }
    }
}

/// One logit_bias entry.
public struct TokenBias: Sendable, Equatable {
    public var token: Int32
    public var bias: Float
    public init(token: Int32, bias: Float) { self.token = token; self.bias = bias }
}

/// xoshiro256** (Blackman & Vigna, 2018), state seeded with SplitMix64.
public struct Xoshiro256StarStar: RandomNumberGenerator, Sendable {
    private var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

    public init(seed: UInt64) {
        var x = seed
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s0 = splitmix(); s1 = splitmix(); s2 = splitmix(); s3 = splitmix()
    }

    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
        s2 ^= t
        s3 = s3 << 45 | s3 >> 19
        return result
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

public struct Sampler: Sendable {
    public let params: SamplingParams
    /// The seed in use (params.seed, or the one drawn at init): reusing it reproduces the run.
    public let seed: UInt64
    private var rng: Xoshiro256StarStar
    // Scratch candidates (id, logit), vocabulary-sized, allocated once.
    private var ids: [Int32]
    private var vals: [Float]
    /// With logit adjustments: the adjusted copy of a row (vocabulary-sized, allocated once), and how
    /// many times each token was returned so far, in first-sampled order (the penalties' counts).
    private var adjusted: [Float] = []
    private var sampledCounts: [Int32] = []   // vocabulary-sized, only with penalties
    private var sampledOrder: [Int32] = []    // each token sampled so far, once

    public init(params: SamplingParams, vocabSize: Int) throws {
        try params.validate()
        guard vocabSize > 0 else { throw SamplingError.invalidVocabularySize(vocabSize) }
        if let bad = params.logitBias.first(where: { Int($0.token) >= vocabSize }) {
            throw SamplingError.invalidLogitBias(token: bad.token, bias: bad.bias)
        }
        self.params = params
        seed = params.seed ?? UInt64.random(in: 0...UInt64.max)
        rng = Xoshiro256StarStar(seed: seed)
        ids = [Int32](repeating: 0, count: vocabSize)
        vals = [Float](repeating: 0, count: vocabSize)
        if params.adjustsLogits { adjusted = [Float](repeating: 0, count: vocabSize) }
        if params.penalises { sampledCounts = [Int32](repeating: 0, count: vocabSize) }
    }

    /// Index of the highest logit (ties: lowest index; NaN ignored; 0 when there is none).
    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
        let m = maxIgnoringNaN(logits)
        guard m > -Float.infinity else { return 0 }
        for i in 0..<logits.count where logits[i] == m { return Int32(i) }
        return 0
    }

    /// The largest value, NaN ignored (-inf when there is none). 16 lanes at a time.
    public static func maxIgnoringNaN(_ x: UnsafeBufferPointer<Float>) -> Float {
        let n = x.count
        var i = 0
        var acc = SIMD16<Float>(repeating: -.infinity)
        if let base = x.baseAddress {
            while i + 16 <= n {
                let v = UnsafeRawPointer(base + i).loadUnaligned(as: SIMD16<Float>.self)
                // NaN lanes compare false and keep the accumulator.
                acc.replace(with: v, where: v .> acc)
                i += 16
            }
        }
        var m = acc.max()
        while i < n { if x[i] > m { m = x[i] }; i += 1 }
        return m
    }

    /// The next token id for `logits` (one value per vocabulary id). An empty buffer returns 0. A
    /// buffer longer than the vocabulary size given at init grows the scratch once.
    public mutating func sample(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
        guard params.adjustsLogits, !logits.isEmpty else { return sampleRow(logits) }
        if adjusted.count < logits.count { adjusted = [Float](repeating: 0, count: logits.count) }
        let p = params
        let penalise = p.penalises
        adjusted.withUnsafeMutableBufferPointer { a in
            _ = a.initialize(from: logits)
            for e in p.logitBias where Int(e.token) < logits.count { a[Int(e.token)] += e.bias }
            guard penalise else { return }
            sampledCounts.withUnsafeBufferPointer { counts in
                for t in sampledOrder where Int(t) < logits.count {
                    a[Int(t)] -= p.presencePenalty + p.frequencyPenalty * Float(counts[Int(t)])
                }
            }
        }
        let token = adjusted.withUnsafeBufferPointer { a in
            sampleRow(UnsafeBufferPointer(rebasing: a[0..<logits.count]))
        }
        if penalise && token >= 0 {
            if Int(token) >= sampledCounts.count {
                sampledCounts += [Int32](repeating: 0, count: Int(token) + 1 - sampledCounts.count)
            }
            if sampledCounts[Int(token)] == 0 { sampledOrder.append(token) }
            sampledCounts[Int(token)] += 1
        }
        return token
    }

    private mutating func sampleRow(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
        let n = logits.count
        if n == 0 { return 0 }
        if params.temperature == 0 { return Self.argmax(logits) }
        if n > ids.count {
            ids = [Int32](repeating: 0, count: n)
            vals = [Float](repeating: 0, count: n)
        }
        let p = params
        var r = rng
        let result = ids.withUnsafeMutableBufferPointer { id in
            vals.withUnsafeMutableBufferPointer { v in
                Self.sampleChain(logits, p, id, v, &r)
            }
        }
        rng = r
        return result
    }

    // MARK: - Chain

    /// Candidate a ranks above candidate b: higher logit, then lower id.
    @inline(__always) private static func above(_ va: Float, _ ia: Int32, _ vb: Float, _ ib: Int32) -> Bool {
        va > vb || (va == vb && ia < ib)
    }

    private static func sampleChain(_ logits: UnsafeBufferPointer<Float>, _ p: SamplingParams,
                                    _ id: UnsafeMutableBufferPointer<Int32>, _ v: UnsafeMutableBufferPointer<Float>,
                                    _ rng: inout Xoshiro256StarStar) -> Int32 {
        let n = logits.count
        @inline(__always) func clean(_ x: Float) -> Float { x.isNaN ? -.infinity : x }

        // 1. top-k: candidates [0, c).
        var c: Int
        if p.topK > 0 && p.topK < n {
            c = p.topK
            // Min-heap of the k best so far, root = the worst of them.
            for i in 0..<c { id[i] = Int32(i); v[i] = clean(logits[i]) }
            for i in stride(from: c / 2 - 1, through: 0, by: -1) { siftDownMin(id, v, i, c) }
            // Later ids never win a tie, so only logits strictly above the root enter; whole chunks of
            // 16 with none above the root (the common case once the heap is warm) are skipped at once.
            var i = c
            @inline(__always) func offer(_ i: Int) {
                let x = logits[i]
                if x > v[0] {
                    id[0] = Int32(i); v[0] = x
                    siftDownMin(id, v, 0, c)
                }
            }
            if let base = logits.baseAddress {
                while i + 16 <= n {
                    let chunk = UnsafeRawPointer(base + i).loadUnaligned(as: SIMD16<Float>.self)
                    if any(chunk .> SIMD16<Float>(repeating: v[0])) {
                        for j in i..<(i + 16) { offer(j) }
                    }
                    i += 16
                }
            }
            while i < n { offer(i); i += 1 }
        } else {
            c = n
            for i in 0..<n { id[i] = Int32(i); v[i] = clean(logits[i]) }
        }

        var maxV = -Float.infinity
        for i in 0..<c where v[i] > maxV { maxV = v[i] }
        guard maxV.isFinite else {
            // All -inf/NaN, or +inf present: nothing to weigh; fall back to greedy over the candidates.
            var best = 0
            for i in 1..<max(c, 1) where above(v[i], id[i], v[best], id[best]) { best = i }
            return id[best]
        }

        // Candidates now live in [lo, lo + c).
        var lo = 0
        // 2. top-p over the softmax at temperature 1.
        if p.topP < 1 {
            var z = 0.0
            for i in 0..<c { z += Double(exp(v[i] - maxV)) }
            // Heapify as a max-heap, then pop the best to the back until the kept mass reaches p; the
            // popped elements end up in [c - kept, c) in descending order from c - 1 down.
            for i in stride(from: c / 2 - 1, through: 0, by: -1) { siftDownMax(id, v, i, c) }
            var size = c
            var cum = 0.0
            let target = Double(p.topP)
            while size > 0 {
                let top = (id[0], v[0])
                size -= 1
                id[0] = id[size]; v[0] = v[size]
                id[size] = top.0; v[size] = top.1
                if size > 0 { siftDownMax(id, v, 0, size) }
                cum += Double(exp(top.1 - maxV)) / z
                if cum >= target { break }
            }
            lo = size
            c -= size
        }

        // 3. min-p: keep logit >= max + ln(minP) (the maximum always passes).
        if p.minP > 0 {
            let threshold = maxV + log(p.minP)
            var w = lo
            for i in lo..<(lo + c) where v[i] >= threshold {
                id[w] = id[i]; v[w] = v[i]; w += 1
            }
            c = w - lo
        }

        // 4. temperature, softmax and one draw.
        let invT = 1 / p.temperature
        var total = 0.0
        for i in lo..<(lo + c) {
            let w = Double(exp((v[i] - maxV) * invT))
            v[i] = Float(w)        // v now holds unnormalised weights
            total += w
        }
        let u = rng.nextUnit() * total
        var acc = 0.0
        for i in lo..<(lo + c) {
            acc += Double(v[i])
            if u < acc { return id[i] }
        }
        // Rounding left u at the very top: the last candidate with weight.
        var last = lo
        for i in lo..<(lo + c) where v[i] > 0 { last = i }
        return id[last]
    }

    /// Sift down in a min-heap ordered by `above` reversed (root = lowest-ranked candidate).
    private static func siftDownMin(_ id: UnsafeMutableBufferPointer<Int32>, _ v: UnsafeMutableBufferPointer<Float>, _ start: Int, _ n: Int) {
        var i = start
        while true {
            let l = 2 * i + 1
            if l >= n { return }
            var m = l
            if l + 1 < n && above(v[m], id[m], v[l + 1], id[l + 1]) { m = l + 1 }
            if above(v[m], id[m], v[i], id[i]) { return }   // child ranks above parent: heap holds
            id.swapAt(i, m); v.swapAt(i, m)
            i = m
        }
    }

    /// Sift down in a max-heap (root = highest-ranked candidate).
    private static func siftDownMax(_ id: UnsafeMutableBufferPointer<Int32>, _ v: UnsafeMutableBufferPointer<Float>, _ start: Int, _ n: Int) {
        var i = start
        while true {
            let l = 2 * i + 1
            if l >= n { return }
            var m = l
            if l + 1 < n && above(v[l + 1], id[l + 1], v[m], id[m]) { m = l + 1 }
            if !above(v[m], id[m], v[i], id[i]) { return }
            id.swapAt(i, m); v.swapAt(i, m)
            i = m
        }
    }
}

/// One entry of a top-logprobs list.
public struct TokenLogprob: Sendable, Equatable {
    public let id: Int32
    /// Natural-log probability under softmax(logits) (temperature 1).
    public let logprob: Float
    public init(id: Int32, logprob: Float) { self.id = id; self.logprob = logprob }
}

public enum Logprobs {
    /// log(sum(exp(logits))), computed in Double around the maximum; NaN entries are ignored.
    public static func logSumExp(_ logits: UnsafeBufferPointer<Float>) -> Double {
        let m = Sampler.maxIgnoringNaN(logits)
        guard m.isFinite else { return Double(m) }
        var s = 0.0
        for x in logits where !x.isNaN { s += Double(exp(x - m)) }
        return Double(m) + Glibc.log(s)
    }

    /// The log-probability of token `id` (nil when out of range).
    public static func logprob(of id: Int32, in logits: UnsafeBufferPointer<Float>) -> Float? {
        guard id >= 0, Int(id) < logits.count else { return nil }
        return Float(Double(logits[Int(id)]) - logSumExp(logits))
    }

    /// The `count` most likely tokens, most likely first (ties: lower id first), with their
    /// log-softmax values.
    /// `logSumExp`: the row's logSumExp when the caller has it already (it costs a pass over the row).
    public static func top(_ logits: UnsafeBufferPointer<Float>, count: Int, logSumExp knownLSE: Double? = nil) -> [TokenLogprob] {
        let k = min(max(count, 0), logits.count)
        guard k > 0 else { return [] }
        let lse = knownLSE ?? logSumExp(logits)
        // Keep the k best in a small sorted array (k is small: typically <= 20).
        var best: [(id: Int32, v: Float)] = []
        best.reserveCapacity(k + 1)
        func offer(_ i: Int) {
            let x = logits[i].isNaN ? -Float.infinity : logits[i]
            if best.count == k, let last = best.last, !(x > last.v) { return }
            var j = best.count
            while j > 0 && x > best[j - 1].v { j -= 1 }
            best.insert((Int32(i), x), at: j)
            if best.count > k { best.removeLast() }
        }
        var i = 0
        let n = logits.count
        // Once k are held, skip chunks of 16 with nothing above the k-th best (later ids lose ties).
        if let base = logits.baseAddress {
            while i + 16 <= n {
                if best.count == k, let last = best.last {
                    let chunk = UnsafeRawPointer(base + i).loadUnaligned(as: SIMD16<Float>.self)
                    if !any(chunk .> SIMD16<Float>(repeating: last.v)) { i += 16; continue }
                }
                for j in i..<(i + 16) { offer(j) }
                i += 16
            }
        }
        while i < n { offer(i); i += 1 }
        return best.map { TokenLogprob(id: $0.id, logprob: Float(Double($0.v) - lse)) }
    }
}
