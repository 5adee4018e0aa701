import Foundation
import Testing
@testable import Engine
import CSwitchyardKernels

/// Shape of a tiny test model; `weightScale` nil scales weights by 1.5/sqrt(k).
struct TinyShape {
    var dim = 64, ff = 128, nHead = 4, nKV = 2, vocab = 96, nLayer = 2
    var weightScale: Float? = 0.4
}

/// A tiny llama GGUF with random weights; matrices use the given types (cycled).
func tinyModel(types: [GGMLType], seed: UInt64 = 1, tiedOutput: Bool = true, shape: TinyShape = TinyShape()) -> GGUFWriter {
    var rng = TestRNG(seed: seed)
    let dim = shape.dim, ff = shape.ff, nHead = shape.nHead, nKV = shape.nKV, vocab = shape.vocab, nLayer = shape.nLayer
    var w = GGUFWriter()
    w.add("general.architecture", .string("llama"))
    w.add("llama.block_count", .uint32(UInt32(nLayer)))
    w.add("llama.embedding_length", .uint32(UInt32(dim)))
    w.add("llama.feed_forward_length", .uint32(UInt32(ff)))
    w.add("llama.attention.head_count", .uint32(UInt32(nHead)))
    w.add("llama.attention.head_count_kv", .uint32(UInt32(nKV)))
    w.add("llama.context_length", .uint32(64))
    w.add("llama.rope.freq_base", .float32(10000))
    w.add("llama.attention.layer_norm_rms_epsilon", .float32(1e-5))
    w.add("llama.vocab_size", .uint32(UInt32(vocab)))
    var typeIndex = 0
    func matrix(_ name: String, rows: Int, k: Int, type forced: GGMLType? = nil) {
        let type = forced ?? types[typeIndex % types.count]
        typeIndex += 1
        let scale = shape.weightScale ?? 1.5 / Float(k).squareRoot()
        let f = (0..<(rows * k)).map { _ in rng.float() * scale }
        var bytes: [UInt8] = []
        f.withUnsafeBufferPointer { fp in
            for r in 0..<rows {
                let src = fp.baseAddress! + r * k
                switch type {
                case .f32: src.withMemoryRebound(to: UInt8.self, capacity: 4 * k) { bytes += UnsafeBufferPointer(start: $0, count: 4 * k) }
                case .f16: for i in 0..<k { let h = syk_fp32_to_fp16(src[i]); bytes += [UInt8(h & 0xff), UInt8(h >> 8)] }
                case .bf16: for i in 0..<k { let b = src[i].bitPattern >> 16; bytes += [UInt8(b & 0xff), UInt8(b >> 8)] }
                case .q8_0: var b = [UInt8](repeating: 0, count: k / 32 * 34); syk_quantize_row_q8_0_ref(src, &b, Int32(k)); bytes += b
                case .q4_1: var b = [UInt8](repeating: 0, count: k / 32 * 20); syk_quantize_row_q4_1_ref(src, &b, Int32(k)); bytes += b
                case .q4_0:
                    // Q4_0 from Q4_1-style rounding around zero: d = amax/8, q = round(x/d)+8 clamped.
                    for b in 0..<(k / 32) {
                        let blk = (0..<32).map { src[32 * b + $0] }
                        let amax = blk.map(abs).max()!
                        let d = amax / 8, id: Float = d > 0 ? 1 / d : 0
                        let h = syk_fp32_to_fp16(d)
                        bytes += [UInt8(h & 0xff), UInt8(h >> 8)]
                        for j in 0..<16 {
                            let lo = UInt8(max(0, min(15, Int((blk[j] * id).rounded()) + 8)))
                            let hi = UInt8(max(0, min(15, Int((blk[j + 16] * id).rounded()) + 8)))
                            bytes.append(lo | hi << 4)
                        }
                    }
                default: break
                }
            }
        }
        w.addTensor(name, type: type, dims: [k, rows], data: bytes)
    }
    func norm(_ name: String) {
        let v = (0..<dim).map { _ in 1 + rng.float() * 0.2 }
        w.addTensor(name, type: .f32, dims: [dim], data: v.withUnsafeBytes { Array($0) })
    }
    matrix("token_embd.weight", rows: vocab, k: dim, type: .q8_0)
    for l in 0..<nLayer {
        norm("blk.\(l).attn_norm.weight")
        matrix("blk.\(l).attn_q.weight", rows: dim, k: dim)
        matrix("blk.\(l).attn_k.weight", rows: dim / nHead * nKV, k: dim)
        matrix("blk.\(l).attn_v.weight", rows: dim / nHead * nKV, k: dim)
        matrix("blk.\(l).attn_output.weight", rows: dim, k: dim)
        norm("blk.\(l).ffn_norm.weight")
        matrix("blk.\(l).ffn_gate.weight", rows: ff, k: dim)
        matrix("blk.\(l).ffn_up.weight", rows: ff, k: dim)
        matrix("blk.\(l).ffn_down.weight", rows: dim, k: ff)
    }
    norm("output_norm.weight")
    if !tiedOutput { matrix("output.weight", rows: vocab, k: dim, type: .q4_1) }
    return w
}

@Suite struct SyntheticModelTests {
    /// Engine vs the float reference on tiny models covering every supported weight type.
    @Test(arguments: [[GGMLType.q4_1], [.q8_0], [.q4_0, .f16], [.f32, .bf16, .q4_1]])
    func forwardMatchesReference(types: [GGMLType]) throws {
        let gguf = try GGUFFile(bytes: tinyModel(types: types, tiedOutput: types.count > 1).serialize())
        let engine = try Engine(model: Model(gguf: gguf), threads: 2, maxBatchTokens: 5)   // 5: forces chunking
        let ref = try ReferenceLlama(gguf: gguf)
        let tokens: [Int32] = [3, 17, 95, 0, 42, 42, 7, 60, 11, 5, 88, 1]
        let seq = try engine.createSequence(maxContext: 32)
        let out = try engine.forward([BatchItem(sequence: seq, tokens: tokens)], logits: .all)
        for (i, t) in tokens.enumerated() {
            let r = ref.step(t)
            let ours = out.row(i)
            let scale = r.map(abs).max()!
            var maxErr: Float = 0
            for j in 0..<r.count { maxErr = max(maxErr, abs(ours[j] - r[j])) }
            // 8-bit activations (relative step 1/254 per block), fp16 K/V, and for Q4_1 the m·s term with s
            // rounded to fp16 (llama.cpp's Q8_1): on these random weights that is up to ~7% of the logit range.
            #expect(maxErr < 0.08 * scale, "types \(types) pos \(i): max error \(maxErr) (logit scale \(scale))")
        }
        #expect(try engine.length(of: seq) == tokens.count)
    }

    /// A mixed batch (prefill chunk + decode tokens of other sequences) gives the same logits, bit for bit,
    /// as running each sequence alone; fork and truncate reproduce a fresh run.
    @Test func batchingForkAndTruncate() throws {
        let gguf = try GGUFFile(bytes: tinyModel(types: [.q4_1, .q8_0]).serialize())
        let model = try Model(gguf: gguf)
        let engine = try Engine(model: model, threads: 2, maxBatchTokens: 16)
        let a: [Int32] = [1, 2, 3, 4, 5, 6], b: [Int32] = [9, 8, 7], c: [Int32] = [50, 51, 52, 53]
        // Alone.
        func alone(_ toks: [Int32]) throws -> [Float] {
            let s = try engine.createSequence(maxContext: 16)
            defer { engine.freeSequence(s) }
            return Array(try engine.forward([BatchItem(sequence: s, tokens: toks)]).logits(item: 0))
        }
        let la = try alone(a), lb = try alone(b + [10]), lc = try alone(c)
        // Together: b already has 3 tokens and decodes one; a and c prefill.
        let sa = try engine.createSequence(maxContext: 16), sb = try engine.createSequence(maxContext: 16)
        let sc = try engine.createSequence(maxContext: 16)
        _ = try engine.forward([BatchItem(sequence: sb, tokens: b)])
        let out = try engine.forward([BatchItem(sequence: sa, tokens: a), BatchItem(sequence: sb, tokens: [10]),
                                      BatchItem(sequence: sc, tokens: c)])
        #expect(Array(out.logits(item: 0)) == la)
        #expect(Array(out.logits(item: 1)) == lb)
        #expect(Array(out.logits(item: 2)) == lc)
        // Fork a after 4 tokens and continue with a's last two: same logits as a alone.
        let f = try engine.fork(sa, prefix: 4)
        #expect(try engine.length(of: f) == 4)
        #expect(Array(try engine.forward([BatchItem(sequence: f, tokens: [5, 6])]).logits(item: 0)) == la)
        // Truncate c to 2 and re-append its tail.
        try engine.truncate(sc, to: 2)
        #expect(Array(try engine.forward([BatchItem(sequence: sc, tokens: [52, 53])]).logits(item: 0)) == lc)
        // Errors are typed, and leave state alone.
        #expect(throws: EngineError.self) { try engine.forward([BatchItem(sequence: sa, tokens: [999])]) }
        #expect(throws: EngineError.self) { try engine.forward([BatchItem(sequence: SequenceID(raw: 12345), tokens: [1])]) }
        #expect(throws: EngineError.self) { try engine.forward([BatchItem(sequence: sa, tokens: [Int32](repeating: 1, count: 11))]) }
        #expect(try engine.length(of: sa) == 6)
        #expect(engine.kvBytesPerToken == 2 * 2 * 32 * 2)
    }

    @Test func badModelsAreTypedErrors() throws {
        var w = tinyModel(types: [.q4_1])
        w.add("general.architecture", .string("gpt9"))   // duplicate key -> GGUF error
        #expect(throws: GGUFError.self) { try GGUFFile(bytes: w.serialize()) }
        var missing = GGUFWriter()
        missing.add("general.architecture", .string("llama"))
        #expect(throws: (any Error).self) { try Model(gguf: GGUFFile(bytes: missing.serialize())) }
    }
}

@Suite struct RepackStorageTests {
    /// Repacked weights in a shared file: the second load maps the same file and computes the same logits.
    @Test func sharedRepackFileIsReused() throws {
        let dir = TestPaths.tempFile("repack")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/tiny.gguf"
        try tinyModel(types: [.q4_1, .q8_0]).write(to: path)
        func logits(_ m: Model) throws -> [Float] {
            let e = try Engine(model: m, threads: 1, maxBatchTokens: 8)
            let s = try e.createSequence(maxContext: 8)
            return Array(try e.forward([BatchItem(sequence: s, tokens: [1, 2, 3])]).logits(item: 0))
        }
        let priv = try logits(Model(path: path))
        let m1 = try Model(path: path, options: ModelOptions(repack: .sharedFile(directory: dir)))
        #expect(m1.repackIsShared)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("switchyard-repack-") }
        #expect(files.count == 1)
        let m2 = try Model(path: path, options: ModelOptions(repack: .sharedFile(directory: dir)))
        #expect(try logits(m1) == priv)
        #expect(try logits(m2) == priv)
        #expect(throws: ModelError.self) {
            try Model(path: path, options: ModelOptions(repack: .sharedFile(directory: dir + "/missing")))
        }
    }
}
