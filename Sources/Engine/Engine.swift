// Engine: sequences with their KV caches, and the batched forward pass (llama2.c's `forward`, batched).
//
// One Engine is driven by one thread (the worker's scheduler thread); it owns a pool of compute threads.
// A forward call takes a batch of (sequence, tokens) items — prompt chunks and single decode tokens mixed —
// runs every token through the network as one matrix-matrix pass per weight matrix, appends K/V to each
// sequence's cache and returns logits for the last token of each item (or for every token).
import CSwitchyardKernels
#if canImport(Glibc)
import Glibc
#endif

public struct SequenceID: Hashable, Sendable, CustomStringConvertible {
    public let raw: Int32
    public var description: String { "seq#\(raw)" }
}

public enum EngineError: Error, Sendable, Equatable, CustomStringConvertible {
    case unknownSequence(SequenceID)
    case contextFull(SequenceID, length: Int, adding: Int, max: Int)
    case tokenOutOfRange(Int32, vocab: Int)
    case badArgument(String)
    case outOfMemory(String)

    public var description: String {
        switch self {
        case .unknownSequence(let s): return "engine: unknown sequence \(s)"
        case .contextFull(let s, let l, let a, let m): return "engine: \(s) has \(l) tokens, adding \(a) exceeds its context of \(m)"
        case .tokenOutOfRange(let t, let v): return "engine: token id \(t) outside vocabulary of \(v)"
        case .badArgument(let s): return "engine: \(s)"
        case .outOfMemory(let s): return "engine: out of memory: \(s)"
        }
    }
}

/// Instruction-set level of the numeric kernels. The best one the CPU supports is used unless lowered
/// (tests, benchmarks, or the SWITCHYARD_ISA environment variable read when an Engine is created).
/// Process-wide: it applies to every engine in the process.
public enum KernelISA: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case scalar = 0, avx2 = 1, avx512 = 2

    /// Parses "scalar", "avx2", "avx512".
    public init?(name: String) {
        switch name.lowercased() {
        case "scalar": self = .scalar
        case "avx2": self = .avx2
        case "avx512", "avx512vnni": self = .avx512
        default: return nil
        }
    }
    public var description: String { self == .scalar ? "scalar" : self == .avx2 ? "avx2" : "avx512" }
    /// The best level this CPU supports.
    public static var best: KernelISA { KernelISA(rawValue: syk_cpu_features()) ?? .scalar }
    /// The level in use.
    public static var current: KernelISA { KernelISA(rawValue: syk_get_isa()) ?? .scalar }
    /// Uses `level`, or the best supported one below it; returns the level now in use.
    @discardableResult public static func set(_ level: KernelISA) -> KernelISA {
        KernelISA(rawValue: syk_set_isa(level.rawValue)) ?? .scalar
    }
    /// Applies SWITCHYARD_ISA if set to a known name (unknown names are ignored: the best level stays).
    static func applyEnvironment() {
        guard let e = getenv("SWITCHYARD_ISA"), let isa = KernelISA(name: String(cString: e)) else { return }
        set(isa)
    }
}

/// One item of a forward batch: tokens to append to a sequence (a prompt chunk or one decode token).
public struct BatchItem: Sendable {
    public var sequence: SequenceID
    public var tokens: [Int32]
    public init(sequence: SequenceID, tokens: [Int32]) { self.sequence = sequence; self.tokens = tokens }
}

public enum LogitsMode: Sendable { case last, all }

/// Logits of a forward call: views into the engine's buffer, valid until its next forward call.
public struct ForwardOutput {
    /// First logits row of each item; with `.last` item i has one row, with `.all` one per token.
    public let firstRow: [Int]
    public let rowCount: Int
    public let vocabSize: Int
    let base: UnsafeMutablePointer<Float>

    /// Logits of the last token of item `item`.
    public func logits(item: Int) -> UnsafeBufferPointer<Float> {
        let next = item + 1 < firstRow.count ? firstRow[item + 1] : rowCount
        return row(next - 1)
    }

    /// Logits row `r` (0..<rowCount).
    public func row(_ r: Int) -> UnsafeBufferPointer<Float> {
        precondition(r >= 0 && r < rowCount, "logits row out of range")
        return UnsafeBufferPointer(start: base + r * vocabSize, count: vocabSize)
    }
}

/// A sequence's KV cache: fp16, [layer][k|v][position][kvDim]; `length` positions are valid.
final class KVSequence {
    let maxContext: Int
    var length = 0
    let cache: UnsafeMutablePointer<UInt16>
    let layerStride: Int   // elements per layer (k and v)
    let kvDim: Int

    init(maxContext: Int, nLayer: Int, kvDim: Int) throws {
        self.maxContext = maxContext
        self.kvDim = kvDim
        layerStride = 2 * maxContext * kvDim
        let (n, o) = layerStride.multipliedReportingOverflow(by: nLayer)
        guard !o else { throw EngineError.badArgument("KV cache size overflows") }
        cache = .allocate(capacity: max(n, 1))
    }
    deinit { cache.deallocate() }

    func k(_ layer: Int) -> UnsafeMutablePointer<UInt16> { cache + layer * layerStride }
    func v(_ layer: Int) -> UnsafeMutablePointer<UInt16> { cache + layer * layerStride + maxContext * kvDim }
}

/// Not thread-safe: one thread at a time drives an Engine (@unchecked Sendable so it can be handed to it).
public final class Engine: @unchecked Sendable {
    public let model: Model
    public let config: ModelConfig
    public let threads: Int
    /// Tokens per internal pass; larger batches are processed in chunks of this size.
    public let maxBatchTokens: Int

    /// The tensor-parallel group this engine is a shard of (nil: the whole model in this process).
    public let group: TPGroup?
    /// This shard's hyper-parameters (local head counts and FFN width; == config without sharding).
    let local: ModelConfig

    private var sequences: [Int32: KVSequence] = [:]
    private var nextID: Int32 = 1
    private let pool: OpaquePointer

    // ---- RunState: every buffer preallocated for T = maxBatchTokens tokens ----
    private let x: UnsafeMutablePointer<Float>        // [T][dim] residual stream
    private let qkv: UnsafeMutablePointer<Float>      // [T][dim + 2*kvDim]: q | k | v
    private let att: UnsafeMutablePointer<Float>      // [T][dim] attention output (before wo)
    private let gu: UnsafeMutablePointer<Float>       // [T][2*ff]: gate | up
    private let hbuf: UnsafeMutablePointer<Float>     // [T][ff] silu(gate)*up
    private let actQs: UnsafeMutablePointer<Int8>     // [T][maxK] quantized activations
    private let actD: UnsafeMutablePointer<Float>     // [T][maxK/32]
    private let actS: UnsafeMutablePointer<Float>     // [T][maxK/32]
    private let actSum: UnsafeMutablePointer<Int32>   // [T][maxK/32]
    private let actBias4: UnsafeMutablePointer<Int32> // [T][maxK/4]
    private let act: UnsafeMutablePointer<syk_act>
    private let ropeCos: UnsafeMutablePointer<Float>  // [T][headDim/2]
    private let ropeSin: UnsafeMutablePointer<Float>  // [T][headDim/2]
    private let attnToks: UnsafeMutablePointer<syk_attn_tok>  // [T]
    private let scores: UnsafeMutablePointer<Float>   // [threads][scratchRows * contextLength]
    /// Attention scratch rows per thread: grouped attention keeps scores and rescale factors for up to 4 heads
    /// (8 rows); the tiled kernel keeps one KV head transposed to f32 (headDim rows).
    private let scratchRows: Int
    static let scoreRows = 8
    private let tokPos: UnsafeMutablePointer<Int>     // [T] position of each token in its sequence
    private let tokSeq: UnsafeMutablePointer<Unmanaged<KVSequence>>  // [T]
    private let tokLogit: UnsafeMutablePointer<Int>   // [T] logits row for the token or -1
    // Logits: [logitCapacity][vocab], grown on demand (only `.all` with many tokens needs more).
    private var logitCapacity: Int
    private var logitBuf: UnsafeMutablePointer<Float>
    private var xl: UnsafeMutablePointer<Float>       // [logitCapacity][dim] rows that need logits

    /// Test-only hook (nil in production): sees intermediate activations inside a forward pass, named like
    /// llama.cpp's graph tensors (for layer-by-layer comparison with its eval callback). Rows are tokens.
    var debugTap: ((_ name: String, _ layer: Int, _ data: UnsafePointer<Float>, _ rows: Int, _ cols: Int, _ ld: Int) -> Void)?

    /// Bytes of KV cache per token of context (all layers, K and V, fp16; a shard stores only its KV heads).
    public var kvBytesPerToken: Int { local.nLayer * 2 * local.kvDim * MemoryLayout<UInt16>.size }

    /// - threads: compute threads including the caller. spin: iterations a pool thread spins before sleeping.
    /// - group: for a model loaded as a tensor-parallel shard (ModelOptions.shard with size > 1), the group
    ///   whose shared memory carries the all-reduce; it must be attached as the model's rank. nil otherwise.
    public init(model: Model, threads: Int = 1, maxBatchTokens: Int = 512, spin: Int = 1 << 15,
                group: TPGroup? = nil) throws {
        guard threads >= 1, threads <= 256 else { throw EngineError.badArgument("threads must be 1...256") }
        guard maxBatchTokens >= 1, maxBatchTokens <= 1 << 16 else { throw EngineError.badArgument("maxBatchTokens must be 1...65536") }
        if let group {
            guard group.rank == model.shard.rank, group.size == model.shard.size else {
                throw EngineError.badArgument("group handle is rank \(group.rank) of \(group.size), model is \(model.shard)")
            }
            // Equal, not just within: every shard of a group must accept exactly the batches the leader
            // publishes (a follower with a smaller limit would fail a forward its leader accepted).
            guard group.dim == model.config.dim, maxBatchTokens == group.maxBatchTokens else {
                throw EngineError.badArgument("group sized for dim \(group.dim) and \(group.maxBatchTokens) tokens; engine has dim \(model.config.dim) and \(maxBatchTokens) (they must be equal)")
            }
        } else if model.shard.size > 1 {
            throw EngineError.badArgument("\(model.shard) needs a TPGroup")
        }
        self.group = group
        self.local = model.localConfig
        self.model = model
        self.config = model.config
        self.maxBatchTokens = maxBatchTokens
        KernelISA.applyEnvironment()
        guard let p = syk_pool_create(Int32(threads), Int32(spin)) else { throw EngineError.outOfMemory("thread pool") }
        pool = p
        self.threads = Int(syk_pool_threads(p))
        let c = config, T = maxBatchTokens
        let maxK = max(c.dim, c.ffnDim)
        x = .allocate(capacity: T * c.dim)
        qkv = .allocate(capacity: T * (c.dim + 2 * c.kvDim))
        att = .allocate(capacity: T * c.dim)
        gu = .allocate(capacity: T * 2 * c.ffnDim)
        hbuf = .allocate(capacity: T * c.ffnDim)
        actQs = .allocate(capacity: T * maxK)
        actD = .allocate(capacity: T * maxK / 32)
        actS = .allocate(capacity: T * maxK / 32)
        actSum = .allocate(capacity: T * maxK / 32)
        actBias4 = .allocate(capacity: T * maxK / 4)
        act = .allocate(capacity: 1)
        act.initialize(to: syk_act(qs: actQs, d: actD, s: actS, isum: actSum, bias4: actBias4, K: Int32(c.dim)))
        ropeCos = .allocate(capacity: T * c.headDim / 2)
        ropeSin = .allocate(capacity: T * c.headDim / 2)
        attnToks = .allocate(capacity: T)
        scratchRows = max(Self.scoreRows, c.headDim)
        scores = .allocate(capacity: self.threads * scratchRows * c.contextLength)
        tokPos = .allocate(capacity: T)
        tokSeq = .allocate(capacity: T)
        tokLogit = .allocate(capacity: T)
        logitCapacity = 64
        logitBuf = .allocate(capacity: logitCapacity * c.vocabSize)
        xl = .allocate(capacity: logitCapacity * c.dim)
    }

    deinit {
        syk_pool_destroy(pool)
        for p in [x, qkv, att, gu, hbuf, actD, actS, ropeCos, ropeSin, scores, logitBuf, xl] as [UnsafeMutablePointer<Float>] { p.deallocate() }
        actQs.deallocate(); actSum.deallocate(); actBias4.deallocate(); act.deallocate(); attnToks.deallocate()
        tokPos.deallocate(); tokSeq.deallocate(); tokLogit.deallocate()
    }

    /// Linux thread ids of the pool's threads other than the caller (for pinning).
    /// Kernel level and summation order for this engine's forward passes only (nil: the process setting,
    /// see KernelISA.set and SWITCHYARD_SUM_ORDER). `fastOrder` true picks SYK_SUM_FAST, false llama.cpp's.
    public func setKernelOverrides(isa: KernelISA?, fastOrder: Bool?) {
        syk_pool_set_overrides(pool, isa?.rawValue ?? -1,
                               fastOrder.map { $0 ? Int32(SYK_SUM_FAST) : Int32(SYK_SUM_LLAMA) } ?? -1)
    }

    public var workerThreadIDs: [Int32] { (1..<threads).map { syk_pool_worker_tid(pool, Int32($0)) } }

    /// Private memory of this engine beyond KV caches (buffers above), in bytes.
    public var scratchBytes: Int {
        let c = config, T = maxBatchTokens, maxK = max(c.dim, c.ffnDim)
        return 4 * T * (c.dim * 2 + c.dim + 2 * c.kvDim + 3 * c.ffnDim + c.headDim + 3 * maxK / 32 + maxK / 4)
            + T * maxK + 4 * threads * scratchRows * c.contextLength + 4 * logitCapacity * (c.vocabSize + c.dim)
    }

    // MARK: Sequences

    /// Creates an empty sequence whose KV cache holds up to `maxContext` tokens (allocated now).
    public func createSequence(maxContext: Int) throws -> SequenceID {
        guard maxContext >= 1, maxContext <= config.contextLength else {
            throw EngineError.badArgument("maxContext \(maxContext) must be 1...\(config.contextLength)")
        }
        let s = try KVSequence(maxContext: maxContext, nLayer: local.nLayer, kvDim: local.kvDim)
        let id = nextID
        nextID = nextID == Int32.max ? 1 : nextID + 1
        sequences[id] = s
        return SequenceID(raw: id)
    }

    public func freeSequence(_ id: SequenceID) { sequences[id.raw] = nil }

    public func length(of id: SequenceID) throws -> Int { try seq(id).length }

    public func maxContext(of id: SequenceID) throws -> Int { try seq(id).maxContext }

    /// Drops tokens past `length` (keeps a common prefix for reuse).
    public func truncate(_ id: SequenceID, to length: Int) throws {
        let s = try seq(id)
        guard length >= 0, length <= s.length else { throw EngineError.badArgument("truncate \(id) to \(length) (has \(s.length))") }
        s.length = length
    }

    /// A new sequence holding a copy of `id`'s first `prefix` tokens (default all) of KV cache.
    public func fork(_ id: SequenceID, prefix: Int? = nil, maxContext: Int? = nil) throws -> SequenceID {
        let s = try seq(id)
        let n = prefix ?? s.length
        guard n >= 0, n <= s.length else { throw EngineError.badArgument("fork prefix \(n) of \(s.length)") }
        let newID = try createSequence(maxContext: maxContext ?? s.maxContext)
        let d = try seq(newID)
        guard n <= d.maxContext else { freeSequence(newID); throw EngineError.badArgument("fork prefix \(n) exceeds maxContext") }
        for l in 0..<config.nLayer {
            d.k(l).update(from: s.k(l), count: n * local.kvDim)
            d.v(l).update(from: s.v(l), count: n * local.kvDim)
        }
        d.length = n
        return newID
    }

    private func seq(_ id: SequenceID) throws -> KVSequence {
        guard let s = sequences[id.raw] else { throw EngineError.unknownSequence(id) }
        return s
    }

    // MARK: Forward

    /// Runs the batch. Every item's tokens are appended to its sequence (positions continue from its length).
    public func forward(_ batch: [BatchItem], logits mode: LogitsMode = .last) throws -> ForwardOutput {
        guard !batch.isEmpty else { throw EngineError.badArgument("empty batch") }
        // Validate everything before touching any state.
        var seen = Set<Int32>()
        var totalRows = 0
        var firstRow: [Int] = []
        firstRow.reserveCapacity(batch.count)
        for item in batch {
            let s = try seq(item.sequence)
            guard !item.tokens.isEmpty else { throw EngineError.badArgument("item for \(item.sequence) has no tokens") }
            guard seen.insert(item.sequence.raw).inserted else {
                throw EngineError.badArgument("\(item.sequence) appears twice in one batch")
            }
            guard s.length + item.tokens.count <= s.maxContext else {
                throw EngineError.contextFull(item.sequence, length: s.length, adding: item.tokens.count, max: s.maxContext)
            }
            for t in item.tokens where t < 0 || Int(t) >= config.vocabSize {
                throw EngineError.tokenOutOfRange(t, vocab: config.vocabSize)
            }
            firstRow.append(totalRows)
            totalRows += mode == .last ? 1 : item.tokens.count
        }
        if totalRows > logitCapacity { growLogits(totalRows) }

        // Walk the flattened token list in chunks of maxBatchTokens.
        var n = 0
        var row = 0
        for item in batch {
            guard let s = sequences[item.sequence.raw] else { continue }   // validated above
            let start = s.length
            for (j, tok) in item.tokens.enumerated() {
                let last = j == item.tokens.count - 1
                model.embed(Int(tok), into: x + n * config.dim)
                tokPos[n] = start + j
                tokSeq[n] = Unmanaged.passUnretained(s)
                tokLogit[n] = mode == .all || last ? row : -1
                if mode == .all || last { row += 1 }
                n += 1
                if n == maxBatchTokens { try runChunk(n); n = 0 }
            }
        }
        if n > 0 { try runChunk(n) }
        for item in batch { sequences[item.sequence.raw]?.length += item.tokens.count }
        return ForwardOutput(firstRow: firstRow, rowCount: totalRows, vocabSize: config.vocabSize, base: logitBuf)
    }

    private func growLogits(_ rows: Int) {
        logitBuf.deallocate(); xl.deallocate()
        logitCapacity = rows
        logitBuf = .allocate(capacity: rows * config.vocabSize)
        xl = .allocate(capacity: rows * config.dim)
    }

    /// Forward of `n` staged tokens (embeddings in x, positions/sequences/logit rows in tok*).
    /// Tokens of one sequence are in order, so writing all K/V first keeps attention causal.
    /// Throws only when this engine is a tensor-parallel shard and its group failed (a peer died, aborted).
    private func runChunk(_ n: Int) throws {
        let c = local   // this shard's heads and FFN width (the whole model without tensor parallelism)
        let dim = c.dim, kvDim = c.kvDim, hd = c.headDim, half = hd / 2
        let qDim = c.nHead * hd   // == dim unless sharded
        let qkvLd = qDim + 2 * kvDim

        // RoPE angles per token, as llama.cpp computes them: theta_i = pos * base^(-2i/hd), iteratively in float.
        let thetaScale = powf(c.ropeBase, -2.0 / Float(hd))
        for t in 0..<n {
            var theta = Float(tokPos[t])
            for i in 0..<half {
                ropeCos[t * half + i] = cosf(theta)
                ropeSin[t * half + i] = sinf(theta)
                theta *= thetaScale
            }
        }

        var tiled = false   // some sequence has a run of >= 64 consecutive tokens in this chunk
        var runStart = 0
        for t in 1...n where t == n || tokSeq[t].toOpaque() != tokSeq[t - 1].toOpaque() || tokPos[t] != tokPos[t - 1] + 1 {
            if t - runStart >= 64 { tiled = true }
            runStart = t
        }

        let tap = debugTap
        tap?("embd", -1, x, n, dim, dim)
        for (l, lw) in model.layers.enumerated() {
            // attention: x -> rmsnorm -> q8 -> [q|k|v]
            quantize(x, ld: dim, norm: lw.attnNorm.baseAddress, K: dim, n: n)
            gemm(lw.qkv, n: n, out: qkv, ldo: qkvLd, accumulate: false)
            if let tap {
                tap("Qcur", l, qkv, n, qDim, qkvLd); tap("Kcur", l, qkv + qDim, n, kvDim, qkvLd)
                tap("Vcur", l, qkv + qDim + kvDim, n, kvDim, qkvLd)
            }

            // RoPE (adjacent pairs, llama.cpp NORM) on q and k, then k and v stored into the cache as fp16:
            // one pool task, split over tokens (each token writes only its own cache slot).
            for t in 0..<n {
                let s = tokSeq[t].takeUnretainedValue()
                attnToks[t] = syk_attn_tok(q: UnsafePointer(qkv + t * qkvLd), k: UnsafePointer(s.k(l)), v: UnsafePointer(s.v(l)),
                                           out: att + t * qDim, npos: Int32(tokPos[t] + 1))
            }
            var rt = syk_rope_task(qkv: qkv, ldq: Int32(qkvLd), nq: Int32(c.nHead), nkv: Int32(c.nKVHead), hd: Int32(hd),
                                   cosb: ropeCos, sinb: ropeSin, toks: attnToks, ntok: Int32(n))
            withUnsafeMutablePointer(to: &rt) { syk_pool_run(pool, syk_rope_kv_run, $0) }
            if let tap { tap("Qrope", l, qkv, n, qDim, qkvLd); tap("Krope", l, qkv + qDim, n, kvDim, qkvLd) }
            // Attention. Runs of >= 64 tokens of one sequence take llama.cpp's tiled kernel (its choice for a
            // ubatch that big, and its numerics); everything else the one-row kernel's numerics, one GQA group
            // (query heads sharing a KV head) per work item. Deciding per run keeps a sequence's results
            // independent of the other sequences in the batch.
            var at = syk_attn_task(toks: attnToks, ntok: Int32(n), nhead: Int32(c.nHead), nkv: Int32(c.nKVHead),
                                   hd: Int32(hd), scale: 1 / sqrtf(Float(hd)), scratch: scores,
                                   scratch_per_thread: Int32(scratchRows * c.contextLength), tiled: tiled ? 1 : 0)
            withUnsafeMutablePointer(to: &at) {
                if tiled { syk_pool_run(pool, syk_attn_run, $0) } else { syk_pool_run(pool, syk_attn_group_run, $0) }
            }

            tap?("kqv_out", l, att, n, qDim, qDim)
            // x += wo · att
            quantize(att, ld: qDim, norm: nil, K: qDim, n: n)
            try accumulateResidual(lw.wo, n: n)
            tap?("ffn_inp", l, x, n, dim, dim)

            // ffn: x -> rmsnorm -> [gate|up] -> silu(gate)*up -> down, added to x
            quantize(x, ld: dim, norm: lw.ffnNorm.baseAddress, K: dim, n: n)
            gemm(lw.gateUp, n: n, out: gu, ldo: 2 * c.ffnDim, accumulate: false)
            act.pointee.K = Int32(c.ffnDim)
            var st = syk_swiglu_task(gu: gu, h: hbuf, ff: Int32(c.ffnDim), act: act, ntok: Int32(n))
            withUnsafeMutablePointer(to: &st) { syk_pool_run(pool, syk_swiglu_run, $0) }
            if let tap {
                tap("ffn_gate", l, gu, n, c.ffnDim, 2 * c.ffnDim); tap("ffn_up", l, gu + c.ffnDim, n, c.ffnDim, 2 * c.ffnDim)
                tap("ffn_swiglu", l, hbuf, n, c.ffnDim, c.ffnDim)
            }
            try accumulateResidual(lw.down, n: n)
            tap?("l_out", l, x, n, dim, dim)
        }

        // Logits for the tokens that want them: final norm + output head.
        var m = 0
        var firstRow = -1
        for t in 0..<n where tokLogit[t] >= 0 {
            if firstRow < 0 { firstRow = tokLogit[t] }
            (xl + m * dim).update(from: x + t * dim, count: dim)
            m += 1
        }
        guard m > 0, !model.output.isEmpty else { return }   // shards other than rank 0 have no output head
        // Rows wanted by one chunk are consecutive (assigned in token order).
        quantize(xl, ld: dim, norm: model.outputNorm.baseAddress, K: dim, n: m)
        gemm(model.output, n: m, out: logitBuf + firstRow * c.vocabSize, ldo: c.vocabSize, accumulate: false)
        tap?("result_output", -1, logitBuf + firstRow * c.vocabSize, m, c.vocabSize, c.vocabSize)
    }

    /// x += W · act for the two projections that close a block (attn_output, ffn_down). A tensor-parallel
    /// shard holds only some columns of W, so it writes its partial product into its slot of the group's
    /// shared memory and adds the all-reduced sum (identical on every shard) instead.
    private func accumulateResidual(_ w: [PackedMatrix], n: Int) throws {
        guard let group else {
            gemm(w, n: n, out: x, ldo: config.dim, accumulate: true)
            return
        }
        gemm(w, n: n, out: group.ownPartial, ldo: config.dim, accumulate: false)
        try group.allReduce(rows: n, addInto: x, pool: pool)
    }

    private func quantize(_ src: UnsafeMutablePointer<Float>, ld: Int, norm: UnsafePointer<Float>?, K: Int, n: Int) {
        act.pointee.K = Int32(K)
        var t = syk_quant_task(x: src, ldx: Int32(ld), norm: norm, eps: config.rmsEps, act: act, ntok: Int32(n))
        withUnsafeMutablePointer(to: &t) { syk_pool_run(pool, syk_quant_run, $0) }
    }

    private func gemm(_ parts: [PackedMatrix], n: Int, out: UnsafeMutablePointer<Float>, ldo: Int, accumulate: Bool) {
        var t = syk_gemm_task()
        t.nparts = Int32(parts.count)
        t.parts.0 = parts[0].w
        if parts.count > 1 { t.parts.1 = parts[1].w }
        if parts.count > 2 { t.parts.2 = parts[2].w }
        t.act = UnsafePointer(act)
        t.ntok = Int32(n)
        t.out = out
        t.ldo = Int32(ldo)
        t.accumulate = accumulate ? 1 : 0
        withUnsafeMutablePointer(to: &t) { syk_pool_run(pool, syk_gemm_run, $0) }
    }
}
