// Llama-architecture model: hyper-parameters from GGUF metadata and weights (repacked for the kernels).
import CSwitchyardKernels
#if canImport(Glibc)
import Glibc
#endif

public enum ModelError: Error, Sendable, Equatable, CustomStringConvertible {
    case unsupportedArchitecture(String)
    case missingTensor(String)
    case badShape(tensor: String, expected: [Int], actual: [Int])
    case unsupportedType(tensor: String, type: GGMLType)
    case badConfig(String)
    case repackCache(String)

    public var description: String {
        switch self {
        case .unsupportedArchitecture(let a): return "model: architecture '\(a)' is not supported (only llama)"
        case .missingTensor(let n): return "model: tensor '\(n)' is missing"
        case .badShape(let n, let e, let a): return "model: tensor '\(n)' has shape \(a), expected \(e)"
        case .unsupportedType(let n, let t): return "model: tensor '\(n)' has unsupported type \(t)"
        case .badConfig(let s): return "model: \(s)"
        case .repackCache(let s): return "model: repack cache: \(s)"
        }
    }
}

/// Hyper-parameters (llama.* keys).
public struct ModelConfig: Sendable, Equatable {
    public var nLayer: Int
    public var dim: Int          // n_embd
    public var ffnDim: Int       // n_ff
    public var nHead: Int
    public var nKVHead: Int
    public var headDim: Int      // dim / nHead
    public var vocabSize: Int
    public var contextLength: Int
    public var ropeBase: Float
    public var rmsEps: Float

    public var kvDim: Int { nKVHead * headDim }

    public init(gguf: GGUFFile) throws {
        let arch = try gguf.requireString("general.architecture")
        guard arch == "llama" else { throw ModelError.unsupportedArchitecture(arch) }
        nLayer = try gguf.requireInt("llama.block_count")
        dim = try gguf.requireInt("llama.embedding_length")
        ffnDim = try gguf.requireInt("llama.feed_forward_length")
        nHead = try gguf.requireInt("llama.attention.head_count")
        nKVHead = gguf.int("llama.attention.head_count_kv") ?? nHead
        contextLength = try gguf.requireInt("llama.context_length")
        ropeBase = Float(gguf.float("llama.rope.freq_base") ?? 10000)
        rmsEps = Float(try gguf.requireFloat("llama.attention.layer_norm_rms_epsilon"))
        guard let emb = gguf.tensor(named: "token_embd.weight"), emb.dims.count == 2 else {
            throw ModelError.missingTensor("token_embd.weight")
        }
        vocabSize = gguf.int("llama.vocab_size") ?? emb.dims[1]
        guard nLayer >= 1, nLayer <= 1024, dim >= 32, dim <= 1 << 16, ffnDim >= 32, ffnDim <= 1 << 18,
              nHead >= 1, nKVHead >= 1, nHead % nKVHead == 0, dim % nHead == 0,
              vocabSize >= 1, vocabSize <= 1 << 22, contextLength >= 1, rmsEps > 0, ropeBase > 0
        else { throw ModelError.badConfig("implausible hyper-parameters") }
        headDim = dim / nHead
        guard headDim % 2 == 0, headDim <= 256 else { throw ModelError.badConfig("head dim \(headDim)") }
        if let rd = gguf.int("llama.rope.dimension_count"), rd != headDim {
            throw ModelError.badConfig("partial RoPE (dimension_count \(rd) != head dim \(headDim)) is not supported")
        }
        guard dim % 32 == 0, ffnDim % 32 == 0, kvDim % 16 == 0, vocabSize % 16 == 0 else {
            throw ModelError.badConfig("dims must be multiples of 32 (embedding, ffn) and 16 (kv, vocab)")
        }
    }
}

/// A weight matrix repacked for `syk_gemm` (rows x K, rows a multiple of 16).
public struct PackedMatrix: @unchecked Sendable {
    // @unchecked: points into the model's immutable repack store.
    var w: syk_wmat
    public var rows: Int { Int(w.rows) }
    public var cols: Int { Int(w.K) }
}

/// Where repacked weights live.
public enum RepackStorage: Sendable, Equatable {
    /// Private anonymous memory in this process (tests, single process use).
    case privateMemory
    /// A file in this directory (e.g. /dev/shm), written once and mapped shared read-only by every process
    /// that loads the same model, so N workers hold one copy.
    case sharedFile(directory: String)
}

public struct ModelOptions: Sendable {
    public var repack: RepackStorage
    /// Which tensor-parallel shard of every layer to load (`.whole`: all of it).
    public var shard: ShardSpec
    public init(repack: RepackStorage = .privateMemory, shard: ShardSpec = .whole) {
        self.repack = repack
        self.shard = shard
    }
}

/// One shard of a tensor-parallel group: `rank` of `size` (1...16).
public struct ShardSpec: Sendable, Equatable, CustomStringConvertible {
    public let rank: Int
    public let size: Int
    public init(rank: Int, size: Int) throws {
        guard size >= 1, size <= 16 else { throw ModelError.badConfig("tensor-parallel size \(size) must be 1...16") }
        guard rank >= 0, rank < size else { throw ModelError.badConfig("shard rank \(rank) must be 0..<\(size)") }
        self.rank = rank
        self.size = size
    }
    private init(uncheckedRank rank: Int, size: Int) { self.rank = rank; self.size = size }
    /// The whole model (no tensor parallelism).
    public static let whole = ShardSpec(uncheckedRank: 0, size: 1)
    public var description: String { "shard \(rank)/\(size)" }
}

/// What one shard holds of every layer. Attention is split by KV heads (contiguous KV heads per shard,
/// query heads follow their KV head); the FFN by rows of gate/up (contiguous ranges of whole 32-blocks) and
/// the matching columns of down; attn_output by the columns of this shard's query heads. Uneven splits are
/// allowed (earlier ranks get the extra KV head / 32-block).
public struct ShardLayout: Sendable, Equatable {
    public let shard: ShardSpec
    public let kvHeads: Range<Int>
    public let qHeads: Range<Int>
    /// Rows of ffn_gate / ffn_up and columns of ffn_down.
    public let ffnRows: Range<Int>

    public init(config c: ModelConfig, shard: ShardSpec) throws {
        self.shard = shard
        let k = shard.size, r = shard.rank
        guard k <= c.nKVHead else {
            throw ModelError.badConfig("tensor parallelism over \(k) shards splits attention by KV head, and this model has \(c.nKVHead) KV heads: the limit is \(c.nKVHead) shards")
        }
        let blocks = c.ffnDim / 32
        guard k <= blocks else { throw ModelError.badConfig("feed-forward width \(c.ffnDim) has fewer than \(k) 32-blocks") }
        func split(_ total: Int) -> Range<Int> {
            let base = total / k, extra = total % k
            let start = r * base + min(r, extra)
            return start..<(start + base + (r < extra ? 1 : 0))
        }
        kvHeads = split(c.nKVHead)
        let group = c.nHead / c.nKVHead
        qHeads = (kvHeads.lowerBound * group)..<(kvHeads.upperBound * group)
        let fb = split(blocks)
        ffnRows = (fb.lowerBound * 32)..<(fb.upperBound * 32)
        if k > 1 {
            // q/k/v rows are sliced in 16-row groups; attn_output columns in whole 32-blocks.
            guard c.headDim % 16 == 0, (qHeads.lowerBound * c.headDim) % 32 == 0, (qHeads.count * c.headDim) % 32 == 0 else {
                throw ModelError.badConfig("head dim \(c.headDim) does not allow splitting attention into \(k) shards (query-head columns must be whole 32-blocks)")
            }
        }
    }

    /// The hyper-parameters this shard computes with: local head counts and FFN width (dim, headDim,
    /// vocabulary unchanged). For the whole model it equals the model's config.
    public func localConfig(_ c: ModelConfig) -> ModelConfig {
        var l = c
        l.nHead = qHeads.count
        l.nKVHead = kvHeads.count
        l.ffnDim = ffnRows.count
        return l
    }
}

public struct LayerWeights: @unchecked Sendable {
    var attnNorm: UnsafeBufferPointer<Float>   // [dim]
    var ffnNorm: UnsafeBufferPointer<Float>    // [dim]
    var qkv: [PackedMatrix]                    // q [dim x dim], k [kvDim x dim], v [kvDim x dim]
    var wo: [PackedMatrix]                     // [dim x dim] (arrays: passed to gemm without allocating)
    var gateUp: [PackedMatrix]                 // gate [ff x dim], up [ff x dim]
    var down: [PackedMatrix]                   // [dim x ff]
}

/// The model: configuration, the GGUF mapping and repacked weights. Immutable; share it across engines.
public final class Model: @unchecked Sendable {
    // @unchecked Sendable: every stored property is immutable after init and points at read-only memory.
    public let config: ModelConfig
    public let gguf: GGUFFile
    let layers: [LayerWeights]
    let outputNorm: UnsafeBufferPointer<Float>
    /// The output head; empty on shards other than rank 0 (only rank 0 computes logits).
    let output: [PackedMatrix]
    let embedding: GGUFTensorInfo
    /// The tensor-parallel shard this model holds, and its split.
    public let shard: ShardSpec
    public let shardLayout: ShardLayout
    /// Hyper-parameters of this shard's slice (== config for the whole model).
    public let localConfig: ModelConfig
    /// Float copies of norm vectors (and other small F32 data): [Float] storage owned here.
    private let floatStore: UnsafeMutableBufferPointer<Float>
    private let repackBase: UnsafeMutableRawPointer
    private let repackBytes: Int
    /// Bytes of repacked weights (in private memory or in the shared repack file).
    public var packedWeightBytes: Int { repackBytes }
    public let repackIsShared: Bool

    public convenience init(path: String, options: ModelOptions = .init()) throws {
        try self.init(gguf: GGUFFile(path: path), options: options)
    }

    public init(gguf: GGUFFile, options: ModelOptions = .init()) throws {
        let c = try ModelConfig(gguf: gguf)
        self.config = c
        self.gguf = gguf
        let layout = try ShardLayout(config: c, shard: options.shard)
        self.shard = options.shard
        self.shardLayout = layout
        self.localConfig = layout.localConfig(c)

        func tensor(_ name: String, _ dims: [Int]) throws -> GGUFTensorInfo {
            guard let t = gguf.tensor(named: name) else { throw ModelError.missingTensor(name) }
            guard t.dims == dims else { throw ModelError.badShape(tensor: name, expected: dims, actual: t.dims) }
            return t
        }
        let emb = try tensor("token_embd.weight", [c.dim, c.vocabSize])
        guard emb.type.isSupportedForCompute else { throw ModelError.unsupportedType(tensor: emb.name, type: emb.type) }
        self.embedding = emb

        // Plan: the list of matrices to repack, in order, and the norms to copy. A plan covers rows `rows` and
        // columns `cols` of its tensor (a shard's slice; the whole tensor without tensor parallelism).
        struct Plan { var info: GGUFTensorInfo; var packedType: Int32; var offset: Int; var rows: Range<Int>; var cols: Range<Int> }
        var plans: [Plan] = []
        var total = 0
        func plan(_ t: GGUFTensorInfo, rows sliceRows: Range<Int>? = nil, cols sliceCols: Range<Int>? = nil) throws -> Int {
            let rowRange = sliceRows ?? 0..<t.dims[1], colRange = sliceCols ?? 0..<t.dims[0]
            let rows = rowRange.count, k = colRange.count
            guard t.dims[1] % 16 == 0, t.dims[0] % 32 == 0, rows % 16 == 0, k % 32 == 0,
                  rowRange.lowerBound % 16 == 0, colRange.lowerBound % 32 == 0 else {
                throw ModelError.badShape(tensor: t.name, expected: [k / 32 * 32, rows / 16 * 16], actual: t.dims)
            }
            let packed: Int32
            switch t.type {
            case .q4_1, .q4_0: packed = Int32(SYK_W_R16_Q4_1)
            case .q8_0, .f32, .f16, .bf16: packed = Int32(SYK_W_R16_Q8_0)   // float types requantized to Q8_0
            default: throw ModelError.unsupportedType(tensor: t.name, type: t.type)
            }
            let chunk = packed == Int32(SYK_W_R16_Q4_1) ? Int(SYK_R16_Q4_1_CHUNK) : Int(SYK_R16_Q8_0_CHUNK)
            let bytes = rows / 16 * (k / 32) * chunk
            plans.append(Plan(info: t, packedType: packed, offset: total, rows: rowRange, cols: colRange))
            total += (bytes + 63) / 64 * 64
            return plans.count - 1
        }
        var normInfos: [GGUFTensorInfo] = []
        struct LayerPlan { var attnNorm, ffnNorm: Int; var q, k, v, o, gate, up, down: Int }
        var lplans: [LayerPlan] = []
        for l in 0..<c.nLayer {
            let p = "blk.\(l)."
            let an = try tensor(p + "attn_norm.weight", [c.dim]); normInfos.append(an)
            let fn = try tensor(p + "ffn_norm.weight", [c.dim]); normInfos.append(fn)
            // This shard's slices (whole tensors for ShardSpec.whole): q rows of its query heads, k/v rows of
            // its KV heads, attn_output columns of its query heads, gate/up rows and down columns of its FFN range.
            let hd = c.headDim
            let qRows = (layout.qHeads.lowerBound * hd)..<(layout.qHeads.upperBound * hd)
            let kvRows = (layout.kvHeads.lowerBound * hd)..<(layout.kvHeads.upperBound * hd)
            let q = try plan(tensor(p + "attn_q.weight", [c.dim, c.dim]), rows: qRows)
            let k = try plan(tensor(p + "attn_k.weight", [c.dim, c.kvDim]), rows: kvRows)
            let v = try plan(tensor(p + "attn_v.weight", [c.dim, c.kvDim]), rows: kvRows)
            let o = try plan(tensor(p + "attn_output.weight", [c.dim, c.dim]), cols: qRows)
            let g = try plan(tensor(p + "ffn_gate.weight", [c.dim, c.ffnDim]), rows: layout.ffnRows)
            let u = try plan(tensor(p + "ffn_up.weight", [c.dim, c.ffnDim]), rows: layout.ffnRows)
            let d = try plan(tensor(p + "ffn_down.weight", [c.ffnDim, c.dim]), cols: layout.ffnRows)
            lplans.append(LayerPlan(attnNorm: normInfos.count - 2, ffnNorm: normInfos.count - 1,
                                    q: q, k: k, v: v, o: o, gate: g, up: u, down: d))
        }
        normInfos.append(try tensor("output_norm.weight", [c.dim]))
        // Tied output head when output.weight is absent. Only rank 0 computes logits, so only it repacks it.
        let outInfo = try gguf.tensor(named: "output.weight").map { t in
            guard t.dims == [c.dim, c.vocabSize] else {
                throw ModelError.badShape(tensor: t.name, expected: [c.dim, c.vocabSize], actual: t.dims)
            }
            return t
        } ?? emb
        let out = options.shard.rank == 0 ? try plan(outInfo) : nil

        // Norm vectors as float.
        let fs = UnsafeMutablePointer<Float>.allocate(capacity: normInfos.count * c.dim)
        do {
            for (i, t) in normInfos.enumerated() { try Model.toFloat(gguf: gguf, t, into: fs + i * c.dim, count: c.dim) }
        } catch { fs.deallocate(); throw error }
        floatStore = UnsafeMutableBufferPointer(start: fs, count: normInfos.count * c.dim)
        func norm(_ i: Int) -> UnsafeBufferPointer<Float> { UnsafeBufferPointer(start: fs + i * c.dim, count: c.dim) }

        // Repack (or map an existing shared repack file).
        let store: RepackStore
        do { store = try RepackStore(bytes: total, gguf: gguf, storage: options.repack, shard: options.shard) { base in
            for p in plans {
                let dst = base + p.offset
                let rowBytes = p.info.type.rowBytes(p.info.dims[0]) ?? 0   // supported types: checked in plan()
                let whole = p.cols.count == p.info.dims[0]
                if p.info.type == .q4_1 || p.info.type == .q4_0 || p.info.type == .q8_0 {
                    // A row slice starts `rows.lowerBound` whole rows in; a column slice repacks only its blocks.
                    let src = gguf.data(for: p.info).baseAddress! + p.rows.lowerBound * rowBytes
                    let rows = Int32(p.rows.count), kt = Int32(p.info.dims[0])
                    let k0 = Int32(p.cols.lowerBound), k1 = Int32(p.cols.upperBound)
                    switch (p.info.type, whole) {
                    case (.q4_1, true): syk_repack_q4_1(src, dst, rows, kt)
                    case (.q4_1, false): syk_repack_q4_1_cols(src, dst, rows, kt, k0, k1)
                    case (.q4_0, true): syk_repack_q4_0_as_q4_1(src, dst, rows, kt)
                    case (.q4_0, false): syk_repack_q4_0_as_q4_1_cols(src, dst, rows, kt, k0, k1)
                    case (_, true): syk_repack_q8_0(src, dst, rows, kt)
                    case (_, false): syk_repack_q8_0_cols(src, dst, rows, kt, k0, k1)
                    }
                    continue
                }
                do {
                    // Float weights: dequantize each (whole) row, quantize to Q8_0 (blocks are independent, so
                    // slicing columns afterwards equals quantizing the slice), repack 16 rows at a time.
                    let n = p.info.dims[0], k = Int32(n), rowQ = n / 32 * 34
                    let f = UnsafeMutablePointer<Float>.allocate(capacity: n)
                    let q = UnsafeMutableRawPointer.allocate(byteCount: 16 * rowQ, alignment: 64)
                    defer { f.deallocate(); q.deallocate() }
                    let chunkBytes = p.cols.count / 32 * Int(SYK_R16_Q8_0_CHUNK)
                    for g in 0..<(p.rows.count / 16) {
                        for r in 0..<16 {
                            Model.rowToFloat(gguf: gguf, p.info, row: p.rows.lowerBound + g * 16 + r, into: f)
                            syk_quantize_row_q8_0_ref(f, q + r * rowQ, k)
                        }
                        if whole { syk_repack_q8_0(q, dst + g * chunkBytes, 16, k) }
                        else { syk_repack_q8_0_cols(q, dst + g * chunkBytes, 16, k, Int32(p.cols.lowerBound), Int32(p.cols.upperBound)) }
                    }
                }
            }
        } } catch { fs.deallocate(); throw error }
        repackBase = store.base
        repackBytes = store.bytes
        repackIsShared = store.shared

        func packed(_ i: Int) -> PackedMatrix {
            let p = plans[i]
            return PackedMatrix(w: syk_wmat(data: UnsafePointer(store.base.advanced(by: p.offset).assumingMemoryBound(to: UInt8.self)),
                                            type: p.packedType, rows: Int32(p.rows.count), K: Int32(p.cols.count)))
        }
        layers = lplans.map { lp in
            LayerWeights(attnNorm: norm(lp.attnNorm), ffnNorm: norm(lp.ffnNorm),
                         qkv: [packed(lp.q), packed(lp.k), packed(lp.v)], wo: [packed(lp.o)],
                         gateUp: [packed(lp.gate), packed(lp.up)], down: [packed(lp.down)])
        }
        outputNorm = norm(normInfos.count - 1)
        output = out.map { [packed($0)] } ?? []
    }

    deinit {
        floatStore.deallocate()
        munmap(repackBase, repackBytes)
    }

    /// Copies a 1-D tensor of any float type into `dst`.
    static func toFloat(gguf: GGUFFile, _ t: GGUFTensorInfo, into dst: UnsafeMutablePointer<Float>, count: Int) throws {
        guard t.elementCount == count else { throw ModelError.badShape(tensor: t.name, expected: [count], actual: t.dims) }
        guard t.type.isSupportedForCompute else { throw ModelError.unsupportedType(tensor: t.name, type: t.type) }
        rowToFloat(gguf: gguf, t, row: 0, into: dst)
    }

    /// Dequantizes row `row` (dims[0] elements) of a tensor of a supported type.
    static func rowToFloat(gguf: GGUFFile, _ t: GGUFTensorInfo, row: Int, into dst: UnsafeMutablePointer<Float>) {
        let n = t.dims[0]
        guard let rowBytes = t.type.rowBytes(n) else { return }
        let src = gguf.data(for: t).baseAddress! + row * rowBytes
        switch t.type {
        case .f32: dst.update(from: src.assumingMemoryBound(to: Float.self), count: n)  // GGUF data is 32-aligned
        case .f16: syk_dequant_f16(src, dst, Int32(n))
        case .bf16: syk_dequant_bf16(src, dst, Int32(n))
        case .q4_0: syk_dequant_q4_0(src, dst, Int32(n))
        case .q4_1: syk_dequant_q4_1(src, dst, Int32(n))
        case .q8_0: syk_dequant_q8_0(src, dst, Int32(n))
        default: dst.initialize(repeating: 0, count: n)
        }
    }

    /// Embedding row of `token` (read from the GGUF mapping).
    func embed(_ token: Int, into dst: UnsafeMutablePointer<Float>) {
        Model.rowToFloat(gguf: gguf, embedding, row: token, into: dst)
    }
}

/// Memory holding repacked weights: anonymous private memory or a shared file mapping.
struct RepackStore {
    var base: UnsafeMutableRawPointer
    var bytes: Int
    var shared: Bool

    init(bytes: Int, gguf: GGUFFile, storage: RepackStorage, shard: ShardSpec = .whole,
         fill: (UnsafeMutableRawPointer) -> Void) throws {
        self.bytes = max(bytes, 64)
        switch storage {
        case .privateMemory:
            guard let p = mmap(nil, self.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
                throw ModelError.repackCache("cannot allocate \(self.bytes) bytes (errno \(errno))")
            }
            _ = madvise(p, self.bytes, MADV_HUGEPAGE)   // fewer TLB misses while streaming weights
            fill(p)
            mprotect(p, self.bytes, PROT_READ)
            base = p
            shared = false
        case .sharedFile(let dir):
            // Name from the model file's identity and the layout version; a stale file has another name.
            var st = stat()
            let key: String
            if gguf.path != "<memory>", stat(gguf.path, &st) == 0 {
                key = "\(st.st_dev)-\(st.st_ino)-\(st.st_size)-\(st.st_mtim.tv_sec)"
            } else {
                key = "mem-\(gguf.bytes.count)"
            }
            // A tensor-parallel shard's file holds only its slices: rank and size are part of the name.
            let tp = shard.size > 1 ? "-tp\(shard.rank)of\(shard.size)" : ""
            let path = "\(dir)/switchyard-repack-v1-\(key)\(tp)-\(self.bytes).bin"
            if let p = RepackStore.mapExisting(path, bytes: self.bytes) {
                base = p; shared = true; return
            }
            // Build in a temp file, then rename into place (atomic; concurrent builders both succeed).
            let tmp = "\(path).tmp-\(getpid())"
            let fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw ModelError.repackCache("cannot create \(tmp) (errno \(errno))") }
            defer { close(fd) }
            guard ftruncate(fd, off_t(self.bytes)) == 0,
                  let p = mmap(nil, self.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
                unlink(tmp)
                throw ModelError.repackCache("cannot size/map \(tmp) (errno \(errno))")
            }
            fill(p)
            munmap(p, self.bytes)
            guard rename(tmp, path) == 0 else { unlink(tmp); throw ModelError.repackCache("rename to \(path) failed (errno \(errno))") }
            guard let m = RepackStore.mapExisting(path, bytes: self.bytes) else {
                throw ModelError.repackCache("cannot map \(path)")
            }
            base = m; shared = true
        }
    }

    static func mapExisting(_ path: String, bytes: Int) -> UnsafeMutableRawPointer? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, Int(st.st_size) == bytes else { return nil }
        guard let p = mmap(nil, bytes, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else { return nil }
        return p
    }
}
